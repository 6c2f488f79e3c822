// dropout_add_layer_norm on the CPU (layer_norm.h): rows in parallel, each row's passes over
// float scratch rows in loops that vectorise (cpu_clones.h); a row's sums are kLanes partial sums
// combined in a fixed order. The weight and bias gradients are summed over fixed blocks of
// rows and then over the blocks in order, so they do not depend on the number of threads: a
// resumed run must end with the bits of an uninterrupted one.
#include "layer_norm.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "block_sums.h"
#include "checks.h"
#include "cpu_clones.h"
#include "philox_cpu.h"

namespace electra_fast {

ResidualDropout check_dropout_add_layer_norm(const at::Tensor& x, const at::Tensor& residual,
                                             const at::Tensor& weight, const at::Tensor& bias,
                                             const std::optional<at::Tensor>& x_bias,
                                             const std::optional<at::Tensor>& seed,
                                             double dropout_p, double eps, bool read_seed) {
  TORCH_CHECK_VALUE(x.dim() >= 1 && x.size(-1) >= 1, "x must have a last dimension, got shape ",
                    x.sizes());
  EF_CHECK_CONTIGUOUS(x);
  EF_CHECK_CONTIGUOUS(residual);
  TORCH_CHECK_VALUE(residual.sizes() == x.sizes(), "residual must have x's shape ", x.sizes(),
                    ", got ", residual.sizes());
  EF_CHECK_DEVICE(residual, x.device());
  const auto rt = residual.scalar_type(), xt = x.scalar_type();
  EF_CHECK_FLOATS(residual);
  EF_CHECK_DTYPE(x, xt == rt || (rt == at::kFloat && (xt == at::kBFloat16 || xt == at::kHalf)),
                 "residual's dtype, or bfloat16/float16 with a float32 residual");
  const int64_t H = x.size(-1);
  const std::pair<const char*, const at::Tensor*> vectors[] = {
      {"weight", &weight}, {"bias", &bias}, {"x_bias", x_bias ? &*x_bias : nullptr}};
  for (const auto& [name, t] : vectors) {
    if (t == nullptr) continue;
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == H && t->scalar_type() == at::kFloat &&
                          t->is_contiguous() && t->device() == x.device(),
                      name, " must be contiguous float32 of shape [", H, "] on ", x.device(),
                      ", got ", t->scalar_type(), " ", t->sizes(), " on ", t->device());
  }
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, "dropout_p must be in [0, 1), got ",
                    dropout_p);
  TORCH_CHECK_VALUE(eps > 0.0 && std::isfinite(eps), "eps must be positive, got ", eps);
  ResidualDropout drop{0, 0, 1.0f, (H + 7) / 8};
  if (dropout_p > 0.0) {
    TORCH_CHECK_VALUE(seed.has_value(), "seed is required when dropout_p > 0");
    EF_CHECK_DIM(*seed, 0);
    EF_CHECK_DTYPE(*seed, seed->scalar_type() == at::kLong, "int64");
    EF_CHECK_DEVICE(*seed, x.device());
    drop.threshold = dropout_threshold(dropout_p);
    drop.scale = dropout_keep_scale(drop.threshold);
    if (read_seed) drop.seed = static_cast<uint64_t>(seed->item<int64_t>());
  }
  return drop;
}

ResidualDropout check_dropout_add_layer_norm_backward(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_out_x, const at::Tensor& x,
    const at::Tensor& residual, const at::Tensor& weight, const std::optional<at::Tensor>& x_bias,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& seed,
    double dropout_p, bool read_seed) {
  // The forward's checks, the weight standing in for the bias (which the backward does not take).
  const ResidualDropout drop = check_dropout_add_layer_norm(x, residual, weight, weight, x_bias,
                                                            seed, dropout_p, 1.0, read_seed);
  TORCH_CHECK_VALUE(grad_out.sizes() == residual.sizes() &&
                        grad_out.scalar_type() == residual.scalar_type() &&
                        grad_out.device() == residual.device(),
                    "grad_out must have the output's shape ", residual.sizes(), ", dtype ",
                    residual.scalar_type(), " and device, got ", grad_out.sizes(), " ",
                    grad_out.scalar_type(), " on ", grad_out.device());
  if (grad_out_x) {
    TORCH_CHECK_VALUE(grad_out_x->sizes() == x.sizes() &&
                          grad_out_x->scalar_type() == x.scalar_type() &&
                          grad_out_x->device() == x.device(),
                      "grad_out_x must have x's shape ", x.sizes(), ", dtype ", x.scalar_type(),
                      " and device, got ", grad_out_x->sizes(), " ", grad_out_x->scalar_type(),
                      " on ", grad_out_x->device());
  }
  const int64_t rows = residual.numel() / residual.size(-1);
  for (const at::Tensor* t : {&mean, &rstd}) {
    TORCH_CHECK_VALUE(t->numel() == rows && t->scalar_type() == at::kFloat && t->is_contiguous() &&
                          t->device() == residual.device(),
                      t == &mean ? "mean" : "rstd", " must be contiguous float32 with ", rows,
                      " elements on ", residual.device(), ", got ", t->scalar_type(), " ",
                      t->sizes());
  }
  return drop;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> new_dropout_add_layer_norm_outputs(
    const at::Tensor& x, const at::Tensor& residual, bool with_out_x) {
  const auto stats_shape = x.sizes().slice(0, x.dim() - 1);
  return {at::empty_like(residual), at::empty(stats_shape, x.options().dtype(at::kFloat)),
          at::empty(stats_shape, x.options().dtype(at::kFloat)),
          with_out_x ? at::empty_like(x) : at::empty({0}, x.options())};
}

namespace {

constexpr int kLanes = 8;  // partial sums of a row's reductions

// keep[(r - first) * H + c] = 1 where column c of row r in [first, first + rows) survives the
// dropout (everywhere without dropout). The rows' Philox blocks have consecutive indices
// (r * groups + g), drawn kPhiloxBatch at a time (philox_cpu.h) across rows, so that a narrow
// row (ELECTRA-small's generator has 64 columns: 8 blocks) is batched too; the last ones one by
// one. The same numbers as ResidualDropout::keep_bits, which the CUDA kernel calls.
void keep_mask(const ResidualDropout& drop, int64_t first, int64_t rows, int64_t H,
               uint8_t* keep) {
  if (drop.threshold == 0) {
    std::fill(keep, keep + rows * H, uint8_t{1});
    return;
  }
  const int64_t begin = first * drop.groups, end = (first + rows) * drop.groups;
  // The 8 columns of block `index` from its keep bits.
  auto unpack = [&](int64_t index, uint32_t bits) {
    const int64_t row = index / drop.groups, c0 = 8 * (index % drop.groups);
    uint8_t* out = keep + (row - first) * H;
    for (int64_t c = c0; c < std::min(H, c0 + 8); ++c) out[c] = (bits >> (c - c0)) & 1u;
  };
  uint32_t low[kPhiloxBatch], high[kPhiloxBatch];
  PhiloxBatch words;
  int64_t i0 = begin;
  for (; i0 + kPhiloxBatch <= end; i0 += kPhiloxBatch) {
    for (int j = 0; j < kPhiloxBatch; ++j) {
      const uint64_t index = static_cast<uint64_t>(i0 + j);
      low[j] = static_cast<uint32_t>(index);
      high[j] = static_cast<uint32_t>(index >> 32);
    }
    philox_batch(low, high, kStreamResidualDropout, 0u, static_cast<uint32_t>(drop.seed),
                 static_cast<uint32_t>(drop.seed >> 32), words);
    for (int j = 0; j < kPhiloxBatch; ++j) unpack(i0 + j, keep_halves(words, j, drop.threshold));
  }
  for (int64_t i = i0; i < end; ++i) unpack(i, drop.keep_bits(i / drop.groups, i % drop.groups));
}

// Rows whose dropout masks are drawn together: at least one batch of Philox blocks.
int64_t mask_rows(const ResidualDropout& drop) {
  return std::max<int64_t>(1, (kPhiloxBatch + drop.groups - 1) / drop.groups);
}

// The sum of v[0, n), in kLanes partial sums that vectorise, combined in a fixed order.
EF_INLINE float total(const float* v, int64_t n) {
  float lanes[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) {
    for (int i = 0; i < kLanes; ++i) lanes[i] += v[c + i];
  }
  for (; c < n; ++c) lanes[c % kLanes] += v[c];
  return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) +
         ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

// s = residual + (x + xb) * keep * scale (xb null: no x_bias); a dropped element is 0 even
// where x is not finite.
template <typename x_t, typename r_t>
EF_INLINE void row_sum(const x_t* x, const float* xb, const r_t* r, const uint8_t* keep,
                       float scale, int64_t H, float* s) {
  if (xb == nullptr) {
    for (int64_t c = 0; c < H; ++c) {
      s[c] = static_cast<float>(r[c]) + (keep[c] ? static_cast<float>(x[c]) * scale : 0.0f);
    }
    return;
  }
  for (int64_t c = 0; c < H; ++c) {
    const float branch = static_cast<float>(x[c]) + xb[c];
    s[c] = static_cast<float>(r[c]) + (keep[c] ? branch * scale : 0.0f);
  }
}

// One row of the forward; `s` and `d` are scratch rows; out_x null: no copy in x's dtype.
// Returns (mean, rstd).
template <typename x_t, typename r_t>
EF_CPU_CLONES std::pair<float, float> forward_row(const x_t* x, const float* xb, const r_t* r,
                                                  const float* w, const float* b,
                                                  const uint8_t* keep, float scale, int64_t H,
                                                  float eps, float* s, float* d, r_t* out,
                                                  x_t* out_x) {
  row_sum(x, xb, r, keep, scale, H, s);
  const float mean = total(s, H) / static_cast<float>(H);
  for (int64_t c = 0; c < H; ++c) d[c] = (s[c] - mean) * (s[c] - mean);
  const float rstd = 1.0f / std::sqrt(total(d, H) / static_cast<float>(H) + eps);
  for (int64_t c = 0; c < H; ++c) d[c] = (s[c] - mean) * rstd * w[c] + b[c];
  for (int64_t c = 0; c < H; ++c) out[c] = static_cast<r_t>(d[c]);
  if (out_x != nullptr) {
    for (int64_t c = 0; c < H; ++c) out_x[c] = static_cast<x_t>(d[c]);
  }
  return {mean, rstd};
}

// One row of the backward: writes dx and dresidual and adds to the block's dw, db and (xb not
// null) dxb. The output's gradient is dy, plus dy_x unless null. `xhat`, `g` and `gx` are
// scratch rows.
template <typename x_t, typename r_t>
EF_CPU_CLONES void backward_row(const r_t* dy, const x_t* dy_x, const x_t* x, const float* xb,
                                const r_t* r,
                                const float* w, const uint8_t* keep, float scale, int64_t H,
                                float mean, float rstd, float* xhat, float* g, float* gx, float* dw,
                                float* db, float* dxb, x_t* dx, r_t* dr) {
  row_sum(x, xb, r, keep, scale, H, xhat);
  for (int64_t c = 0; c < H; ++c) {
    xhat[c] = (xhat[c] - mean) * rstd;
    const float dy_c =
        static_cast<float>(dy[c]) + (dy_x != nullptr ? static_cast<float>(dy_x[c]) : 0.0f);
    g[c] = dy_c * w[c];
    gx[c] = g[c] * xhat[c];
    dw[c] += dy_c * xhat[c];
    db[c] += dy_c;
  }
  const float mean_g = total(g, H) / static_cast<float>(H);
  const float mean_gx = total(gx, H) / static_cast<float>(H);
  for (int64_t c = 0; c < H; ++c) {
    const float ds = rstd * (g[c] - mean_g - xhat[c] * mean_gx);
    dr[c] = static_cast<r_t>(ds);
    gx[c] = keep[c] ? ds * scale : 0.0f;  // gx's last use was mean_gx: now x's gradient
    dx[c] = static_cast<x_t>(gx[c]);
  }
  if (xb != nullptr) {
    for (int64_t c = 0; c < H; ++c) dxb[c] += gx[c];
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dropout_add_layer_norm_cpu(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight,
    const at::Tensor& bias, const std::optional<at::Tensor>& x_bias,
    const std::optional<at::Tensor>& seed, double dropout_p, double eps, bool with_out_x) {
  const ResidualDropout drop =
      check_dropout_add_layer_norm(x, residual, weight, bias, x_bias, seed, dropout_p, eps, true);
  const float* xb = x_bias ? x_bias->const_data_ptr<float>() : nullptr;
  const int64_t H = x.size(-1), M = x.numel() / H;
  auto [out, mean, rstd, out_x] = new_dropout_add_layer_norm_outputs(x, residual, with_out_x);
  dispatch_dtypes(x.scalar_type(), residual.scalar_type(), [&](auto* x_type, auto* r_type) {
    using x_t = std::remove_pointer_t<decltype(x_type)>;
    using r_t = std::remove_pointer_t<decltype(r_type)>;
    const x_t* xp = x.const_data_ptr<x_t>();
    const r_t* rp = residual.const_data_ptr<r_t>();
    r_t* op = out.mutable_data_ptr<r_t>();
    x_t* oxp = with_out_x ? out_x.mutable_data_ptr<x_t>() : nullptr;
    float* mp = mean.mutable_data_ptr<float>();
    float* sp = rstd.mutable_data_ptr<float>();
    const int64_t together = mask_rows(drop);
    at::parallel_for(0, M, std::max<int64_t>(1, 16384 / H), [&](int64_t begin, int64_t end) {
      std::vector<float> s(H), d(H);
      std::vector<uint8_t> keep(together * H);
      for (int64_t first = begin; first < end; first += together) {
        const int64_t rows = std::min(together, end - first);
        keep_mask(drop, first, rows, H, keep.data());
        for (int64_t row = first; row < first + rows; ++row) {
          std::tie(mp[row], sp[row]) = forward_row(
              xp + row * H, xb, rp + row * H, weight.const_data_ptr<float>(),
              bias.const_data_ptr<float>(), keep.data() + (row - first) * H, drop.scale, H,
              static_cast<float>(eps), s.data(), d.data(), op + row * H,
              oxp != nullptr ? oxp + row * H : nullptr);
        }
      }
    });
  });
  return {out, mean, rstd, out_x};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dropout_add_layer_norm_backward_cpu(
    const at::Tensor& grad_out, const std::optional<at::Tensor>& grad_out_x, const at::Tensor& x,
    const at::Tensor& residual, const at::Tensor& weight, const std::optional<at::Tensor>& x_bias,
    const at::Tensor& mean, const at::Tensor& rstd, const std::optional<at::Tensor>& seed,
    double dropout_p) {
  const ResidualDropout drop = check_dropout_add_layer_norm_backward(
      grad_out, grad_out_x, x, residual, weight, x_bias, mean, rstd, seed, dropout_p, true);
  const at::Tensor dy = grad_out.contiguous();
  const at::Tensor dy_x = grad_out_x ? grad_out_x->contiguous() : at::Tensor();
  const int64_t H = x.size(-1), M = x.numel() / H, P = parameter_gradients(x_bias);
  const int64_t blocks = (M + kRowsPerBlock - 1) / kRowsPerBlock;
  const float* xb = x_bias ? x_bias->const_data_ptr<float>() : nullptr;
  at::Tensor grad_x = at::empty_like(x), grad_residual = at::empty_like(residual);
  // Per block of rows: P rows of H sums (weight, bias, x_bias gradients).
  std::vector<float> partial(static_cast<size_t>(blocks * P * H), 0.0f);
  dispatch_dtypes(x.scalar_type(), residual.scalar_type(), [&](auto* x_type, auto* r_type) {
    using x_t = std::remove_pointer_t<decltype(x_type)>;
    using r_t = std::remove_pointer_t<decltype(r_type)>;
    const x_t* xp = x.const_data_ptr<x_t>();
    const r_t* rp = residual.const_data_ptr<r_t>();
    const r_t* gp = dy.const_data_ptr<r_t>();
    const x_t* gxp = dy_x.defined() ? dy_x.const_data_ptr<x_t>() : nullptr;
    const float* mp = mean.const_data_ptr<float>();
    const float* sp = rstd.const_data_ptr<float>();
    x_t* dxp = grad_x.mutable_data_ptr<x_t>();
    r_t* drp = grad_residual.mutable_data_ptr<r_t>();
    // A block's kRowsPerBlock rows have their masks drawn at once.
    at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
      std::vector<float> xhat(H), g(H), gx(H);
      std::vector<uint8_t> keep(kRowsPerBlock * H);
      for (int64_t block = first; block < last; ++block) {
        float* dw = partial.data() + block * P * H;
        const int64_t first_row = block * kRowsPerBlock;
        const int64_t rows = std::min(M, first_row + kRowsPerBlock) - first_row;
        keep_mask(drop, first_row, rows, H, keep.data());
        for (int64_t row = first_row; row < first_row + rows; ++row) {
          backward_row(gp + row * H, gxp != nullptr ? gxp + row * H : nullptr, xp + row * H, xb,
                       rp + row * H, weight.const_data_ptr<float>(),
                       keep.data() + (row - first_row) * H, drop.scale, H, mp[row], sp[row],
                       xhat.data(), g.data(), gx.data(), dw, dw + H, dw + 2 * H, dxp + row * H,
                       drp + row * H);
        }
      }
    });
  });
  return {grad_x, grad_residual, sum_over_blocks(partial, blocks, P * H).view({P, H})};
}

}  // namespace

TORCH_LIBRARY_IMPL(electra_fast, CPU, m) {
  m.impl("dropout_add_layer_norm", &dropout_add_layer_norm_cpu);
  m.impl("dropout_add_layer_norm_backward", &dropout_add_layer_norm_backward_cpu);
}

}  // namespace electra_fast
