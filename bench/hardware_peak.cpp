// The arithmetic peak of this CPU's cores: independent chains of the multiply-add instructions a
// matmul kernel is built of, no memory traffic, on `threads` OpenMP threads (bench/flops.py).
// bf16: vdpbf16ps (AVX512-BF16), 16 fp32 lanes, each adding two bf16 products: 64 FLOP an instruction.
// fp32: vfmadd (AVX-512F), 16 lanes, a multiply and an add: 32 FLOP an instruction.
// Built by contrastkit.fused_attention.build (its flags: AVX-512 F/BW/VL/DQ, -O3 -fopenmp); the bf16
// chains get AVX512-BF16 by a target attribute and are run only where the CPU has it (bench/flops.py).
#include <immintrin.h>
#include <omp.h>
#include <cstdint>

namespace {
constexpr int CHAINS = 24;  // more independent accumulators than (pipes x latency): the pipes stay full

__attribute__((target("avx512bf16"))) float bf16_chains(int64_t rounds) {
    __m512 acc[CHAINS];
    for (int i = 0; i < CHAINS; ++i) acc[i] = _mm512_setzero_ps();
    __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = a;  // pairs of bf16 ones
    for (int64_t r = 0; r < rounds; ++r) {
#pragma GCC unroll 24
        for (int i = 0; i < CHAINS; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
        __asm__ volatile("" : "+v"(a));  // the compiler may not fold the loop
    }
    float sum = 0;
    for (int i = 0; i < CHAINS; ++i) sum += _mm512_reduce_add_ps(acc[i]);
    return sum;
}

float fp32_chains(int64_t rounds) {
    __m512 acc[CHAINS];
    for (int i = 0; i < CHAINS; ++i) acc[i] = _mm512_setzero_ps();
    __m512 x = _mm512_set1_ps(1e-7f);
    for (int64_t r = 0; r < rounds; ++r) {
#pragma GCC unroll 24
        for (int i = 0; i < CHAINS; ++i) acc[i] = _mm512_fmadd_ps(acc[i], x, x);
        __asm__ volatile("" : "+v"(x));
    }
    float sum = 0;
    for (int i = 0; i < CHAINS; ++i) sum += _mm512_reduce_add_ps(acc[i]);
    return sum;
}
}  // namespace

volatile float sink;

extern "C" {
// Runs `rounds` x 24 instructions on each of `threads` threads; returns the FLOP done in all
// (the caller times the call). bf16 != 0: vdpbf16ps, else fp32 FMA.
double peak_flop(int bf16, int64_t rounds, int threads) {
    float total = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
    total += bf16 ? bf16_chains(rounds) : fp32_chains(rounds);
    sink = total;  // the sums are used: the chains are not optimised away
    return double(threads) * double(rounds) * CHAINS * (bf16 ? 64.0 : 32.0);
}
}
