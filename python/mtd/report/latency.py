"""Forward-pass latency of a model (median of timed repeats, after warm-up)."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.no_grad()
def forward_latency_ms(model: nn.Module, batch_size: int, image_hw: tuple = (32, 32), *, channels: int = 3,
                       device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                       channels_last: bool = False, warmup: int = 3, repeats: int = 20) -> float:
    """Median milliseconds of ``model(x)`` for a random batch ``(batch_size, channels, *image_hw)``."""
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(batch_size, channels, *image_hw, device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    times = []
    with ctx:
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
