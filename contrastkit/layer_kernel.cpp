// A BERT layer's fp32 element-wise passes around its dense products, with AVX-512 multiply-adds:
// contrastkit/fused_layer.py builds and loads this file.
//
// The exit of a block (after the attention's output projection and after the feed-forward's second
// product), from the product h = x_in Wᵀ without its bias b:
//
//     s = keep · (h + b) · scale + x        y = (s − mean(s)) · rstd · gamma + beta,
//     rstd = 1 / sqrt(var(s) + eps)
//
// and the feed-forward's entry from its product h without the bias: y = GELU(h + b), the exact
// (erf) GELU as torch computes it in fp32 (erf by Abramowitz & Stegun 7.1.26 with an exponential).
//
// The dropout mask is FastDropout's (contrastkit/fast_dropout.py): element e of the [rows, width]
// block is kept when 16-bit lane e of the SplitMix64 stream from the seed is >= threshold.
//
// Rows are cut into blocks of about 8,192 elements (`rows_per_block`, the numba loops' blocks); each
// block sums its own partial bias / gamma / beta gradients in a row of its own, and every row's sums
// run in one fixed order, so that the results do not depend on how many threads run.
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include <algorithm>
#include <vector>

#include "kernel_common.h"

namespace {

const int BLOCK = 2048;  // SplitMix64 words a block of rows draws at most: 8,192 lanes

// erf(x) = sign(x) (1 − t (p1 + t (p2 + t (p3 + t (p4 + t p5)))) e^(−x²)), t = 1 / (1 + p |x|)
// (Abramowitz & Stegun 7.1.26, |error| <= 1.5e-7; torch's vectorised fp32 erf), given e = e^(−x²);
// 1 / (1 + p |x|) from the reciprocal estimate and one Newton step
inline __m512 erf_ps(__m512 x, __m512 e) {
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f), sign = _mm512_set1_ps(-0.0f);
  const __m512 a = _mm512_andnot_ps(sign, x);
  const __m512 den = _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), a, one);
  __m512 t = _mm512_rcp14_ps(den);
  t = _mm512_mul_ps(t, _mm512_fnmadd_ps(den, t, two));
  __m512 r = _mm512_fmadd_ps(_mm512_set1_ps(1.061405429f), t, _mm512_set1_ps(-1.453152027f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(1.421413741f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(-0.284496736f));
  r = _mm512_fmadd_ps(r, t, _mm512_set1_ps(0.254829592f));
  const __m512 v = _mm512_fnmadd_ps(_mm512_mul_ps(e, t), r, one);
  return _mm512_or_ps(v, _mm512_and_ps(sign, x));
}

// Φ(z) = (1 + erf(z / √2)) / 2 and e^(−z²/2), which φ(z) = e^(−z²/2) / √(2π) shares
inline __m512 normal_cdf(__m512 z, __m512* e) {
  *e = exp_ps(_mm512_mul_ps(_mm512_mul_ps(z, z), _mm512_set1_ps(-0.5f)));
  const __m512 half = _mm512_set1_ps(0.5f);
  return _mm512_fmadd_ps(half, erf_ps(_mm512_mul_ps(z, _mm512_set1_ps((float)M_SQRT1_2)), *e), half);
}

inline __mmask16 lanes_left(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

// which of the 16 stream lanes at `lanes` are >= threshold, as a mask (lanes off in `live` stay off)
inline __mmask16 kept(const uint16_t* lanes, uint16_t threshold, __mmask16 live) {
  const __m256i v = _mm256_maskz_loadu_epi16(live, lanes);
  return _mm256_mask_cmpge_epu16_mask(live, v, _mm256_set1_epi16((short)threshold));
}

// Σ over a row's 16-lane vector partial sums in one fixed order
inline float total(__m512 v) { return _mm512_reduce_add_ps(v); }

int64_t rows_per_block(int64_t width) { return width >= 4 * BLOCK - 4 ? 1 : (4 * BLOCK - 4) / width; }

// a block's stream lanes: those of rows [r0, r1) of a [rows, width] block, from the word holding
// element r0 · width; returns the lane of that element within `words`
int64_t block_lanes(std::vector<uint64_t>& words, int64_t width, int64_t r0, int64_t r1, uint64_t seed) {
  const int64_t first = r0 * width / 4, count = (r1 * width + 3) / 4 - first;
  words.resize(count + 8);
  splitmix_words(words.data(), seed, (uint64_t)first, count);
  return r0 * width - 4 * first;
}

struct Exit {
  int64_t rows, width;
  uint64_t seed;
  uint16_t threshold;  // 0: nothing dropped
  float scale;         // 1 / the keep probability
};

void exit_forward_block(const Exit& e, const float* h, const float* bias, const float* x, const float* gamma,
                        const float* beta, float eps, float* s, float* y, float* stats, int64_t r0, int64_t r1) {
  const int64_t D = e.width;
  std::vector<uint64_t> words;
  const int64_t lane0 = e.threshold ? block_lanes(words, D, r0, r1, e.seed) : 0;
  const uint16_t* lanes = (const uint16_t*)words.data();
  const __m512 scale = _mm512_set1_ps(e.scale);
  for (int64_t r = r0; r < r1; r++) {
    const float *hr = h + r * D, *xr = x + r * D;
    float *sr = s + r * D, *yr = y + r * D;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < D; j += 16) {
      const __mmask16 live = lanes_left(D - j);
      const __m512 z = _mm512_add_ps(_mm512_maskz_loadu_ps(live, hr + j), _mm512_maskz_loadu_ps(live, bias + j));
      __m512 v = _mm512_mul_ps(z, scale);
      if (e.threshold) v = _mm512_maskz_mov_ps(kept(lanes + lane0 + (r - r0) * D + j, e.threshold, live), v);
      v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(live, xr + j));
      _mm512_mask_storeu_ps(sr + j, live, v);
      sum = _mm512_add_ps(sum, v);
    }
    const float mean = total(sum) / (float)D;
    const __m512 m = _mm512_set1_ps(mean);
    __m512 squares = _mm512_setzero_ps();
    for (int64_t j = 0; j < D; j += 16) {
      const __mmask16 live = lanes_left(D - j);
      const __m512 c = _mm512_maskz_sub_ps(live, _mm512_maskz_loadu_ps(live, sr + j), m);
      squares = _mm512_fmadd_ps(c, c, squares);
    }
    const float rstd = 1.0f / sqrtf(total(squares) / (float)D + eps);
    const __m512 rs = _mm512_set1_ps(rstd);
    for (int64_t j = 0; j < D; j += 16) {
      const __mmask16 live = lanes_left(D - j);
      const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, sr + j), m), rs);
      _mm512_mask_storeu_ps(yr + j, live, _mm512_fmadd_ps(xhat, _mm512_maskz_loadu_ps(live, gamma + j),
                                                          _mm512_maskz_loadu_ps(live, beta + j)));
    }
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
  }
}

// partial: this block's [3, D] sums of dgamma, dbeta, dbias
void exit_backward_block(const Exit& e, const float* dy, const float* s, const float* gamma, const float* stats,
                         float* dx, float* dh, float* partial, int64_t r0, int64_t r1) {
  const int64_t D = e.width;
  std::vector<uint64_t> words;
  const int64_t lane0 = e.threshold ? block_lanes(words, D, r0, r1, e.seed) : 0;
  const uint16_t* lanes = (const uint16_t*)words.data();
  const __m512 scale = _mm512_set1_ps(e.scale);
  float *dgamma = partial, *dbeta = partial + D, *dbias = partial + 2 * D;
  for (int64_t j = 0; j < 3 * D; j++) partial[j] = 0.0f;
  for (int64_t r = r0; r < r1; r++) {
    const float *dyr = dy + r * D, *sr = s + r * D;
    float *dxr = dx + r * D, *dhr = dh + r * D;
    const __m512 m = _mm512_set1_ps(stats[2 * r]), rs = _mm512_set1_ps(stats[2 * r + 1]);
    __m512 sum_g = _mm512_setzero_ps(), sum_gx = _mm512_setzero_ps();
    for (int64_t j = 0; j < D; j += 16) {
      const __mmask16 live = lanes_left(D - j);
      const __m512 d = _mm512_maskz_loadu_ps(live, dyr + j);
      const __m512 g = _mm512_mul_ps(d, _mm512_maskz_loadu_ps(live, gamma + j));
      const __m512 xhat = _mm512_maskz_mul_ps(live, _mm512_sub_ps(_mm512_maskz_loadu_ps(live, sr + j), m), rs);
      sum_g = _mm512_add_ps(sum_g, g);
      sum_gx = _mm512_fmadd_ps(g, xhat, sum_gx);
      _mm512_mask_storeu_ps(dgamma + j, live, _mm512_fmadd_ps(d, xhat, _mm512_maskz_loadu_ps(live, dgamma + j)));
      _mm512_mask_storeu_ps(dbeta + j, live, _mm512_add_ps(d, _mm512_maskz_loadu_ps(live, dbeta + j)));
    }
    const __m512 mean_g = _mm512_set1_ps(total(sum_g) / (float)D), mean_gx = _mm512_set1_ps(total(sum_gx) / (float)D);
    for (int64_t j = 0; j < D; j += 16) {
      const __mmask16 live = lanes_left(D - j);
      const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(live, dyr + j), _mm512_maskz_loadu_ps(live, gamma + j));
      const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(live, sr + j), m), rs);
      const __m512 ds = _mm512_mul_ps(rs, _mm512_fnmadd_ps(xhat, mean_gx, _mm512_sub_ps(g, mean_g)));
      _mm512_mask_storeu_ps(dxr + j, live, ds);
      __m512 da = _mm512_mul_ps(ds, scale);
      if (e.threshold) da = _mm512_maskz_mov_ps(kept(lanes + lane0 + (r - r0) * D + j, e.threshold, live), da);
      _mm512_mask_storeu_ps(dhr + j, live, da);
      _mm512_mask_storeu_ps(dbias + j, live, _mm512_add_ps(da, _mm512_maskz_loadu_ps(live, dbias + j)));
    }
  }
}

// GELU(z) = z Φ(z) = z (1 + erf(z / √2)) / 2;  GELU'(z) = Φ(z) + z φ(z), φ(z) = e^(−z²/2) / √(2π)
void gelu_forward_block(const float* h, const float* bias, float* y, int64_t width, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; r++) {
    const float* hr = h + r * width;
    float* yr = y + r * width;
    for (int64_t j = 0; j < width; j += 16) {
      const __mmask16 live = lanes_left(width - j);
      const __m512 z = _mm512_add_ps(_mm512_maskz_loadu_ps(live, hr + j), _mm512_maskz_loadu_ps(live, bias + j));
      __m512 e;
      _mm512_mask_storeu_ps(yr + j, live, _mm512_mul_ps(z, normal_cdf(z, &e)));
    }
  }
}

void gelu_backward_block(const float* grad, const float* h, const float* bias, float* dh, float* dbias,
                         int64_t width, int64_t r0, int64_t r1) {
  const __m512 beta = _mm512_set1_ps((float)(M_2_SQRTPI * M_SQRT1_2 * 0.5));  // 1 / √(2π)
  for (int64_t j = 0; j < width; j++) dbias[j] = 0.0f;
  for (int64_t r = r0; r < r1; r++) {
    const float *hr = h + r * width, *gr = grad + r * width;
    float* dhr = dh + r * width;
    for (int64_t j = 0; j < width; j += 16) {
      const __mmask16 live = lanes_left(width - j);
      const __m512 z = _mm512_add_ps(_mm512_maskz_loadu_ps(live, hr + j), _mm512_maskz_loadu_ps(live, bias + j));
      __m512 e;
      const __m512 cdf = normal_cdf(z, &e);
      const __m512 d = _mm512_maskz_mul_ps(live, _mm512_maskz_loadu_ps(live, gr + j),
                                           _mm512_fmadd_ps(_mm512_mul_ps(z, beta), e, cdf));
      _mm512_mask_storeu_ps(dhr + j, live, d);
      _mm512_mask_storeu_ps(dbias + j, live, _mm512_add_ps(d, _mm512_maskz_loadu_ps(live, dbias + j)));
    }
  }
}

}  // namespace

extern "C" {

// how many blocks (rows of partial sums) a [rows, width] input is cut into
int64_t layer_blocks(int64_t rows, int64_t width) {
  const int64_t step = rows_per_block(width);
  return (rows + step - 1) / step;
}

// s, y [rows, width]; stats [rows, 2]: each row's mean and rstd
void exit_forward_f32(const float* h, const float* bias, const float* x, const float* gamma, const float* beta,
                      float eps, int64_t rows, int64_t width, uint64_t seed, uint16_t threshold, float scale,
                      int threads, float* s, float* y, float* stats) {
  const Exit e{rows, width, seed, threshold, scale};
  const int64_t step = rows_per_block(width);
  for_tasks(layer_blocks(rows, width), threads, [&](int64_t b) {
    exit_forward_block(e, h, bias, x, gamma, beta, eps, s, y, stats, b * step, std::min(rows, b * step + step));
  });
}

// dx (the residual's gradient), dh (of the product) [rows, width]; partial [blocks, 3, width]
void exit_backward_f32(const float* dy, const float* s, const float* gamma, const float* stats, int64_t rows,
                       int64_t width, uint64_t seed, uint16_t threshold, float scale, int threads, float* dx,
                       float* dh, float* partial) {
  const Exit e{rows, width, seed, threshold, scale};
  const int64_t step = rows_per_block(width);
  for_tasks(layer_blocks(rows, width), threads, [&](int64_t b) {
    exit_backward_block(e, dy, s, gamma, stats, dx, dh, partial + b * 3 * width, b * step,
                        std::min(rows, b * step + step));
  });
}

void gelu_forward_f32(const float* h, const float* bias, int64_t rows, int64_t width, int threads, float* y) {
  const int64_t step = rows_per_block(width);
  for_tasks(layer_blocks(rows, width), threads, [&](int64_t b) {
    gelu_forward_block(h, bias, y, width, b * step, std::min(rows, b * step + step));
  });
}

// dh [rows, width]; partial [blocks, width]
void gelu_backward_f32(const float* grad, const float* h, const float* bias, int64_t rows, int64_t width, int threads,
                       float* dh, float* partial) {
  const int64_t step = rows_per_block(width);
  for_tasks(layer_blocks(rows, width), threads, [&](int64_t b) {
    gelu_backward_block(grad, h, bias, dh, partial + b * width, width, b * step, std::min(rows, b * step + step));
  });
}

}  // extern "C"
