#include "op_checks.h"

#include <c10/util/Exception.h>
#include <cmath>

#include "restore/score_bias.h"

namespace restore {
namespace {

bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                       const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device(), "; all inputs must be on one device");
}

}  // namespace

void check_topk_indices_args(const at::Tensor& scores, int64_t k) {
  TORCH_CHECK(scores.dim() == 2, "topk_indices: scores must be 2-D (B, N), got ", scores.dim(), "-D with shape ",
              scores.sizes());
  TORCH_CHECK(is_float_type(scores.scalar_type()),
              "topk_indices: scores must be float16, bfloat16 or float32, got ", scores.scalar_type());
  const int64_t n = scores.size(1);
  TORCH_CHECK(k >= 1 && k <= n, "topk_indices: k must satisfy 1 <= k <= N = ", n, " (scores has shape ",
              scores.sizes(), "), got k = ", k);
}

void check_divprune_indices_args(const at::Tensor& x, int64_t k) {
  TORCH_CHECK(x.dim() == 3, "divprune_indices: x must be 3-D (B, N, D), got ", x.dim(), "-D with shape ",
              x.sizes());
  TORCH_CHECK(is_float_type(x.scalar_type()), "divprune_indices: x must be float16, bfloat16 or float32, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(2) >= 1, "divprune_indices: x must have a feature dim D >= 1, got shape ", x.sizes());
  const int64_t n = x.size(1);
  TORCH_CHECK(k >= 1 && k <= n, "divprune_indices: k must satisfy 1 <= k <= N = ", n, " (x has shape ",
              x.sizes(), "), got k = ", k);
}

void check_vispruner_matching_args(const at::Tensor& sim, int64_t keep) {
  TORCH_CHECK(sim.dim() == 3 && sim.size(1) == sim.size(2),
              "vispruner_matching: sim must be 3-D and square (B, R, R), got shape ", sim.sizes());
  TORCH_CHECK(sim.scalar_type() == at::kFloat || sim.scalar_type() == at::kDouble,
              "vispruner_matching: sim must be float32 or float64, got ", sim.scalar_type());
  const int64_t r = sim.size(1);
  TORCH_CHECK(keep >= 1 && keep <= r, "vispruner_matching: keep must satisfy 1 <= keep <= R = ", r,
              " (sim has shape ", sim.sizes(), "), got keep = ", keep);
}

void check_holov_crop_variance_args(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (B, C, m, D): C crops of m tokens, got ", x.dim(),
              "-D with shape ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) >= 2, op, ": each crop needs m >= 2 tokens (a token's variance is over the other m - 1), ",
              "got shape ", x.sizes());
  TORCH_CHECK(x.size(3) >= 1, op, ": x must have a feature dim D >= 1, got shape ", x.sizes());
}

bool check_holov_indices_args(const at::Tensor& features, int64_t k, const at::Tensor& cls_attention,
                              c10::string_view gram, bool bf16_pays) {
  constexpr const char* op = "holov_indices";
  TORCH_CHECK(features.dim() == 3, op, ": features must be 3-D (B, N, D), got ", features.dim(), "-D with shape ",
              features.sizes());
  TORCH_CHECK(features.scalar_type() == at::kFloat || features.scalar_type() == at::kDouble, op,
              ": features must be float32 or float64, got ", features.scalar_type());
  TORCH_CHECK(features.size(2) >= 1, op, ": features must have a feature dim D >= 1, got shape ", features.sizes());
  const int64_t b = features.size(0), n = features.size(1);
  TORCH_CHECK(k >= 1 && k <= n, op, ": k must satisfy 1 <= k <= N = ", n, " (features has shape ",
              features.sizes(), "), got k = ", k);
  TORCH_CHECK(cls_attention.dim() == 2 && cls_attention.size(0) == b && cls_attention.size(1) == n, op,
              ": cls_attention must have shape (B, N) = (", b, ", ", n, "), got ", cls_attention.sizes());
  TORCH_CHECK(is_float_type(cls_attention.scalar_type()) || cls_attention.scalar_type() == at::kDouble, op,
              ": cls_attention must be float16, bfloat16, float32 or float64, got ", cls_attention.scalar_type());
  check_same_device(op, "cls_attention", cls_attention, features, "features");
  if (gram == "exact") return false;
  if (gram == "bf16") return true;
  TORCH_CHECK(gram == "auto", op, ": gram must be \"auto\", \"exact\" or \"bf16\", got \"", std::string(gram), "\"");
  return bf16_pays && features.scalar_type() == at::kFloat;
}

AnchorRule check_anchor_merge_args(const at::Tensor& x, int64_t num_anchors, c10::string_view rule) {
  TORCH_CHECK(x.dim() == 3, "anchor_merge: x must be 3-D (B, N, D), got ", x.dim(), "-D with shape ", x.sizes());
  TORCH_CHECK(is_float_type(x.scalar_type()), "anchor_merge: x must be float16, bfloat16 or float32, got ",
              x.scalar_type());
  TORCH_CHECK(x.size(2) >= 1, "anchor_merge: x must have a feature dim D >= 1, got shape ", x.sizes());
  const int64_t n = x.size(1);
  TORCH_CHECK(num_anchors >= 1 && num_anchors <= n, "anchor_merge: num_anchors must satisfy 1 <= K <= N = ", n,
              " (x has shape ", x.sizes(), "), got num_anchors = ", num_anchors);
  if (rule == "reference") return AnchorRule::Reference;
  if (rule == "dpc") return AnchorRule::Dpc;
  TORCH_CHECK(false, "anchor_merge: rule must be \"reference\" or \"dpc\", got \"", std::string(rule), "\"");
}

AttentionShape check_calibrated_attention_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& log_size, const std::optional<at::Tensor>& q_pos,
    const std::optional<at::Tensor>& k_pos, const std::optional<at::Tensor>& table,
    std::optional<double> scale) {
  constexpr const char* op = "calibrated_attention";
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"q", &q}, {"k", &k}, {"v", &v}}) {
    TORCH_CHECK(t->dim() == 4, op, ": ", name, " must be 4-D (B, L, heads, Dh), got ", t->dim(),
                "-D with shape ", t->sizes());
    TORCH_CHECK(is_float_type(t->scalar_type()), op, ": ", name, " must be float16, bfloat16 or float32, got ",
                t->scalar_type());
    TORCH_CHECK(t->size(3) <= 1 || t->stride(3) == 1, op, ": ", name,
                " must have a contiguous last dimension (stride 1), got strides ", t->strides());
  }
  check_same_device(op, "k", k, q, "q");
  check_same_device(op, "v", v, q, "q");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), op,
              ": q, k and v must have one dtype, got q ", q.scalar_type(), ", k ", k.scalar_type(), ", v ",
              v.scalar_type());
  AttentionShape s{};
  s.batch = q.size(0);
  s.lq = q.size(1);
  s.heads = q.size(2);
  s.head_dim = q.size(3);
  s.lk = k.size(1);
  s.kv_heads = k.size(2);
  TORCH_CHECK(k.size(0) == s.batch, op, ": k has batch ", k.size(0), " but q has batch ", s.batch);
  TORCH_CHECK(v.sizes() == k.sizes(), op, ": v must have k's shape ", k.sizes(), ", got ", v.sizes());
  TORCH_CHECK(k.size(3) == s.head_dim, op, ": k has head dim ", k.size(3), " but q has head dim ", s.head_dim);
  TORCH_CHECK(s.head_dim >= 1, op, ": head dim must be >= 1, got q of shape ", q.sizes());
  TORCH_CHECK(s.kv_heads >= 1 && s.heads % s.kv_heads == 0, op, ": k has ", s.kv_heads,
              " heads, which does not divide q's ", s.heads, " heads (H % Hkv must be 0)");

  s.has_log_size = log_size.has_value();
  if (s.has_log_size) {
    const at::Tensor& ls = *log_size;
    check_same_device(op, "log_size", ls, q, "q");
    TORCH_CHECK(ls.scalar_type() == at::kFloat, op, ": log_size must be float32, got ", ls.scalar_type());
    TORCH_CHECK(ls.dim() == 2 && ls.size(0) == s.batch && ls.size(1) == s.lk, op,
                ": log_size must have shape (B, Lk) = (", s.batch, ", ", s.lk, "), got ", ls.sizes());
  }

  const int given = int(q_pos.has_value()) + int(k_pos.has_value()) + int(table.has_value());
  TORCH_CHECK(given == 0 || given == 3, op,
              ": q_pos, k_pos and table come together or not at all, got q_pos ",
              q_pos.has_value() ? "given" : "None", ", k_pos ", k_pos.has_value() ? "given" : "None", ", table ",
              table.has_value() ? "given" : "None");
  s.has_positions = given == 3;
  s.table_len = 0;
  s.pos_axes = 0;
  if (s.has_positions) {
    // 1-D positions (B, L) with a (T,) table (§5), or M-RoPE positions (B, L, 3) with a (3, T) table (§5b).
    s.pos_axes = q_pos->dim() == 3 ? 3 : 1;
    const char* form = s.pos_axes == 3 ? "(B, L, 3) as q_pos is" : "(B, L) as q_pos is";
    for (auto [name, t, len] : {std::tuple<const char*, const at::Tensor*, int64_t>{"q_pos", &*q_pos, s.lq},
                                {"k_pos", &*k_pos, s.lk}}) {
      check_same_device(op, name, *t, q, "q");
      TORCH_CHECK(t->scalar_type() == at::kInt || t->scalar_type() == at::kLong, op, ": ", name,
                  " must be int32 or int64, got ", t->scalar_type());
      if (name[0] == 'q') {
        TORCH_CHECK((t->dim() == 2 || (t->dim() == 3 && t->size(2) == 3)) && t->size(0) == s.batch &&
                        t->size(1) == len,
                    op, ": q_pos must have shape (B, Lq) = (", s.batch, ", ", len,
                    ") for 1-D positions or (B, Lq, 3) = (", s.batch, ", ", len, ", 3) for M-RoPE (t, h, w) "
                    "positions, got ", t->sizes());
      } else {
        TORCH_CHECK(t->dim() == q_pos->dim() && (t->dim() == 2 || t->size(2) == 3) && t->size(0) == s.batch &&
                        t->size(1) == len,
                    op, ": k_pos must have shape ", s.pos_axes == 3 ? "(B, Lk, 3)" : "(B, Lk)", " = (", s.batch,
                    ", ", len, s.pos_axes == 3 ? ", 3)" : ")", ", ", form, "; got ", t->sizes());
      }
    }
    const at::Tensor& tb = *table;
    check_same_device(op, "table", tb, q, "q");
    TORCH_CHECK(tb.scalar_type() == at::kFloat, op, ": table must be float32, got ", tb.scalar_type());
    if (s.pos_axes == 1) {
      TORCH_CHECK(tb.dim() == 1 && tb.size(0) >= 1, op,
                  ": table must be 1-D with at least one entry, (T,) for (B, L) positions, got shape ", tb.sizes());
    } else {
      TORCH_CHECK(tb.dim() == 2 && tb.size(0) == 3 && tb.size(1) >= 1, op,
                  ": table must be (3, T) decay shares (rope_decay_tables) with T >= 1 for (B, L, 3) M-RoPE "
                  "positions, got shape ", tb.sizes());
    }
    s.table_len = tb.size(-1);
    // Table indices are narrowed to int32 in the CPU kernel's vectorised gathers (cpu/softmax_rows.cpp).
    TORCH_CHECK(s.table_len <= (int64_t(1) << 31), op, ": table may have at most 2^31 entries per row, got T = ",
                s.table_len);
  }
  const double sc = scale.has_value() ? *scale : 1.0 / std::sqrt(double(s.head_dim));
  TORCH_CHECK(std::isfinite(sc), op, ": scale must be finite, got ", sc);
  s.scale = float(sc);
  return s;
}

void check_log_size_values(const at::Tensor& log_size) {
  const auto values = log_size.accessor<float, 2>();  // any strides; checked shape (B, Lk) float32 on the CPU
  for (int64_t b = 0; b < values.size(0); ++b)
    for (int64_t j = 0; j < values.size(1); ++j)
      TORCH_CHECK(log_size_allowed(values[b][j]),
                  "calibrated_attention: log_size must hold finite values or -inf (a masked key), got ",
                  values[b][j], " at log_size[", b, ", ", j, "]");
}

void check_table_values(const at::Tensor& table) {
  constexpr const char* op = "calibrated_attention";
  const at::Tensor t = table.contiguous();  // checked float32 on the CPU: (T,) or (3, T)
  const float* x = t.const_data_ptr<float>();
  const int64_t n = t.numel();
  if (t.dim() == 1) {
    for (int64_t d = 0; d < n; ++d)
      TORCH_CHECK(distance_table_entry_allowed(x[d]), op,
                  ": table must hold finite values or -inf (it masks the keys at that distance), got ", x[d],
                  " at table[", d, "]");
    return;
  }
  const int64_t len = t.size(1);
  float max_of[3];
  for (int64_t a = 0; a < 3; ++a) {
    max_of[a] = -1.f;
    for (int64_t d = 0; d < len; ++d) {
      const float v = x[a * len + d];
      TORCH_CHECK(mrope_share_allowed(v), op, ": an M-RoPE table holds decay shares in [-1, 1], got ", v,
                  " at table[", a, ", ", d, "]");
      max_of[a] = v > max_of[a] ? v : max_of[a];
    }
  }
  TORCH_CHECK(mrope_maxima_allowed(max_of[0], max_of[1], max_of[2]), op,
              ": the row maxima of an M-RoPE table must add up to less than 2 (so that log(2 - decay) is finite), "
              "got ", max_of[0], " + ", max_of[1], " + ", max_of[2]);
}

}  // namespace restore
