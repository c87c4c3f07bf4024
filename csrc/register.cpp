// Registers the compiled kernels for the schemas defined (once) in mtd_kernels/ops/*.py, and the
// small Python module mtd_kernels._C. The CUDA kernels are exposed as plain functions: the Python
// CUDA entry of each op (mtd_kernels/dispatch.py) chooses between them and Triton. The CPU kernels
// pick the fused or the chain path per shape themselves (cpu/path_choice.h).
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu/path_choice.h"
#include "cpu/isa.h"
#include "ops.h"

TORCH_LIBRARY_IMPL(mtd, CPU, m) {
  m.impl("cp_conv2d", &mtd::cp_conv2d_cpu);
  m.impl("cp4_conv2d", &mtd::cp4_conv2d_cpu);
  m.impl("tucker_conv2d", &mtd::tucker_conv2d_cpu);
  m.impl("rank_bridge", &mtd::rank_bridge_cpu);
  m.impl("rank_run", &mtd::rank_run_cpu);
  m.impl("bn_relu", &mtd::bn_relu_cpu);
  m.impl("bn_relu_backward", &mtd::bn_relu_backward_cpu);
}

namespace {
bool has_cuda() {
#ifdef MTD_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mtd compiled kernels (CPU always; CUDA when built with it)";
  m.def("has_cuda", &has_cuda, "True when the hand-written CUDA kernels were compiled in");
  m.def("cpu_path_cache", &mtd::cpu::path_cache_entries,
        "(shape key, 'fused'|'chain') of every CPU call shape whose path was chosen by measurement");
  m.def("clear_cpu_path_cache", &mtd::cpu::clear_path_cache, "Forget the measured CPU path choices");
  m.def("rank_run_pack",
        [](const std::vector<at::Tensor>& weights, const std::vector<int64_t>& meta) {
          return mtd::rank_run_pack(weights, meta);
        },
        "The packed factors torch.ops.mtd.rank_run takes as `packed` (its weights and meta; see ops/rank_run.py)");
  py::class_<mtd::RankRunPlan>(m, "RankRunPlan",
                                "rank_run's CPU kernel on weights packed once (mtd_kernels/ops/rank_run.py), no autograd")
      .def(py::init<std::vector<at::Tensor>, const std::vector<int64_t>&>(), py::arg("weights"), py::arg("meta"))
      .def("packed_from", &mtd::RankRunPlan::packed_from, py::arg("weights"),
           "True when these are the packed weights, unchanged since")
      .def("packed", &mtd::RankRunPlan::packed, "The packed factors, as torch.ops.mtd.rank_run takes them")
      .def("__call__", &mtd::RankRunPlan::operator(), py::arg("input"), py::call_guard<py::gil_scoped_release>());
  m.def("cpu_isa", &mtd::cpu::isa_name, "The instruction set the CPU micro-kernels picked at load time");
#ifdef MTD_WITH_CUDA
  m.def("cp_conv2d_cuda", &mtd::cp_conv2d_cuda);
  m.def("cp4_conv2d_cuda", &mtd::cp4_conv2d_cuda);
  m.def("tucker_conv2d_cuda", &mtd::tucker_conv2d_cuda);
#endif
}
