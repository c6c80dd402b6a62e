// What the compiled kernels share: FastDropout's SplitMix64 stream, an AVX-512 e^x, and their loop
// over independent tasks on OpenMP threads.
// Included by attention_kernel.cpp and layer_kernel.cpp (fused_attention.build hashes it with them).
#pragma once
#include <immintrin.h>
#include <stdint.h>

namespace {

const uint64_t GAMMA = 0x9E3779B97F4A7C15ULL, MIX1 = 0xBF58476D1CE4E5B9ULL, MIX2 = 0x94D049BB133111EBULL;

// words[k] = SplitMix64 word first + k of the stream from seed, k < n (n rounded up to 8 are written)
void splitmix_words(uint64_t* words, uint64_t seed, uint64_t first, int n) {
  const __m512i gamma = _mm512_set1_epi64((long long)GAMMA), mix1 = _mm512_set1_epi64((long long)MIX1),
                mix2 = _mm512_set1_epi64((long long)MIX2), eight = _mm512_set1_epi64(8);
  const __m512i base = _mm512_set1_epi64((long long)(seed + first * GAMMA));
  __m512i k = _mm512_set_epi64(8, 7, 6, 5, 4, 3, 2, 1);
  for (int w = 0; w < n; w += 8, k = _mm512_add_epi64(k, eight)) {
    __m512i z = _mm512_add_epi64(base, _mm512_mullo_epi64(k, gamma));
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 30)), mix1);
    z = _mm512_mullo_epi64(_mm512_xor_si512(z, _mm512_srli_epi64(z, 27)), mix2);
    _mm512_storeu_si512(words + w, _mm512_xor_si512(z, _mm512_srli_epi64(z, 31)));
  }
}

// e^x for x <= 0 (Cephes' expf: x = k ln 2 + r, a degree-6 polynomial in r, times 2^k by vscalefps,
// exact for the normal results here); e^-87 for x below -87
inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, k);
}

// run(task) for task < count: over `threads` OpenMP threads, or in this thread alone (no OpenMP call:
// a forked child must not touch its parent's OpenMP pool)
template <typename Run>
void for_tasks(int64_t count, int threads, Run run) {
  if (threads <= 1) {
    for (int64_t task = 0; task < count; task++) run(task);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t task = 0; task < count; task++) run(task);
}

}  // namespace
