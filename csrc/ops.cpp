// The one place that declares every op of the `restore` library (bodies: cpu/*.cpp, cuda/*.cu).
// docs/ops.md is the contract of each schema below; restore_ext/reference.py is its executable form.
#include <torch/library.h>

TORCH_LIBRARY(restore, m) {
  m.def("topk_indices(Tensor scores, SymInt k) -> Tensor");
  m.def("divprune_indices(Tensor x, SymInt k) -> Tensor");
  m.def("vispruner_matching(Tensor sim, SymInt keep) -> Tensor");
  m.def("holov_crop_variance(Tensor x) -> Tensor");
  m.def("holov_crop_variance_bounds(Tensor x) -> Tensor");
  m.def("holov_indices(Tensor features, SymInt k, Tensor cls_attention, str gram=\"auto\") -> Tensor");
  m.def(
      "anchor_merge(Tensor x, SymInt num_anchors, str rule=\"reference\") -> "
      "(Tensor merged, Tensor size, Tensor assign, Tensor anchors)");
  m.def(
      "calibrated_attention(Tensor q, Tensor k, Tensor v, Tensor? log_size, Tensor? q_pos, Tensor? k_pos, "
      "Tensor? table, bool causal=True, float? scale=None) -> Tensor");
}
