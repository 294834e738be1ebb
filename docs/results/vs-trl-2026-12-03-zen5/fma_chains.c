/* One core's FMA rate by independent chains, AVX2 (16 ymm registers) against AVX-512 (32 zmm): every chain
 * summed into the result, so none is dead code. gcc -O3 -o chains fma_chains.c && ./chains */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define DEF(C)                                                                                                    \
__attribute__((target("avx2,fma"))) float f256_##C(long n) {                                                     \
    __m256 a[C], b = _mm256_set1_ps(0.999f), c = _mm256_set1_ps(1e-4f);                                          \
    for (int i = 0; i < C; i++) a[i] = _mm256_set1_ps(i * 1e-3f);                                                \
    for (long k = 0; k < n; k++) for (int i = 0; i < C; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);                 \
    __m256 s = a[0]; for (int i = 1; i < C; i++) s = _mm256_add_ps(s, a[i]);                                      \
    float o[8]; _mm256_storeu_ps(o, s); return o[0];                                                              \
}                                                                                                                 \
__attribute__((target("avx512f"))) float f512_##C(long n) {                                                      \
    __m512 a[C], b = _mm512_set1_ps(0.999f), c = _mm512_set1_ps(1e-4f);                                          \
    for (int i = 0; i < C; i++) a[i] = _mm512_set1_ps(i * 1e-3f);                                                \
    for (long k = 0; k < n; k++) for (int i = 0; i < C; i++) a[i] = _mm512_fmadd_ps(a[i], b, c);                 \
    __m512 s = a[0]; for (int i = 1; i < C; i++) s = _mm512_add_ps(s, a[i]);                                      \
    return _mm512_reduce_add_ps(s);                                                                               \
}
DEF(4) DEF(8) DEF(12) DEF(16) DEF(24)
#define RUN(C) { long n = 400000000 / C; double t = now(); float x = f256_##C(n); double t1 = now() - t;          \
    t = now(); float y = f512_##C(n); double t2 = now() - t;                                                      \
    printf("%2d chains: AVX2 %6.1f  AVX-512 %6.1f GFLOP/s (%g %g)\n", C, n * C * 16.0 / t1 / 1e9,               \
           n * C * 32.0 / t2 / 1e9, x, y); }
int main(void) { for (int r = 0; r < 2; r++) { RUN(4) RUN(8) RUN(12) RUN(16) RUN(24) } return 0; }
