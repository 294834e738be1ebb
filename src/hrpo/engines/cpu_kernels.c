/* hrpo's CPU kernels for a decode step in fp32: the product of a few rows with a weight matrix,
 * y (M, N) = x (M, K) W (N, K)^T + bias (hrpo_linear), every decoder layer of one step and then its logits in one
 * call (hrpo_decode_layers), sampling's passes over the vocabulary: top-k and the log-sum-exp (hrpo_topk_lse), and
 * the whole draw (hrpo_topk_sample), and the hybrid step's latent, gate mix and input (hrpo_topk_latent,
 * hrpo_gated_mix, hrpo_gate_inputs).
 *
 * A decode step multiplies a handful of rows by every weight of the model once, so it is bound by how fast the
 * weights stream from memory. Each thread walks a contiguous range of W's rows (output columns), two at a time
 * against four rows of x (eight accumulators, vectorised along K), then against the next four rows while the two
 * weight rows are still in L1; it prefetches W PREFETCH floats ahead, further than the hardware prefetcher goes,
 * spread over both passes so that the stream never pauses. (One weight row against all eight rows of x in one
 * pass, which loads a vector of x for every FMA, streamed each product 1-19% slower on an AMD EPYC, the down
 * projection most: its eight rows of x, 48 KB, do not fit in L1.)
 * In the decode step a thread that finishes its range early takes chunks from the end of the others'
 * (linear_taken), so a core slowed by the host does not hold the step at its barriers.
 *
 * Built by hrpo/engines/native.py with the system C compiler; it links the OpenMP runtime torch has loaded, so
 * its threads are torch's. isa: 2 = AVX2 + FMA (also on AVX-512 CPUs: an AVX-512 version of the same loop
 * streamed the weights 7-20% slower on an AMD EPYC), anything else = plain C, which the compiler vectorises
 * for the baseline of its target.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 8          /* rows of x per pass over a weight row */
#define PREFETCH 2048   /* floats (8 KB) ahead in W */
#define COLUMNS 16      /* a thread's share of N is a multiple of this */
#define AHEAD 16        /* values prefetched this many cache slots ahead (keys: the product's own PREFETCH) */

#define INLINE static inline __attribute__((always_inline))
#define AVX2 __attribute__((target("avx2,fma")))

/* [start, end) of part `part` of `parts` over n items, in multiples of `align` */
INLINE void share(int64_t n, int64_t align, int part, int parts, int64_t *start, int64_t *end) {
    int64_t blocks = (n + align - 1) / align;
    *start = blocks * part / parts * align;
    *end = blocks * (part + 1) / parts * align;
    if (*end > n) *end = n;
    if (*start > n) *start = n;
}

/* y[r * N] = sums[r] + the products of k >= k0 (the tail that no vector covered) + bias, for r < rows */
INLINE void finish(const float *x, int64_t K, int64_t k0, const float *w, const float *sums, int rows, float bias,
                   float *y, int64_t N) {
    for (int r = 0; r < rows; r++) {
        float s = sums[r];
        for (int64_t k = k0; k < K; k++) s += w[k] * x[r * K + k];
        y[r * N] = s + bias;
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
#define HAVE_AVX2 1

/* sums[c * 4 + r] = the dot products over k < K / 8 * 8 of `rows` (<= 4) rows of x with `cols` (<= 2) weight rows
 * w + c K (both constants after inlining): eight lanes along k, then their total as ((l0 + l1) + (l2 + l3)) +
 * ((l4 + l5) + (l6 + l7)). Prefetches `lines` (a constant) cache lines per 16 k, the i-th at ahead + 16 i. */
INLINE AVX2 void tile_avx2(const float *x, const int rows, int64_t K, const float *w, const int cols,
                           const float *ahead, const int lines, float *sums) {
    __m256 acc[2][4];
    for (int c = 0; c < 2; c++)
        for (int r = 0; r < 4; r++) acc[c][r] = _mm256_setzero_ps();
    for (int64_t k = 0; k + 8 <= K; k += 8) {
        if ((k & 15) == 0)
            for (int i = 0; i < lines; i++) __builtin_prefetch(ahead + lines * k + 16 * i, 0, 3);
        __m256 wv[2];
        for (int c = 0; c < cols; c++) wv[c] = _mm256_loadu_ps(w + c * K + k);
        for (int r = 0; r < rows; r++) {
            __m256 xv = _mm256_loadu_ps(x + r * K + k);
            for (int c = 0; c < cols; c++) acc[c][r] = _mm256_fmadd_ps(wv[c], xv, acc[c][r]);
        }
    }
    for (int c = 0; c < cols; c++) {
        __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(acc[c][0], acc[c][1]), _mm256_hadd_ps(acc[c][2], acc[c][3]));
        _mm_storeu_ps(sums + 4 * c, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
    }
}

/* columns n .. n + cols - 1 (cols <= 2) of y for `rows` (<= 8) rows of x (both constants after inlining), in up
 * to two passes of 4 rows, the second finding the weight rows in L1. The prefetches, PREFETCH floats ahead through
 * the next cols weight rows, are shared out between the passes, so that the stream from memory never pauses. */
INLINE AVX2 void block_avx2(const float *x, const int rows, int64_t K, const float *W, const float *bias, float *y,
                            int64_t N, int64_t n, const int cols) {
    const float *w = W + n * K, *ahead = w + PREFETCH;
    int64_t whole = K / 8 * 8;
    const int first = rows > 4 ? 4 : rows, early = rows > 4 ? (cols + 1) / 2 : cols;
    float sums[2 * 4];
    tile_avx2(x, first, K, w, cols, ahead, early, sums);
    for (int c = 0; c < cols; c++)
        finish(x, K, whole, w + c * K, sums + 4 * c, first, bias ? bias[n + c] : 0.0f, y + n + c, N);
    if (rows > 4) {
        tile_avx2(x + 4 * K, rows - 4, K, w, cols, ahead + early * K, cols - early, sums);
        for (int c = 0; c < cols; c++)
            finish(x + 4 * K, K, whole, w + c * K, sums + 4 * c, rows - 4, bias ? bias[n + c] : 0.0f,
                   y + 4 * N + n + c, N);
    }
}

/* columns n0 <= n < n1 of y for `rows` (a constant after inlining) rows of x, two at a time */
INLINE AVX2 void columns_body_avx2(const float *x, const int rows, int64_t K, const float *W, const float *bias,
                                   float *y, int64_t N, int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) block_avx2(x, rows, K, W, bias, y, N, n, 2);
    if (n < n1) block_avx2(x, rows, K, W, bias, y, N, n, 1);
}

#endif

INLINE void columns_body_plain(const float *x, const int rows, int64_t K, const float *W, const float *bias,
                               float *y, int64_t N, int64_t n0, int64_t n1) {
    float zeros[ROWS] = {0};
    for (int64_t n = n0; n < n1; n++) finish(x, K, 0, W + n * K, zeros, rows, bias ? bias[n] : 0.0f, y + n, N);
}

/* columns n0 <= n < n1 of y (M, N) = x (M, K) W^T + bias, in blocks of ROWS rows (each a specialised loop); NAME
 * takes K from DIM: the argument k, or a constant (an attention head's size) that the compiler unrolls for */
#define COLUMNS_DEF(NAME, SUFFIX, TARGET, DIM)                                                                     \
TARGET static void NAME(const float *x, int64_t M, int64_t k, const float *W, const float *bias, float *y,         \
                        int64_t N, int64_t n0, int64_t n1) {                                                      \
    const int64_t K = DIM;                                                                                        \
    (void)k;                                                                                                      \
    for (int64_t r0 = 0; r0 < M; r0 += ROWS) {                                                                    \
        const float *xr = x + r0 * K;                                                                             \
        float *yr = y + r0 * N;                                                                                   \
        switch (M - r0 < ROWS ? M - r0 : ROWS) {                                                                  \
            case 8: columns_body_##SUFFIX(xr, 8, K, W, bias, yr, N, n0, n1); break;                               \
            case 7: columns_body_##SUFFIX(xr, 7, K, W, bias, yr, N, n0, n1); break;                               \
            case 6: columns_body_##SUFFIX(xr, 6, K, W, bias, yr, N, n0, n1); break;                               \
            case 5: columns_body_##SUFFIX(xr, 5, K, W, bias, yr, N, n0, n1); break;                               \
            case 4: columns_body_##SUFFIX(xr, 4, K, W, bias, yr, N, n0, n1); break;                               \
            case 3: columns_body_##SUFFIX(xr, 3, K, W, bias, yr, N, n0, n1); break;                               \
            case 2: columns_body_##SUFFIX(xr, 2, K, W, bias, yr, N, n0, n1); break;                               \
            default: columns_body_##SUFFIX(xr, 1, K, W, bias, yr, N, n0, n1); break;                              \
        }                                                                                                         \
    }                                                                                                             \
}
/* DEF(name, SUFFIX, TARGET, size) for each head size the attention is compiled for: ARG (the argument: any size),
 * 64 and 128, named NAME_SUFFIX, NAME64_SUFFIX and NAME128_SUFFIX; FOR_HEAD_SIZE picks one for a size D */
#define HEAD_SIZES(DEF, NAME, SUFFIX, TARGET, ARG)                                                                 \
    DEF(NAME##_##SUFFIX, SUFFIX, TARGET, ARG)                                                                     \
    DEF(NAME##64_##SUFFIX, SUFFIX, TARGET, 64)                                                                    \
    DEF(NAME##128_##SUFFIX, SUFFIX, TARGET, 128)
#define FOR_HEAD_SIZE(NAME, SUFFIX, D)                                                                             \
    ((D) == 64 ? NAME##64_##SUFFIX : (D) == 128 ? NAME##128_##SUFFIX : NAME##_##SUFFIX)
#ifdef HAVE_AVX2
HEAD_SIZES(COLUMNS_DEF, columns, avx2, AVX2, k)
#endif
HEAD_SIZES(COLUMNS_DEF, columns, plain, , k)

typedef void (*columns_fn)(const float *, int64_t, int64_t, const float *, const float *, float *, int64_t, int64_t,
                           int64_t);

static columns_fn columns_for(int isa) {
#ifdef HAVE_AVX2
    if (isa == 2) return columns_avx2;
#endif
    return columns_plain;
}

/* this thread's share of y (M, N) = x (M, K) W (N, K)^T (+ bias (N,) unless NULL), inside a parallel region */
static void linear_share(columns_fn columns, const float *x, int64_t M, int64_t K, const float *W, const float *bias,
                         float *y, int64_t N) {
    int64_t n0, n1;
    share(N, COLUMNS, omp_get_thread_num(), omp_get_num_threads(), &n0, &n1);
    columns(x, M, K, W, bias, y, N, n0, n1);
}

/* Work that moves to whichever thread is free: items [0, n) split into one contiguous part per thread (as share
 * does); a thread takes its own part's items from the front, then, once that is empty, the other parts' from their
 * backs. So a thread slowed by the host's other tenants leaves its last items to the others instead of making them
 * wait at the next barrier, and each item is still computed the same way. A part's counter (items taken from its
 * front, low 32 bits, and from its back, high 32) sits on a cache line of its own; all start at zero. */
typedef struct { uint64_t taken; char pad[56]; } claims;

/* the next item for thread `part` of `parts` (index in [0, n)), or -1 when every item is taken */
INLINE int64_t take(claims *counters, int64_t n, int part, int parts) {
    for (int i = 0; i < parts; i++) {
        int q = (part + i) % parts;
        int64_t start, end;
        share(n, 1, q, parts, &start, &end);
        uint64_t seen = __atomic_load_n(&counters[q].taken, __ATOMIC_RELAXED);
        for (;;) {
            uint64_t front = seen & 0xffffffffu, back = seen >> 32;
            if ((int64_t)(front + back) >= end - start) break;
            uint64_t next = seen + (i == 0 ? 1u : (uint64_t)1 << 32);
            if (__atomic_compare_exchange_n(&counters[q].taken, &seen, next, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                return i == 0 ? start + (int64_t)front : end - 1 - (int64_t)back;
        }
    }
    return -1;
}

#define CHUNKS 16  /* a thread's part of a product: this many chunks of columns (multiples of COLUMNS) */

/* linear_share, the columns taken in chunks (take) from `counters` (one per thread, zeroed, used once) */
static void linear_taken(columns_fn columns, const float *x, int64_t M, int64_t K, const float *W, const float *bias,
                         float *y, int64_t N, claims *counters) {
    int part = omp_get_thread_num(), parts = omp_get_num_threads();
    int64_t width = (N + (int64_t)parts * CHUNKS - 1) / ((int64_t)parts * CHUNKS);
    width = (width + COLUMNS - 1) / COLUMNS * COLUMNS;
    int64_t chunks = (N + width - 1) / width;
    for (int64_t c; (c = take(counters, chunks, part, parts)) >= 0;)
        columns(x, M, K, W, bias, y, N, c * width, (c + 1) * width < N ? (c + 1) * width : N);
}

/* y (M, N) = x (M, K) @ W (N, K)^T (+ bias (N,) unless NULL); all contiguous fp32. */
void hrpo_linear(const float *x, int64_t M, int64_t K, const float *W, const float *bias, float *y, int64_t N,
                 int isa, int threads) {
    columns_fn columns = columns_for(isa);
    #pragma omp parallel num_threads(threads)
    linear_share(columns, x, M, K, W, bias, y, N);
}

/* ---- One decode step through every decoder layer (Llama family: RMSNorm, RoPE, grouped-query attention,
 * SwiGLU): the math of hrpo/engines/layers.py for one new token per row. ---- */

typedef struct {  /* one layer's tensors; a bias or q/k norm may be NULL */
    const float *input_norm, *post_norm, *q_norm, *k_norm;
    const float *qkv, *qkv_bias, *o, *o_bias, *gate_up, *gate_up_bias, *down, *down_bias;
    float *kv;  /* (2, B, Hkv, L, D): keys, then values */
} hrpo_layer;

typedef struct {
    int64_t batch, hidden, heads, kv_heads, head_dim, intermediate, cache_len;
    float eps, scale;
    int isa, threads;
    /* cache slots [0, prompt_len) hold the same keys and values in each run of rows_per_prompt rows (the rows of
     * one prompt, whose prefill was copied to each): their queries attend over the first row's copy together */
    int64_t rows_per_prompt, prompt_len;
} hrpo_dims;

typedef struct {  /* the step's last part, after the layers: hidden (B, H) = final_norm(x + delta) and logits (B, V)
                   * = hidden lm_head^T, what hrpo/engines/layers.py's last_logits computes */
    const float *final_norm, *lm_head;
    float *hidden, *logits;
    int64_t vocab;
} hrpo_head;

/* e^x to about 2 ulp (Cephes' polynomial in plain arithmetic, so that a simd loop vectorises it); x is clamped
 * to [-87.3, 88.7] */
INLINE float exp_approx(float x) {
    x = x < -87.33654f ? -87.33654f : (x > 88.72283f ? 88.72283f : x);
    float n = floorf(x * 1.44269504088896341f + 0.5f);
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } two_n = { .i = ((int32_t)n + 127) << 23 };
    return p * two_n.f;
}

#ifdef HAVE_AVX2
/* exp_approx on eight lanes */
INLINE AVX2 __m256 exp_approx_avx2(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.33654f)), _mm256_set1_ps(88.72283f));
    __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_add_ps(_mm256_sub_ps(x, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f))),
                             _mm256_mul_ps(n, _mm256_set1_ps(2.12194440e-4f)));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    __m256i two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(two_n));
}
#endif

/* out (n,) = weight * (x / sqrt(mean(x^2) + eps)): transformers' RMSNorm in fp32 (out may be x) */
INLINE void rms_norm(const float *x, const float *weight, float eps, int64_t n, float *out) {
    float squares = 0.0f;
    #pragma omp simd reduction(+:squares)
    for (int64_t i = 0; i < n; i++) squares += x[i] * x[i];
    float inverse = 1.0f / sqrtf(squares / (float)n + eps);
    #pragma omp simd
    for (int64_t i = 0; i < n; i++) out[i] = weight[i] * (x[i] * inverse);
}

/* x (D,) <- x cos + rotate_half(x) sin, rotate_half(x) = (-x[D/2:], x[:D/2]); D <= 512 */
INLINE void rope(float *x, const float *cos, const float *sin, int64_t dim) {
    int64_t half = dim / 2;
    float rotated[512];
    for (int64_t i = 0; i < half; i++) { rotated[i] = -x[half + i]; rotated[half + i] = x[i]; }
    #pragma omp simd
    for (int64_t i = 0; i < dim; i++) x[i] = x[i] * cos[i] + rotated[i] * sin[i];
}

/* scores (group, attend) = q K^T of one (row, KV head) -> softmax(scores * scale) over the slots where valid
 * (0 elsewhere), in place */
INLINE void softmax_rows_plain(float *scores, const uint8_t *valid, int64_t attend, int64_t group, float scale) {
    for (int64_t g = 0; g < group; g++) {
        float *row = scores + g * attend, top = -INFINITY, sum = 0.0f;
        for (int64_t n = 0; n < attend; n++) if (valid[n] && row[n] > top) top = row[n];
        #pragma omp simd reduction(+:sum)
        for (int64_t n = 0; n < attend; n++) {
            row[n] = valid[n] ? exp_approx((row[n] - top) * scale) : 0.0f;
            sum += row[n];
        }
        float inverse = 1.0f / sum;
        #pragma omp simd
        for (int64_t n = 0; n < attend; n++) row[n] *= inverse;
    }
}

/* out (I,) = silu(gate) * up, SwiGLU */
INLINE void swiglu_plain(const float *gate, const float *up, float *out, int64_t I) {
    #pragma omp simd
    for (int64_t i = 0; i < I; i++) out[i] = gate[i] / (1.0f + exp_approx(-gate[i])) * up[i];
}

#ifdef HAVE_AVX2
/* softmax_rows_plain, eight slots at a time (the compilers leave the plain loop's exp scalar) */
INLINE AVX2 void softmax_rows_avx2(float *scores, const uint8_t *valid, int64_t attend, int64_t group,
                                   float scale) {
    int64_t whole = attend / 8 * 8;
    for (int64_t g = 0; g < group; g++) {
        float *row = scores + g * attend, top = -INFINITY, sum = 0.0f;
        __m256 tops = _mm256_set1_ps(-INFINITY), sums = _mm256_setzero_ps();
        for (int64_t n = 0; n < whole; n += 8) {
            __m256 in = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(valid + n))), _mm256_setzero_si256()));
            tops = _mm256_max_ps(tops, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_loadu_ps(row + n), in));
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, tops);
        for (int i = 0; i < 8; i++) top = lanes[i] > top ? lanes[i] : top;
        for (int64_t n = whole; n < attend; n++) if (valid[n] && row[n] > top) top = row[n];
        __m256 shift = _mm256_set1_ps(top), s = _mm256_set1_ps(scale);
        for (int64_t n = 0; n < whole; n += 8) {
            __m256 in = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(valid + n))), _mm256_setzero_si256()));
            __m256 e = exp_approx_avx2(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(row + n), shift), s));
            e = _mm256_and_ps(e, in);
            _mm256_storeu_ps(row + n, e);
            sums = _mm256_add_ps(sums, e);
        }
        _mm256_storeu_ps(lanes, sums);
        for (int i = 0; i < 8; i++) sum += lanes[i];
        for (int64_t n = whole; n < attend; n++) {
            row[n] = valid[n] ? exp_approx((row[n] - top) * scale) : 0.0f;
            sum += row[n];
        }
        __m256 inverse = _mm256_set1_ps(1.0f / sum);
        for (int64_t n = 0; n < whole; n += 8)
            _mm256_storeu_ps(row + n, _mm256_mul_ps(_mm256_loadu_ps(row + n), inverse));
        for (int64_t n = whole; n < attend; n++) row[n] *= 1.0f / sum;
    }
}

INLINE AVX2 void swiglu_avx2(const float *gate, const float *up, float *out, int64_t I) {
    int64_t i = 0;
    for (; i + 8 <= I; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = exp_approx_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0f), e)),
                                                _mm256_loadu_ps(up + i)));
    }
    swiglu_plain(gate + i, up + i, out + i, I - i);
}
#endif

/* out (group, D) = probs (group, attend; row stride `stride`) V (attend, D) */
INLINE void values_plain(const float *probs, int64_t stride, const float *values, int64_t attend, int64_t group,
                         int64_t dim, float *out) {
    for (int64_t g = 0; g < group; g++) {
        float *o = out + g * dim;
        for (int64_t i = 0; i < dim; i++) o[i] = 0.0f;
        for (int64_t n = 0; n < attend; n++) {
            float p = probs[g * stride + n];
            #pragma omp simd
            for (int64_t i = 0; i < dim; i++) o[i] += p * values[n * dim + i];
        }
    }
}

#ifdef HAVE_AVX2
/* out[g * dim + c + 8 j + i] = sum_n probs[g * stride + n] values[n * dim + c + 8 j + i] for g < heads (<= 3),
 * j < chunks (<= 4), i < 8 (heads and chunks constants after inlining): twelve accumulators, each added up over n
 * in order. first: also prefetch each value row AHEAD rows early (later passes find it in cache). */
INLINE AVX2 void values_tile_avx2(const float *probs, int64_t stride, const float *values, int64_t attend,
                                  const int heads, int64_t dim, int64_t c, const int chunks, int first, float *out) {
    __m256 acc[3][4];
    for (int g = 0; g < 3; g++)
        for (int j = 0; j < 4; j++) acc[g][j] = _mm256_setzero_ps();
    for (int64_t n = 0; n < attend; n++) {
        if (first)
            for (int64_t i = 0; i < dim; i += 16) __builtin_prefetch(values + (n + AHEAD) * dim + i, 0, 3);
        __m256 v[4];
        for (int j = 0; j < chunks; j++) v[j] = _mm256_loadu_ps(values + n * dim + c + 8 * j);
        for (int g = 0; g < heads; g++) {
            __m256 p = _mm256_set1_ps(probs[g * stride + n]);
            for (int j = 0; j < chunks; j++) acc[g][j] = _mm256_fmadd_ps(p, v[j], acc[g][j]);
        }
    }
    for (int g = 0; g < heads; g++)
        for (int j = 0; j < chunks; j++) _mm256_storeu_ps(out + g * dim + c + 8 * j, acc[g][j]);
}

/* values_tile_avx2 over `heads` (a constant) heads and all of dim: 32 dimensions a pass, the rest in 8s, the last
 * dim % 8 one by one */
INLINE AVX2 void values_heads_avx2(const float *probs, int64_t stride, const float *values, int64_t attend,
                                   const int heads, int64_t dim, int first, float *out) {
    int64_t c = 0;
    for (; c + 32 <= dim; c += 32, first = 0)
        values_tile_avx2(probs, stride, values, attend, heads, dim, c, 4, first, out);
    switch ((dim - c) / 8) {
        case 3: values_tile_avx2(probs, stride, values, attend, heads, dim, c, 3, first, out); break;
        case 2: values_tile_avx2(probs, stride, values, attend, heads, dim, c, 2, first, out); break;
        case 1: values_tile_avx2(probs, stride, values, attend, heads, dim, c, 1, first, out); break;
        default: break;
    }
    for (c = dim / 8 * 8; c < dim; c++)
        for (int g = 0; g < heads; g++) {
            float o = 0.0f;
            for (int64_t n = 0; n < attend; n++) o += probs[g * stride + n] * values[n * dim + c];
            out[g * dim + c] = o;
        }
}

/* values_plain in tiles of 3 heads x 32 dimensions (the same sums in the same order) */
INLINE AVX2 void values_avx2(const float *probs, int64_t stride, const float *values, int64_t attend, int64_t group,
                             int64_t dim, float *out) {
    for (int64_t g0 = 0; g0 < group; g0 += 3) {
        const float *p = probs + g0 * stride;
        float *o = out + g0 * dim;
        switch (group - g0 < 3 ? group - g0 : 3) {
            case 3: values_heads_avx2(p, stride, values, attend, 3, dim, g0 == 0, o); break;
            case 2: values_heads_avx2(p, stride, values, attend, 2, dim, g0 == 0, o); break;
            default: values_heads_avx2(p, stride, values, attend, 1, dim, g0 == 0, o); break;
        }
    }
}
#endif

typedef void (*values_fn)(const float *, int64_t, const float *, int64_t, int64_t, int64_t, float *);

/* values_SUFFIX with dim DIM: the argument d, or a constant (as for COLUMNS_DEF; instances: HEAD_SIZES) */
#define VALUES_DEF(NAME, SUFFIX, TARGET, DIM)                                                                      \
TARGET static void NAME(const float *probs, int64_t stride, const float *values, int64_t attend, int64_t group,    \
                        int64_t d, float *out) {                                                                  \
    (void)d;                                                                                                      \
    values_##SUFFIX(probs, stride, values, attend, group, DIM, out);                                              \
}
#ifdef HAVE_AVX2
HEAD_SIZES(VALUES_DEF, weighted, avx2, AVX2, d)
#endif
HEAD_SIZES(VALUES_DEF, weighted, plain, , d)
typedef void (*softmax_fn)(float *, const uint8_t *, int64_t, int64_t, float);

typedef struct {  /* one step's inputs and scratch, shared by the threads */
    const hrpo_layer *layers;
    const hrpo_dims *d;
    const hrpo_head *head;  /* NULL: the step ends after the layers */
    float *x, *delta, *h, *qkv, *attn, *gate_up, *act, *scores;
    const float *cos, *sin;
    const uint8_t *valid;
    int64_t valid_stride, slot, attend;
    claims *counters;  /* (n_layers PHASES + 1, threads): one set per product and attention (take) */
} step_args;

/* the keys (values: 1, the values) of (row b, KV head kh) in layer w's cache: (L, D) */
INLINE float *head_cache(const hrpo_layer *w, const hrpo_dims *d, int64_t b, int64_t kh, int values) {
    return w->kv + ((values * d->batch + b) * d->kv_heads + kh) * d->cache_len * d->head_dim;
}

/* scores (count, n; row stride `stride`) of `count` queries (count, D) against `n` keys (n, D): the few-row product
 * with the keys as the weight rows (streamed once per ROWS queries, prefetched ahead) */
INLINE void key_scores(columns_fn columns, const float *keys, int64_t n, int64_t dim, const float *queries,
                       int64_t count, float *scores, int64_t stride) {
    columns(queries, count, dim, keys, NULL, scores, stride, 0, n);
}

/* The rows b0 .. b0 + R - 1 of one prompt at KV head kh: RoPE on their queries and keys, this step's keys and
 * values written at the slot, then attention, the prompt's slots read once (from row b0) for all R rows. work:
 * scratch of R G (2 D + L) + G D floats. */
INLINE void attend_group(const step_args *a, const hrpo_layer *w, columns_fn columns, values_fn weighted,
                         softmax_fn softmax, int64_t b0, int64_t kh, float *work) {
    const hrpo_dims *d = a->d;
    int64_t D = d->head_dim, nh = d->heads, nkv = d->kv_heads, G = nh / nkv, R = d->rows_per_prompt;
    int64_t A = a->attend, P = d->prompt_len < A ? d->prompt_len : A, RG = R * G;
    float *queries = work, *scores = queries + RG * D, *shared = scores + RG * A, *own = shared + RG * D;
    for (int64_t r = 0; r < R; r++) {
        float *row = a->qkv + (b0 + r) * (nh + 2 * nkv) * D, *q = row + kh * G * D, *k = row + (nh + kh) * D;
        const float *c = a->cos + (b0 + r) * D, *s = a->sin + (b0 + r) * D;
        for (int64_t g = 0; g < G; g++) {
            if (w->q_norm) rms_norm(q + g * D, w->q_norm, d->eps, D, q + g * D);
            rope(q + g * D, c, s, D);
        }
        if (w->k_norm) rms_norm(k, w->k_norm, d->eps, D, k);
        rope(k, c, s, D);
        memcpy(head_cache(w, d, b0 + r, kh, 0) + a->slot * D, k, D * sizeof(float));
        memcpy(head_cache(w, d, b0 + r, kh, 1) + a->slot * D, k + nkv * D, D * sizeof(float));
        memcpy(queries + r * G * D, q, G * D * sizeof(float));
    }
    key_scores(columns, head_cache(w, d, b0, kh, 0), P, D, queries, RG, scores, A);  /* the prompt's, once */
    for (int64_t r = 0; r < R; r++) {  /* each row's own slots */
        key_scores(columns, head_cache(w, d, b0 + r, kh, 0) + P * D, A - P, D, queries + r * G * D, G,
                   scores + r * G * A + P, A);
        softmax(scores + r * G * A, a->valid + (b0 + r) * a->valid_stride, A, G, d->scale);
    }
    weighted(scores, A, head_cache(w, d, b0, kh, 1), P, RG, D, shared);
    for (int64_t r = 0; r < R; r++) {
        float *out = a->attn + ((b0 + r) * nh + kh * G) * D;
        weighted(scores + r * G * A + P, A, head_cache(w, d, b0 + r, kh, 1) + P * D, A - P, G, D, own);
        for (int64_t i = 0; i < G * D; i++) out[i] = shared[r * G * D + i] + own[i];
    }
}

/* every layer on this thread's share of each phase; the threads meet at a barrier between phases */
#define PHASES 5  /* a layer's phases that take their work: qkv, attention, o, gate_up, down */
#define COUNTERS(layer, phase) (a->counters + ((layer) * PHASES + (phase)) * parts)  /* the head: (n_layers, 0) */
#define LAYERS_FOR(SUFFIX, TARGET)                                                                                 \
TARGET static void layers_##SUFFIX(const step_args *a, int64_t n_layers) {                                       \
    const hrpo_dims *d = a->d;                                                                                    \
    int64_t B = d->batch, H = d->hidden, D = d->head_dim, nh = d->heads, nkv = d->kv_heads;                       \
    int64_t I = d->intermediate, width = (nh + 2 * nkv) * D, r0, r1;                                      \
    int part = omp_get_thread_num(), parts = omp_get_num_threads();                                               \
    int64_t RG = d->rows_per_prompt * (nh / nkv), groups = B / d->rows_per_prompt;                                \
    float *scratch = a->scores + part * (RG * (2 * D + d->cache_len) + (nh / nkv) * D);                           \
    share(B, 1, part, parts, &r0, &r1);                                                                           \
    /* the attention's products with the head size fixed where it is a common one (2x faster at 64) */          \
    columns_fn keys = FOR_HEAD_SIZE(columns, SUFFIX, D);                                                          \
    values_fn weighted = FOR_HEAD_SIZE(weighted, SUFFIX, D);                                                      \
    for (int64_t l = 0; l < n_layers; l++) {                                                                      \
        const hrpo_layer *w = a->layers + l;                                                                      \
        for (int64_t r = r0; r < r1; r++) {  /* the previous layer's MLP output joins the residual stream */     \
            float *x = a->x + r * H;                                                                              \
            if (l) {                                                                                              \
                _Pragma("omp simd")                                                                               \
                for (int64_t i = 0; i < H; i++) x[i] += a->delta[r * H + i];                                      \
            }                                                                                                     \
            rms_norm(x, w->input_norm, d->eps, H, a->h + r * H);                                                  \
        }                                                                                                         \
        _Pragma("omp barrier")                                                                                    \
        linear_taken(columns_##SUFFIX, a->h, B, H, w->qkv, w->qkv_bias, a->qkv, width, COUNTERS(l, 0));          \
        _Pragma("omp barrier")                                                                                    \
        for (int64_t t; (t = take(COUNTERS(l, 1), groups * nkv, part, parts)) >= 0;)                               \
            attend_group(a, w, keys, weighted, softmax_rows_##SUFFIX, t / nkv * d->rows_per_prompt, t % nkv,       \
                         scratch);                                                                       \
        _Pragma("omp barrier")                                                                                    \
        linear_taken(columns_##SUFFIX, a->attn, B, nh * D, w->o, w->o_bias, a->h, H, COUNTERS(l, 2));             \
        _Pragma("omp barrier")                                                                                    \
        for (int64_t r = r0; r < r1; r++) {                                                                       \
            float *x = a->x + r * H;                                                                              \
            _Pragma("omp simd")                                                                                   \
            for (int64_t i = 0; i < H; i++) x[i] += a->h[r * H + i];                                              \
            rms_norm(x, w->post_norm, d->eps, H, a->h + r * H);                                                   \
        }                                                                                                         \
        _Pragma("omp barrier")                                                                                    \
        linear_taken(columns_##SUFFIX, a->h, B, H, w->gate_up, w->gate_up_bias, a->gate_up, 2 * I, COUNTERS(l, 3));\
        _Pragma("omp barrier")                                                                                    \
        for (int64_t r = r0; r < r1; r++)  /* SwiGLU: silu(gate) * up */                                        \
            swiglu_##SUFFIX(a->gate_up + r * 2 * I, a->gate_up + r * 2 * I + I, a->act + r * I, I);                \
        _Pragma("omp barrier")                                                                                    \
        linear_taken(columns_##SUFFIX, a->act, B, I, w->down, w->down_bias, a->delta, H, COUNTERS(l, 4));         \
        _Pragma("omp barrier")                                                                                    \
    }                                                                                                             \
    if (a->head) {  /* the last hidden state (the last residual add, then the final norm) and the logits */       \
        const hrpo_head *o = a->head;                                                                             \
        for (int64_t r = r0; r < r1; r++) {                                                                       \
            float *sum = a->h + r * H;                                                                            \
            _Pragma("omp simd")                                                                                   \
            for (int64_t i = 0; i < H; i++) sum[i] = a->x[r * H + i] + a->delta[r * H + i];                       \
            rms_norm(sum, o->final_norm, d->eps, H, o->hidden + r * H);                                           \
        }                                                                                                         \
        _Pragma("omp barrier")                                                                                    \
        linear_taken(columns_##SUFFIX, o->hidden, B, H, o->lm_head, NULL, o->logits, o->vocab,                     \
                     COUNTERS(n_layers, 0));                                                                     \
    }                                                                                                             \
}
#ifdef HAVE_AVX2
LAYERS_FOR(avx2, AVX2)
#endif
LAYERS_FOR(plain, )

/* One decode step through n_layers layers. x (B, H): the step's input, left as the residual stream; delta
 * (B, H): left as the last layer's MLP output (their sum is the last hidden state, before the final norm).
 * cos/sin (B, D); valid (B, >= attend) with row stride valid_stride: the cache slots a row may attend to (slot
 * included); this step's keys and values are written at cache slot `slot`. work: scratch of at least
 * B * (H + (Hq + 2 Hkv) D + Hq D + 3 I) + threads * (R (Hq / Hkv) (2 D + L) + (Hq / Hkv) D) floats, R the
 * rows per prompt. head: NULL, or where the step's last hidden state and logits go (see hrpo_head). Returns 0, or
 * -1 when it could not allocate the work counters (nothing computed). */
int hrpo_decode_layers(const hrpo_layer *layers, int64_t n_layers, const hrpo_dims *d, float *x, float *delta,
                        const float *cos, const float *sin, const uint8_t *valid, int64_t valid_stride,
                        int64_t slot, int64_t attend, float *work, const hrpo_head *head) {
    int64_t B = d->batch, H = d->hidden, D = d->head_dim, nh = d->heads, nkv = d->kv_heads, I = d->intermediate;
    step_args a = {.layers = layers, .d = d, .head = head, .x = x, .delta = delta, .cos = cos, .sin = sin,
                   .valid = valid, .valid_stride = valid_stride, .slot = slot, .attend = attend};
    a.h = work;
    a.qkv = a.h + B * H;
    a.attn = a.qkv + B * (nh + 2 * nkv) * D;
    a.gate_up = a.attn + B * nh * D;
    a.act = a.gate_up + B * 2 * I;
    a.scores = a.act + B * I;
    size_t counters = (size_t)(n_layers * PHASES + 1) * d->threads * sizeof(claims);
    a.counters = aligned_alloc(sizeof(claims), counters);
    if (!a.counters) return -1;
    memset(a.counters, 0, counters);
    #pragma omp parallel num_threads(d->threads)
    {
#ifdef HAVE_AVX2
        if (d->isa == 2) layers_avx2(&a, n_layers);
        else
#endif
        layers_plain(&a, n_layers);
    }
    free(a.counters);
    return 0;
}

/* ---- The passes over the whole vocabulary that sampling makes (hrpo/sampling.py sample_tokens): the k largest
 * logits of each row and the row's log-sum-exp at a temperature. ---- */

/* put (value, id) into values/ids[0, *count), sorted by value descending and, among equal values, by id ascending
 * (ids arrive ascending, so a value goes after its equals); when *count == k the last entry drops out */
INLINE void keep(float *values, int64_t *ids, int64_t *count, int64_t k, float value, int64_t id) {
    int64_t i = *count < k ? (*count)++ : k - 1;
    for (; i > 0 && values[i - 1] < value; i--) {
        values[i] = values[i - 1];
        ids[i] = ids[i - 1];
    }
    values[i] = value;
    ids[i] = id;
}

/* the scalar step of the scan: 1 if `value` is NaN, else keeps it if it beats the k-th value kept so far */
INLINE int scan_one(float *values, int64_t *ids, int64_t *count, int64_t k, float value, int64_t id) {
    if (value != value) return 1;
    if (*count < k || value > values[k - 1]) keep(values, ids, count, k, value, id);
    return 0;
}

/* the k (<= V) largest of row (V,) into values/ids (k,), in keep's order; returns 1 if the row holds a NaN */
INLINE int top_plain(const float *row, int64_t V, int64_t k, float *values, int64_t *ids) {
    int64_t count = 0;
    int nan = 0;
    for (int64_t i = 0; i < V; i++) nan |= scan_one(values, ids, &count, k, row[i], i);
    return nan;
}

/* the sum of e^(row[i] scale - top) over the row (top: the largest row[i] scale), in double */
INLINE double sum_exp(const float *row, int64_t V, float scale, float top) {
    double sum = 0.0;
    #pragma omp simd reduction(+:sum)
    for (int64_t i = 0; i < V; i++) sum += (double)exp_approx(row[i] * scale - top);
    return sum;
}

#ifdef HAVE_AVX2
/* top_plain, eight logits at a time against the k-th value kept so far (most blocks hold none that beat it) */
AVX2 static int top_avx2(const float *row, int64_t V, int64_t k, float *values, int64_t *ids) {
    int64_t count = 0, i = 0;
    int nan = 0;
    for (; i < V && count < k; i++) nan |= scan_one(values, ids, &count, k, row[i], i);
    for (; i + 8 <= V; i += 8) {
        __m256 block = _mm256_loadu_ps(row + i);
        __m256 beats = _mm256_or_ps(_mm256_cmp_ps(block, _mm256_set1_ps(values[k - 1]), _CMP_GT_OQ),
                                    _mm256_cmp_ps(block, block, _CMP_UNORD_Q));
        if (_mm256_movemask_ps(beats))
            for (int64_t j = i; j < i + 8; j++) nan |= scan_one(values, ids, &count, k, row[j], j);
    }
    for (; i < V; i++) nan |= scan_one(values, ids, &count, k, row[i], i);
    return nan;
}

/* sum_exp: fp32 sums over blocks of 512 logits (64 per lane), added up in double */
AVX2 static double sum_exp_avx2(const float *row, int64_t V, float scale, float top) {
    __m256d total = _mm256_setzero_pd();
    __m256 s = _mm256_set1_ps(scale), shift = _mm256_set1_ps(top);
    int64_t i = 0;
    for (; i + 512 <= V; i += 512) {
        __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
        for (int64_t j = i; j < i + 512; j += 16) {
            a = _mm256_add_ps(a, exp_approx_avx2(_mm256_fmsub_ps(_mm256_loadu_ps(row + j), s, shift)));
            b = _mm256_add_ps(b, exp_approx_avx2(_mm256_fmsub_ps(_mm256_loadu_ps(row + j + 8), s, shift)));
        }
        __m256 block = _mm256_add_ps(a, b);
        total = _mm256_add_pd(total, _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(block)),
                                                   _mm256_cvtps_pd(_mm256_extractf128_ps(block, 1))));
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, total);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3] + sum_exp(row + i, V - i, scale, top);
}
#endif

/* the k (<= V) largest values of row (V,) and their ids into kept/ids (k,), and its log-sum-exp into *lse (as
 * hrpo_topk_lse describes); returns 1 if the row holds a NaN, 2 if its largest value is infinite (*lse is then
 * that value), else 0 */
INLINE int row_topk_lse(const float *row, int64_t V, int64_t k, float lse_temperature, float *kept, int64_t *ids,
                        float *lse, int isa) {
    int nan;
#ifdef HAVE_AVX2
    if (isa == 2) nan = top_avx2(row, V, k, kept, ids);
    else
#endif
    nan = top_plain(row, V, k, kept, ids);
    float scale = 1.0f / lse_temperature, top = kept[0] * scale;
    if (nan || top == -INFINITY || top == INFINITY) {
        *lse = top;
        return nan ? 1 : 2;
    }
    double sum;
#ifdef HAVE_AVX2
    if (isa == 2) sum = sum_exp_avx2(row, V, scale, top);
    else
#endif
    sum = sum_exp(row, V, scale, top);
    *lse = top + (float)log(sum);
    return 0;
}

/* For each row b of logits (B, V): its k (<= V) largest values and their ids, sorted by value descending and
 * by id ascending among equal values, into values/ids (B, k); and lse[b] = log sum_i e^(logits[b, i] / T) with
 * T = lse_temperature (the logits times 1 / T, e^x to about 2 ulp, fp32 sums of 512 added in double).
 * Returns the number of rows holding a NaN (their outputs are unspecified). */
int64_t hrpo_topk_lse(const float *logits, int64_t B, int64_t V, int64_t k, float lse_temperature, float *values,
                      int64_t *ids, float *lse, int isa, int threads) {
    int64_t nans = 0;
    #pragma omp parallel for num_threads(threads) schedule(static) reduction(+:nans)
    for (int64_t b = 0; b < B; b++)
        nans += row_topk_lse(logits + b * V, V, k, lse_temperature, values + b * k, ids + b * k, lse + b, isa) == 1;
    return nans;
}

/* sample_tokens' draw of one row from its k kept logits `kept` (sorted descending, kept[0] finite), in place:
 * kept <- softmax(kept / T) in fp32 (e^x to about 2 ulp, a logit of -inf gives 0, times 1 / sum as torch's
 * softmax does), its cumulative sums in double rounded to fp32 (as torch.cumsum on a CPU), and the draw: the
 * first kept index whose cumulative sum reaches u times the last one (at most k - 1). Returns the index. */
INLINE int64_t draw_kept(float *kept, int64_t k, float temperature, float u) {
    float top = kept[0] / temperature, sum = 0.0f;
    for (int64_t j = 0; j < k; j++) {
        float z = kept[j] / temperature;
        kept[j] = z == -INFINITY ? 0.0f : exp_approx(z - top);
        sum += kept[j];
    }
    float inverse = 1.0f / sum;
    double total = 0.0;
    for (int64_t j = 0; j < k; j++) total += kept[j] *= inverse;
    float target = u * (float)total;
    double running = 0.0;
    int64_t below = 0;
    for (int64_t j = 0; j < k; j++) below += (float)(running += kept[j]) < target;
    return below < k - 1 ? below : k - 1;
}

/* hrpo_topk_lse and then sample_tokens' draw without top-p (hrpo/sampling.py): for each row b, with uniforms[b]
 * in [0, 1), probs (B, k) = softmax(kept logits / temperature) (draw_kept), ids (B, k) the kept ids, tokens[b]
 * the drawn id and logprobs[b] = logits[b, token] / lse_temperature - lse[b] (fp32 division, as torch's).
 * Returns the number of rows holding a NaN or an infinite largest logit (their outputs are unspecified: the
 * caller then uses torch's ops). */
int64_t hrpo_topk_sample(const float *logits, int64_t B, int64_t V, int64_t k, float temperature,
                         float lse_temperature, const float *uniforms, float *probs, int64_t *ids, int64_t *tokens,
                         float *logprobs, int isa, int threads) {
    int64_t skipped = 0;
    #pragma omp parallel for num_threads(threads) schedule(static) reduction(+:skipped)
    for (int64_t b = 0; b < B; b++) {
        const float *row = logits + b * V;
        float lse;
        if (row_topk_lse(row, V, k, lse_temperature, probs + b * k, ids + b * k, &lse, isa)) {
            skipped++;
            continue;
        }
        int64_t token = ids[b * k + draw_kept(probs + b * k, k, temperature, uniforms[b])];
        tokens[b] = token;
        logprobs[b] = row[token] / lse_temperature - lse;
    }
    return skipped;
}

/* ---- The hybrid step's small ops (hrpo/gate.py): the latent of the kept distribution and the gated mix. ---- */

/* row b of hrpo_topk_latent: o (H,) = sum_j p[j] E[ids[j]] / max(||p||_2, 1e-12) */
INLINE void latent_row_plain(const float *p, const int64_t *ids, int64_t k, const float *E, int64_t H, float *o) {
    float squares = 0.0f;
    for (int64_t i = 0; i < H; i++) o[i] = 0.0f;
    for (int64_t j = 0; j < k; j++) {
        const float *row = E + ids[j] * H, pj = p[j];
        squares += pj * pj;
        #pragma omp simd
        for (int64_t i = 0; i < H; i++) o[i] += pj * row[i];
    }
    float norm = sqrtf(squares);
    norm = norm > 1e-12f ? norm : 1e-12f;
    #pragma omp simd
    for (int64_t i = 0; i < H; i++) o[i] /= norm;
}

#ifdef HAVE_AVX2
/* latent_row_plain eight elements at a time, the next embedding row prefetched while one is added (the rows are
 * scattered over the table: without it each waits for memory) */
AVX2 static void latent_row_avx2(const float *p, const int64_t *ids, int64_t k, const float *E, int64_t H,
                                 float *o) {
    float squares = 0.0f;
    int64_t whole = H / 8 * 8;
    for (int64_t i = 0; i < H; i++) o[i] = 0.0f;
    for (int64_t j = 0; j < k; j++) {
        const float *row = E + ids[j] * H, pj = p[j];
        if (j + 1 < k)
            for (int64_t i = 0; i < H; i += 16) __builtin_prefetch(E + ids[j + 1] * H + i, 0, 3);
        squares += pj * pj;
        __m256 weight = _mm256_set1_ps(pj);
        int64_t i = 0;
        for (; i < whole; i += 8)
            _mm256_storeu_ps(o + i, _mm256_fmadd_ps(weight, _mm256_loadu_ps(row + i), _mm256_loadu_ps(o + i)));
        for (; i < H; i++) o[i] += pj * row[i];
    }
    float norm = sqrtf(squares);
    norm = norm > 1e-12f ? norm : 1e-12f;
    for (int64_t i = 0; i < H; i++) o[i] /= norm;
}
#endif

/* out (B, H) = sum_j probs[b, j] E[ids[b, j]] / max(||probs[b]||_2, 1e-12): topk_latent_embeddings over the
 * embedding rows E (V, H) */
void hrpo_topk_latent(const float *probs, const int64_t *ids, int64_t B, int64_t k, const float *E, int64_t H,
                      float *out, int isa, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t b = 0; b < B; b++) {
#ifdef HAVE_AVX2
        if (isa == 2) latent_row_avx2(probs + b * k, ids + b * k, k, E, H, out + b * H);
        else
#endif
        latent_row_plain(probs + b * k, ids + b * k, k, E, H, out + b * H);
    }
}

/* the mix of one element: a = e^(-decay sigmoid(r)), mixed = a e + sqrt(1 - a^2 + 1e-8) sigmoid(i) h */
INLINE void mix_one(float e, float h, float r, float i, float decay, float *mixed, float *a) {
    float sr = 1.0f / (1.0f + exp_approx(-r)), si = 1.0f / (1.0f + exp_approx(-i));
    float keep = exp_approx(-decay * sr);
    *a = keep;
    *mixed = keep * e + sqrtf(1.0f - keep * keep + 1e-8f) * (si * h);
}

#ifdef HAVE_AVX2
INLINE AVX2 __m256 sigmoid_avx2(__m256 x) {
    __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp_approx_avx2(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

/* mix_one on eight lanes at a time; returns how many elements it did (a multiple of 8) */
AVX2 static int64_t mix_avx2(const float *e, const float *h, const float *r, const float *i, const float *decay,
                             int64_t H, float *mixed, float *a) {
    int64_t n = 0;
    for (; n + 8 <= H; n += 8) {
        __m256 sr = sigmoid_avx2(_mm256_loadu_ps(r + n)), si = sigmoid_avx2(_mm256_loadu_ps(i + n));
        __m256 scaled = _mm256_mul_ps(_mm256_loadu_ps(decay + n), sr);
        __m256 keep = exp_approx_avx2(_mm256_sub_ps(_mm256_setzero_ps(), scaled));
        __m256 rest = _mm256_sqrt_ps(_mm256_add_ps(_mm256_sub_ps(_mm256_set1_ps(1.0f), _mm256_mul_ps(keep, keep)),
                                                   _mm256_set1_ps(1e-8f)));
        __m256 out = _mm256_add_ps(_mm256_mul_ps(keep, _mm256_loadu_ps(e + n)),
                                   _mm256_mul_ps(rest, _mm256_mul_ps(si, _mm256_loadu_ps(h + n))));
        _mm256_storeu_ps(a + n, keep);
        _mm256_storeu_ps(mixed + n, out);
    }
    return n;
}
#endif

/* the hybrid gate's mix (gated_mix) for e, h (B, H) and the gate's pre-activations logits (B, 2H) =
 * [W_r e + b_r | W_i e + b_i], with decay (H,) = c softplus(-Lambda): mixed and a (B, H) */
void hrpo_gated_mix(const float *e, const float *h, const float *logits, const float *decay, int64_t B, int64_t H,
                    float *mixed, float *a, int isa) {
    for (int64_t b = 0; b < B; b++) {
        const float *eb = e + b * H, *hb = h + b * H, *r = logits + b * 2 * H, *i = r + H;
        float *mb = mixed + b * H, *ab = a + b * H;
        int64_t n = 0;
#ifdef HAVE_AVX2
        if (isa == 2) n = mix_avx2(eb, hb, r, i, decay, H, mb, ab);
#endif
        for (; n < H; n++) mix_one(eb[n], hb[n], r[n], i[n], decay[n], mb + n, ab + n);
    }
}

/* the hybrid step's input (hrpo/gate.py mix_inputs) for token embeddings e and latents h (B, H) and thinking (B,):
 * the gate's pre-activations W e + bias (W (2H, H), hrpo_linear's products) into work (B, 3H), where thinking[b]
 * inputs[b] = the mix of hrpo_gated_mix and mean_a[b] = the mean of its a over H (a sum in fp32), elsewhere
 * inputs[b] = e[b] and mean_a[b] = 1 */
void hrpo_gate_inputs(const float *e, const float *h, const uint8_t *thinking, const float *W, const float *bias,
                      const float *decay, int64_t B, int64_t H, float *work, float *inputs, float *mean_a, int isa,
                      int threads) {
    float *logits = work, *a = work + B * 2 * H;
    hrpo_linear(e, B, H, W, bias, logits, 2 * H, isa, threads);
    for (int64_t b = 0; b < B; b++) {
        if (!thinking[b]) {
            memcpy(inputs + b * H, e + b * H, (size_t)H * sizeof(float));
            mean_a[b] = 1.0f;
            continue;
        }
        hrpo_gated_mix(e + b * H, h + b * H, logits + b * 2 * H, decay, 1, H, inputs + b * H, a + b * H, isa);
        float sum = 0.0f;
        for (int64_t n = 0; n < H; n++) sum += a[b * H + n];
        mean_a[b] = sum / (float)H;
    }
}
