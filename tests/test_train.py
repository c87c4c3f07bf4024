"""Training loop, evaluation, distillation, schedules and exact resume (tiny models, synthetic data)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtd.data import TensorDataLoader
from mtd.models import build_model, load_checkpoint, load_model
from mtd.train import distillation_loss, evaluate, finetune, lr_factor, train

QUIET = dict(progress=False, log_fn=lambda message: None)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and far faster on a shared, busy machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def synthetic(n=128, seed=0):
    """Four learnable classes: class k < 3 is bright in colour channel k, class 3 in all channels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n).astype(np.int64)
    x = rng.integers(0, 60, (n, 32, 32, 3)).astype(np.uint8)
    for i, k in enumerate(y):
        x[i, :, :, k if k < 3 else slice(None)] += 150  # (H, W, C) image
    return x, y


def tiny(seed=0, classes=4):
    torch.manual_seed(seed)
    return build_model("tiny_resnet", width=0.25, num_classes=classes)


def test_training_reduces_loss_and_learns():
    x, y = synthetic()
    model = tiny()
    eval_loader = TensorDataLoader(x, y, 64, train=False)
    before = evaluate(model, eval_loader)
    history = train(model, TensorDataLoader(x, y, 32, train=True, seed=0), epochs=4, lr=0.05,
                    eval_loader=eval_loader, **QUIET)
    after = evaluate(model, eval_loader)
    assert len(history) == 4 and history[-1]["eval_loss"] == pytest.approx(after["loss"])
    assert after["loss"] < 0.7 * before["loss"]
    assert after["accuracy"] > 0.8 > before["accuracy"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_evaluate_matches_manual_computation():
    x, y = synthetic(40)
    model = tiny().train()
    result = evaluate(model, TensorDataLoader(x, y, 16, train=False))
    assert model.training  # mode restored
    model.eval()
    images = torch.cat([b for b, _ in TensorDataLoader(x, y, 40, train=False)])
    with torch.no_grad():
        logits = model(images)
    assert result["samples"] == 40
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == torch.from_numpy(y)).float().mean().item())
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, torch.from_numpy(y)).item(), rel=1e-5)


class InterruptAfter:
    """Wraps a loader and raises (like a killed job) when epoch ``stop_epoch`` starts."""

    def __init__(self, loader, stop_epoch):
        self.loader, self.stop_epoch, self.epoch = loader, stop_epoch, 0

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.loader.set_epoch(epoch)

    def __iter__(self):
        if self.epoch == self.stop_epoch:
            raise KeyboardInterrupt("simulated kill")
        return iter(self.loader)


def test_resume_matches_uninterrupted_run(tmp_path):
    x, y = synthetic(96)
    args = dict(epochs=3, lr=0.05, schedule="onecycle", seed=5, **QUIET)

    reference = tiny(seed=1)
    ref_history = train(reference, TensorDataLoader(x, y, 32, train=True, seed=3), **args)

    interrupted = tiny(seed=1)
    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, InterruptAfter(TensorDataLoader(x, y, 32, train=True, seed=3), 2),
              checkpoint_path=path, **args)
    assert load_checkpoint(path)["extra"]["train_state"]["epoch"] == 2

    resumed = tiny(seed=99)  # different initial weights: everything must come from the checkpoint
    history = train(resumed, TensorDataLoader(x, y, 32, train=True, seed=3), checkpoint_path=path,
                    resume=True, **args)
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key
    assert [h["train_loss"] for h in history] == [h["train_loss"] for h in ref_history]
    assert load_checkpoint(path)["extra"]["train_state"]["epoch"] == 3
    # The training checkpoint is also an ordinary model checkpoint.
    rebuilt = load_model(path)
    assert torch.equal(rebuilt.classifier.weight, reference.classifier.weight)


def test_resume_refuses_other_settings(tmp_path):
    x, y = synthetic(32)
    path = tmp_path / "run.pt"
    train(tiny(), TensorDataLoader(x, y, 16, train=True), epochs=1, lr=0.05, checkpoint_path=path, **QUIET)
    with pytest.raises(ValueError, match="cannot resume"):
        train(tiny(), TensorDataLoader(x, y, 16, train=True), epochs=1, lr=0.1, checkpoint_path=path,
              resume=True, **QUIET)


def test_distillation_loss_against_formula():
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    targets = torch.tensor([0, 1, 2, 3, 0])
    t, alpha = 3.0, 0.7
    p_teacher = torch.softmax(teacher / t, 1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student / t, 1))).sum(1).mean()
    ce = -torch.log_softmax(student, 1)[torch.arange(5), targets].mean()
    expected = (1 - alpha) * ce + alpha * t * t * kl
    got = distillation_loss(student, targets, teacher, alpha=alpha, temperature=t)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(student, targets).item() == pytest.approx(ce.item(), rel=1e-6)
    with pytest.raises(ValueError, match="kd_alpha"):
        distillation_loss(student, targets, teacher, alpha=1.5)


def test_finetune_with_teacher_moves_student_towards_teacher():
    x, y = synthetic(64)
    teacher = tiny(seed=2)
    train(teacher, TensorDataLoader(x, y, 32, train=True), epochs=2, lr=0.05, **QUIET)
    student = tiny(seed=3)
    images = torch.cat([b for b, _ in TensorDataLoader(x, y, 64, train=False)])

    def gap():
        teacher.eval()
        student.eval()
        with torch.no_grad():
            return F.kl_div(torch.log_softmax(student(images), 1), torch.log_softmax(teacher(images), 1),
                            reduction="batchmean", log_target=True).item()

    before = gap()
    finetune(student, TensorDataLoader(x, y, 16, train=True), epochs=3, lr=0.1, teacher=teacher,
             kd_alpha=1.0, kd_temperature=2.0, **QUIET)
    assert gap() < 0.5 * before


def test_lr_schedules():
    total = 100
    onecycle = [lr_factor("onecycle", s, total) for s in range(total + 1)]
    assert onecycle[0] == pytest.approx(0.04) and max(onecycle) == pytest.approx(1.0)
    assert int(np.argmax(onecycle)) == 25 and onecycle[-1] < 1e-3
    cosine = [lr_factor("cosine", s, total) for s in range(total + 1)]
    assert cosine[0] == 1.0 and cosine[50] == pytest.approx(0.5) and cosine[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    x, y = synthetic(32)
    history = train(tiny(), TensorDataLoader(x, y, 16, train=True), epochs=2, lr=0.2, schedule="cosine", **QUIET)
    # lr after the last step of epoch 1 (step 2 of 4)
    assert history[0]["lr"] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))


def test_bf16_autocast_and_channels_last_on_cpu():
    x, y = synthetic(32)
    model = tiny()
    history = train(model, TensorDataLoader(x, y, 16, train=True, channels_last=True), epochs=1, lr=0.05,
                    precision="bf16", **QUIET)
    assert math.isfinite(history[0]["train_loss"])
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert model.stem[0].weight.dtype == torch.float32  # autocast leaves the master weights in fp32


def test_train_argument_errors():
    x, y = synthetic(16)
    loader = TensorDataLoader(x, y, 8, train=True)
    with pytest.raises(ValueError, match="schedule"):
        train(tiny(), loader, epochs=1, lr=0.1, schedule="step", **QUIET)
    with pytest.raises(ValueError, match="epochs"):
        train(tiny(), loader, epochs=0, lr=0.1, **QUIET)
    with pytest.raises(ValueError, match="no batches"):
        train(tiny(), TensorDataLoader(x, y, 32, train=True), epochs=1, lr=0.1, **QUIET)


# --- robust fine-tuning ---------------------------------------------------------------------------------------
def test_warmup_cosine_schedule():
    total = 100
    f = [lr_factor("warmup_cosine", s, total, warmup_fraction=0.1) for s in range(total + 1)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0) and max(f) == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(f[:10], f[1:10])) and all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] == pytest.approx(0.0, abs=1e-12)


def test_optimizer_lr_scales_make_their_own_groups():
    from mtd.train.optim import make_optimizer

    model = tiny()
    first = next(p for p in model.parameters() if p.ndim > 1)
    opt = make_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True, lr_scales={id(first): 0.5})
    group = next(g for g in opt.param_groups if any(p is first for p in g["params"]))
    assert group["lr"] == pytest.approx(0.05) and group["weight_decay"] == 5e-4 and len(group["params"]) == 1
    assert sum(len(g["params"]) for g in opt.param_groups) == sum(1 for p in model.parameters() if p.requires_grad)


def test_finetune_recovers_from_divergence_and_keeps_the_best_state():
    x, y = synthetic(64)
    model = tiny()
    loader = TensorDataLoader(x, y, 16, train=True)
    eval_loader = TensorDataLoader(x, y, 64, train=False)
    train(model, loader, epochs=3, lr=0.05, **QUIET)
    score = lambda m: evaluate(m, eval_loader)["accuracy"]  # noqa: E731
    before = score(model)
    history = finetune(model, loader, epochs=2, lr=1e6, eval_fn=score, max_retries=2, max_grad_norm=None, **QUIET)
    diverged = [h for h in history if "diverged" in h]
    assert diverged, "a learning rate of 1e6 must diverge"
    assert diverged[0]["lr"] == 1e6 and all(h["lr"] < 1e6 for h in history[history.index(diverged[0]) + 1:])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert score(model) >= before  # best-on-held-out: never worse than where it started


def test_finetune_max_steps_stops_early():
    x, y = synthetic(64)
    history = finetune(tiny(), TensorDataLoader(x, y, 16, train=True), epochs=5, lr=0.01, max_steps=3, **QUIET)
    assert len(history) == 1 and history[0]["epoch"] == pytest.approx(3 / 4)


def test_recalibrate_batchnorm_re_estimates_statistics():
    from mtd.train.finetune import recalibrate_batchnorm

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    bn = model[1]
    bn.running_mean.fill_(100.0)
    bn.running_var.fill_(1e-3)
    x = torch.randn(64, 3, 8, 8)
    batches = [(x[i:i + 16], None) for i in range(0, 64, 16)]
    assert recalibrate_batchnorm(model, batches, num_batches=10) == 4
    with torch.no_grad():
        h = model[0](x)
    torch.testing.assert_close(bn.running_mean, h.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not model.training


def test_cached_teacher_fine_tunes_exactly_like_the_teacher_and_reuses_repeated_batches():
    from mtd.train.teacher_cache import CachedTeacher

    x, y = synthetic(64)
    teacher = tiny(seed=2).eval()
    cached = CachedTeacher(teacher)
    students = []
    for t in (teacher, cached, cached):  # plain, cached (all misses), cached again (all hits)
        student = tiny(seed=3)
        finetune(student, TensorDataLoader(x, y, 16, train=True, seed=5), epochs=2, lr=0.05, teacher=t, **QUIET)
        students.append(student.state_dict())
    assert cached.misses == 8 and cached.hits == 8  # 4 augmented batches a pass, new each pass, same per run
    for other in students[1:]:
        for name, value in students[0].items():
            torch.testing.assert_close(other[name], value, rtol=0, atol=0)


def test_cached_teacher_keys_on_exact_values_and_bounds_its_memory():
    from mtd.train.teacher_cache import CachedTeacher

    # a teacher that passes inputs 5, 0 and 1 through exactly: a one-ulp change of input 5 shows in its output
    # (a general Linear may round it away, as MKL does on some CPUs)
    teacher = torch.nn.Linear(6, 3, bias=False).eval()
    with torch.no_grad():
        teacher.weight.zero_()[[0, 1, 2], [5, 0, 1]] = 1.0
    cached = CachedTeacher(teacher, max_bytes=2 * 4 * 3 * 4)  # two (4, 3) float outputs
    a = torch.randn(4, 6)
    b = a.clone()
    b[3, 5] = torch.nextafter(b[3, 5], torch.tensor(1e9))  # one value, one ulp apart
    torch.testing.assert_close(cached(a), teacher(a).detach())
    torch.testing.assert_close(cached(b), teacher(b).detach())
    assert cached.misses == 2 and not torch.equal(cached(a), cached(b)) and cached.hits == 2
    cached(torch.randn(4, 6))  # a third entry evicts the oldest (a)
    cached(a)
    assert cached.misses == 4
    with pytest.raises(RuntimeError, match="frozen"):
        cached.train()
