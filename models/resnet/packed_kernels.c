/* Three pieces of the packed ResNet's update (and of its evaluation) as C kernels, for models/resnet/packed.py
 * (which compiles this file once per machine: models/resnet/native.py). Why by hand: each is passes over memory
 * that ATen runs as several kernels with large intermediates; measured on the machines in docs/benchmarks.md.
 *
 * 1. The stem's tail, relu(max_pool2d(bias + W @ patches, 2)) per member and channel, and its backward. Through
 *    ATen ops this is a product writing the largest activation (S, C, 16, N), a max-pool reading it and saving
 *    int64 indices, then a zero fill, a scatter and a copy of it in the backward. Here a member's output is
 *    computed window by window from the patches, only the pooled values and a one-byte winner per window are
 *    written, and the loops run pooled pixel by pooled pixel (each reads 36 of the 144 patch rows, which a block
 *    of 64 images keeps in L1) and, in the backward, 16 channels at a time over those rows. IEEE arithmetic
 *    throughout (no fast-math, no FMA contraction), as ATen: the winner is
 *    the first maximum in window order and a NaN wins, exactly as max_pool2d picks it, and relu keeps a NaN.
 *    Layouts (all contiguous): W (S, C, 9) folded stem weight, bias (S, C), P (G, 9, 16, N) im2col patches
 *    with G = S or 1 (shared by all members), pixel p = 4i + j of the 4x4 stem output; out (S, C, 4, N)
 *    pooled pixel q = 2a + b; win (S, C, 4, N) the window slot d = 2di + dj of the winner, or NULL when no
 *    backward follows.
 * 2. The residual block's 3x3 convolutions on 2x2 maps by Winograd's F(2, 3) on both axes: 9 (C x C) products per
 *    member (torch.bmm) instead of 16, with the transforms of the weight, the input and the products here, one
 *    streaming loop each (details at DEFINE_WINOGRAD). Layouts: W (S, C, C, 9), A (S, 9, C, C), x and y
 *    (S, C, 4, ld) pixel q = 2a + b, u and m (S, 9, C, ld).
 * 3. The residual block's elementwise work in training mode, forward and backward: BatchNorm + ReLU after the
 *    first conv, and BatchNorm + residual + ReLU + the global average pool after the second. Through ATen ops
 *    that is some ten kernels per block and direction, each a pass over an (S, C, 4, N) activation; here one
 *    row (a member's channel, 4N values) at a time, in cache. BatchNorm as nn.BatchNorm2d computes it (ATen's
 *    CPU kernel): statistics summed in double, mean and 1/sqrt(var + eps) rounded to the dtype, running
 *    statistics updated in place with the unbiased variance, y = x * alpha + beta. Sums use 8 partial sums (two
 *    4-lane vectors), so results match ATen's to rounding, not bit for bit. Layouts: rows R = S*C
 *    of L = 4N values, x the conv output, h the block input; weight, bias, running statistics, mean and invstd
 *    (R); pooled (R, N). The same two forwards in eval mode (the running statistics, no backward), for the
 *    evaluations, where ATen's BatchNorm, add, ReLU and mean passes over the whole train and test halves took
 *    about a quarter of each evaluation at C=64.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLK 64
#define CGROUP 16

/* stem pixel 4i + j of window slot d = 2di + dj of pooled pixel q = 2a + b: i = 2a + di, j = 2b + dj */
static const int PIXEL[4][4] = {{0, 2, 8, 10}, {1, 3, 9, 11}, {4, 6, 12, 14}, {5, 7, 13, 15}};

/* The stem kernels run on 32-byte vectors (8 floats or 4 doubles) written with GCC's vector extensions (clang has
 * them too), so that the 9 weights and each output's partial sum stay in registers: gcc does not find that
 * blocking in plain loops, which kept a partial sum per image in memory and ran at a quarter of this speed. An
 * operation on a vector is the same IEEE operation on each lane, so a lane computes what the scalar tail loop
 * computes for one image. Comparisons give lanes of all ones or zeros, used as masks. */
#define DEFINE_VECTOR(T, IT, SUFFIX)                                                                          \
typedef T V_##SUFFIX __attribute__((vector_size(32)));                                                        \
typedef IT M_##SUFFIX __attribute__((vector_size(32)));                                                       \
typedef uint8_t B_##SUFFIX __attribute__((vector_size(32 / sizeof(T))));  /* one byte per lane */             \
enum { LANES_##SUFFIX = 32 / sizeof(T) };                                                                     \
static inline V_##SUFFIX load_##SUFFIX(const T *p) { V_##SUFFIX v; memcpy(&v, p, sizeof v); return v; }       \
static inline void store_##SUFFIX(T *p, V_##SUFFIX v) { memcpy(p, &v, sizeof v); }                            \
static inline V_##SUFFIX select_##SUFFIX(M_##SUFFIX m, V_##SUFFIX a, V_##SUFFIX b) {                          \
    return (V_##SUFFIX)(((M_##SUFFIX)a & m) | ((M_##SUFFIX)b & ~m));                                          \
}                                                                                                             \
/* v where keep's lane is all ones, else +0 */                                                                \
static inline V_##SUFFIX where_##SUFFIX(M_##SUFFIX keep, V_##SUFFIX v) { return (V_##SUFFIX)((M_##SUFFIX)v & keep); } \
/* relu that keeps a NaN, as torch's does */                                                                  \
static inline T relu_##SUFFIX(T v) { return (v > 0 || v != v) ? v : 0; }                                      \
static inline V_##SUFFIX vrelu_##SUFFIX(V_##SUFFIX v) { return where_##SUFFIX((v > 0) | (v != v), v); }
DEFINE_VECTOR(float, int32_t, f32)
DEFINE_VECTOR(double, int64_t, f64)

#define DEFINE(T, SUFFIX)                                                                                     \
void stem_pool_forward_##SUFFIX(int64_t S, int64_t G, int64_t C, int64_t N, const T *W, const T *bias,        \
                                const T *P, T *out, uint8_t *win) {                                           \
    typedef V_##SUFFIX V;                                                                                     \
    typedef M_##SUFFIX M;                                                                                     \
    enum { L = LANES_##SUFFIX };                                                                              \
    for (int64_t s = 0; s < S; s++) {                                                                         \
        const T *p = P + (G > 1 ? s : 0) * 144 * N;                                                           \
        for (int q = 0; q < 4; q++)   /* pooled pixel q reads 36 patch rows: a block of them stays in L1 */   \
        for (int64_t n0 = 0; n0 < N; n0 += BLK) {                                                             \
            const int64_t n1 = N - n0 < BLK ? N : n0 + BLK;                                                   \
            for (int64_t c = 0; c < C; c++) {                                                                 \
                const T *w = W + (s * C + c) * 9;                                                             \
                const T b = bias[s * C + c];                                                                  \
                V wv[9];                                                                                      \
                for (int k = 0; k < 9; k++) wv[k] = (V){0} + w[k];                                            \
                {                                                                                             \
                    T *o = out + ((s * C + c) * 4 + q) * N;                                                   \
                    uint8_t *wn = win ? win + ((s * C + c) * 4 + q) * N : 0;                                  \
                    int64_t n = n0;                                                                           \
                    for (; n + L <= n1; n += L) {                                                             \
                        V best = {0};                                                                         \
                        M at = {0};                                                                           \
                        for (int d = 0; d < 4; d++) {                                                         \
                            const T *pd = p + PIXEL[d][q] * N + n;                                            \
                            V acc = wv[0] * load_##SUFFIX(pd);                                                \
                            for (int k = 1; k < 9; k++) acc += wv[k] * load_##SUFFIX(pd + k * 16 * N);        \
                            const V v = acc + b;                                                              \
                            const M up = d == 0 ? ~(M){0} : (v > best) | (v != v);                            \
                            best = select_##SUFFIX(up, v, best);                                              \
                            at = (at & ~up) | (up & d);                                                       \
                        }                                                                                     \
                        store_##SUFFIX(o + n, vrelu_##SUFFIX(best));                                          \
                        if (wn) {                                                                             \
                            const B_##SUFFIX bytes = __builtin_convertvector(at, B_##SUFFIX);                 \
                            memcpy(wn + n, &bytes, sizeof bytes);                                             \
                        }                                                                                     \
                    }                                                                                         \
                    for (; n < n1; n++) {                                                                     \
                        T best = 0;                                                                           \
                        uint8_t at = 0;                                                                       \
                        for (int d = 0; d < 4; d++) {                                                         \
                            const T *pd = p + PIXEL[d][q] * N + n;                                            \
                            T acc = w[0] * pd[0];                                                             \
                            for (int k = 1; k < 9; k++) acc += w[k] * pd[k * 16 * N];                         \
                            const T v = acc + b;                                                              \
                            const int up = d == 0 || (v > best) | (v != v);                                   \
                            best = up ? v : best;                                                             \
                            at = up ? (uint8_t)d : at;                                                        \
                        }                                                                                     \
                        o[n] = relu_##SUFFIX(best);                                                           \
                        if (wn) wn[n] = at;                                                                   \
                    }                                                                                         \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
}                                                                                                             \
                                                                                                              \
/* grad, out, win (S, C, 4, N) -> dW (S, C, 9), dbias (S, C); relu passes the gradient where out > 0. Per image \
 * only the winning slot's patch gets the gradient: the other slots add masked zeros (the patches are finite). */ \
void stem_pool_backward_##SUFFIX(int64_t S, int64_t G, int64_t C, int64_t N, const T *grad, const T *out,     \
                                 const uint8_t *win, const T *P, T *dW, T *dbias) {                           \
    typedef V_##SUFFIX V;                                                                                     \
    typedef M_##SUFFIX M;                                                                                     \
    enum { L = LANES_##SUFFIX };                                                                              \
    V acc[CGROUP][10];     /* per channel of a group: the 9 weight gradients' lanes, then the bias's */       \
    T tail[CGROUP][10];    /* the same for images past the last full vector */                                \
    for (int64_t s = 0; s < S; s++) {                                                                         \
        const T *p = P + (G > 1 ? s : 0) * 144 * N;                                                           \
        for (int64_t c0 = 0; c0 < C; c0 += CGROUP) {                                                          \
            const int64_t cn = C - c0 < CGROUP ? C - c0 : CGROUP;                                             \
            for (int64_t j = 0; j < cn; j++)                                                                  \
                for (int k = 0; k < 10; k++) {                                                                \
                    acc[j][k] = (V){0};                                                                       \
                    tail[j][k] = 0;                                                                           \
                }                                                                                             \
            for (int q = 0; q < 4; q++)   /* the group's channels read the same 36 patch rows of q */         \
                for (int64_t j = 0; j < cn; j++) {                                                            \
                    const int64_t base = ((s * C + c0 + j) * 4 + q) * N;                                      \
                    const T *g = grad + base, *o = out + base;                                                \
                    const uint8_t *wn = win + base;                                                           \
                    V a[10];                                                                                  \
                    for (int k = 0; k < 10; k++) a[k] = acc[j][k];                                            \
                    int64_t n = 0;                                                                            \
                    for (; n + L <= N; n += L) {                                                              \
                        const V gr = where_##SUFFIX(load_##SUFFIX(o + n) > 0, load_##SUFFIX(g + n));          \
                        a[9] += gr;                                                                           \
                        B_##SUFFIX bytes;                                                                     \
                        memcpy(&bytes, wn + n, sizeof bytes);                                                 \
                        const M slot = __builtin_convertvector(bytes, M);                                     \
                        for (int d = 0; d < 4; d++) {                                                         \
                            const V gs = (V)((M)gr & (slot == d));                                            \
                            const T *pd = p + PIXEL[d][q] * N + n;                                            \
                            for (int k = 0; k < 9; k++) a[k] += gs * load_##SUFFIX(pd + k * 16 * N);          \
                        }                                                                                     \
                    }                                                                                         \
                    for (int k = 0; k < 10; k++) acc[j][k] = a[k];                                            \
                    for (; n < N; n++) {                                                                      \
                        const T gr = o[n] > 0 ? g[n] : 0;                                                     \
                        tail[j][9] += gr;                                                                     \
                        const T *pd = p + PIXEL[wn[n]][q] * N + n;                                            \
                        for (int k = 0; k < 9; k++) tail[j][k] += gr * pd[k * 16 * N];                        \
                    }                                                                                         \
                }                                                                                             \
            for (int64_t j = 0; j < cn; j++)                                                                  \
                for (int k = 0; k < 10; k++) {                                                                \
                    T total = 0;                                                                              \
                    for (int l = 0; l < L; l++) total += acc[j][k][l];                                        \
                    total += tail[j][k];                                                                      \
                    if (k < 9) dW[(s * C + c0 + j) * 9 + k] = total;                                          \
                    else dbias[s * C + c0 + j] = total;                                                       \
                }                                                                                             \
        }                                                                                                     \
    }                                                                                                         \
}

DEFINE(float, f32)
DEFINE(double, f64)

/* The block convs by Winograd's minimal filtering, F(2, 3) along each axis of the 2x2 map. Along one axis a
 * 3-tap conv with padding 1 on 2 pixels is y0 = K1 x0 + K2 x1, y1 = K0 x0 + K1 x1 (K the taps' (C x C)
 * matrices): 4 products, but with m0 = (K0 - K1) x0, m1 = (K2 - K1) x1, m2 = K1 (x0 + x1) it is y0 = m1 + m2,
 * y1 = m0 + m2, 3 products. Both axes: 9 (C x C) @ (C x N) products per member instead of the 16 of one dense
 * (4C x 4C) matrix, 9/16 of the arithmetic. Around the products (torch.bmm in packed.py), these kernels
 * transform: the weight W (S, C, C, 9) to A (S, 9, C, C), A[3i + j] = T_i(rows) T_j(columns) of the taps with
 * T = (K0 - K1, K2 - K1, K1); the input x (S, C, 4, ldx) to u (S, 9, C, ldu), u[3i + j] = X_i(rows) X_j(columns)
 * of the pixels with X = (x0, x1, x0 + x1); the products m (S, 9, C, ldm) to y (S, C, 4, ldy) by y0 = m1 + m2,
 * y1 = m0 + m2 along columns, then rows. The backward runs the same kernels: the products' gradient is the input
 * transform of the output gradient with both axes flipped (pixel 3 - q), the input's gradient the output
 * transform of the products' input gradient written flipped, and the weight's gradient the transpose of the
 * weight transform. Each output block is written by one loop (the 9 blocks of u lie C*ld values apart, and 9
 * interleaved write streams at such strides ran 9x slower, aliased in L1), and the weight's 9 blocks go through
 * a 64-value buffer. Sums in a fixed order, so a member's values depend on nothing else. */
#define DEFINE_WINOGRAD(T, SUFFIX)                                                                            \
void winograd_weight_##SUFFIX(int64_t S, int64_t C, const T *W, T *A) {                                       \
    const int64_t E = C * C;                                                                                  \
    T buffer[9][64];                                                                                          \
    for (int64_t s = 0; s < S; s++)                                                                           \
        for (int64_t e0 = 0; e0 < E; e0 += 64) {                                                              \
            const int64_t ne = E - e0 < 64 ? E - e0 : 64;                                                     \
            const T *w = W + (s * E + e0) * 9;                                                                \
            for (int64_t e = 0; e < ne; e++, w += 9) {                                                        \
                T c[3][3];  /* c[ky][j]: the column transform of row ky's taps */                             \
                for (int ky = 0; ky < 3; ky++) {                                                              \
                    c[ky][0] = w[3 * ky] - w[3 * ky + 1];                                                     \
                    c[ky][1] = w[3 * ky + 2] - w[3 * ky + 1];                                                 \
                    c[ky][2] = w[3 * ky + 1];                                                                 \
                }                                                                                             \
                for (int j = 0; j < 3; j++) {                                                                 \
                    buffer[j][e] = c[0][j] - c[1][j];                                                         \
                    buffer[3 + j][e] = c[2][j] - c[1][j];                                                     \
                    buffer[6 + j][e] = c[1][j];                                                               \
                }                                                                                             \
            }                                                                                                 \
            for (int k = 0; k < 9; k++) memcpy(A + (s * 9 + k) * E + e0, buffer[k], ne * sizeof(T));         \
        }                                                                                                     \
}                                                                                                             \
void winograd_weight_backward_##SUFFIX(int64_t S, int64_t C, const T *gA, T *gW) {                            \
    const int64_t E = C * C;                                                                                  \
    T buffer[9][64];                                                                                          \
    for (int64_t s = 0; s < S; s++)                                                                           \
        for (int64_t e0 = 0; e0 < E; e0 += 64) {                                                              \
            const int64_t ne = E - e0 < 64 ? E - e0 : 64;                                                     \
            for (int k = 0; k < 9; k++) memcpy(buffer[k], gA + (s * 9 + k) * E + e0, ne * sizeof(T));         \
            T *g = gW + (s * E + e0) * 9;                                                                     \
            for (int64_t e = 0; e < ne; e++, g += 9) {                                                        \
                T r[3][3];  /* r[ky][j]: the rows' transpose transform of column j */                         \
                for (int j = 0; j < 3; j++) {                                                                 \
                    r[0][j] = buffer[j][e];                                                                   \
                    r[1][j] = (buffer[6 + j][e] - buffer[j][e]) - buffer[3 + j][e];                           \
                    r[2][j] = buffer[3 + j][e];                                                               \
                }                                                                                             \
                for (int ky = 0; ky < 3; ky++) {                                                              \
                    g[3 * ky] = r[ky][0];                                                                     \
                    g[3 * ky + 1] = (r[ky][2] - r[ky][0]) - r[ky][1];                                         \
                    g[3 * ky + 2] = r[ky][1];                                                                 \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
}                                                                                                             \
void winograd_input_##SUFFIX(int64_t S, int64_t C, int64_t N, int64_t ldx, int64_t ldu, const T *x, T *u,     \
                             int64_t flip) {                                                                  \
    for (int64_t s = 0; s < S; s++)                                                                           \
        for (int k = 0; k < 9; k++) {                                                                         \
            const int i = k / 3, j = k % 3;                                                                   \
            for (int64_t c = 0; c < C; c++) {                                                                 \
                const T *p = x + (s * C + c) * 4 * ldx;                                                       \
                const T *x00 = p + (flip ? 3 : 0) * ldx, *x01 = p + (flip ? 2 : 1) * ldx;                     \
                const T *x10 = p + (flip ? 1 : 2) * ldx, *x11 = p + (flip ? 0 : 3) * ldx;                     \
                const T *a = i == 1 ? x10 : x00, *b = i == 1 ? x11 : x01;  /* row i's pixels, rows 0 and 1 */ \
                T *o = u + ((s * 9 + k) * C + c) * ldu;                                                       \
                if (i < 2 && j == 0) for (int64_t n = 0; n < N; n++) o[n] = a[n];                             \
                else if (i < 2 && j == 1) for (int64_t n = 0; n < N; n++) o[n] = b[n];                        \
                else if (i < 2) for (int64_t n = 0; n < N; n++) o[n] = a[n] + b[n];                           \
                else if (j == 0) for (int64_t n = 0; n < N; n++) o[n] = x00[n] + x10[n];                      \
                else if (j == 1) for (int64_t n = 0; n < N; n++) o[n] = x01[n] + x11[n];                      \
                else for (int64_t n = 0; n < N; n++) o[n] = (x00[n] + x10[n]) + (x01[n] + x11[n]);            \
            }                                                                                                 \
        }                                                                                                     \
}                                                                                                             \
void winograd_output_##SUFFIX(int64_t S, int64_t C, int64_t N, int64_t ldm, int64_t ldy, const T *m, T *y,    \
                              int64_t flip) {                                                                 \
    for (int64_t s = 0; s < S; s++)                                                                           \
        for (int64_t c = 0; c < C; c++) {                                                                     \
            const T *q[9];                                                                                    \
            for (int k = 0; k < 9; k++) q[k] = m + ((s * 9 + k) * C + c) * ldm;                               \
            T *p = y + (s * C + c) * 4 * ldy;                                                                 \
            T *y00 = p + (flip ? 3 : 0) * ldy, *y01 = p + (flip ? 2 : 1) * ldy;                               \
            T *y10 = p + (flip ? 1 : 2) * ldy, *y11 = p + (flip ? 0 : 3) * ldy;                               \
            for (int64_t n = 0; n < N; n++) {                                                                 \
                const T z00 = q[1][n] + q[2][n], z01 = q[0][n] + q[2][n];  /* z[i][b]: over columns */        \
                const T z10 = q[4][n] + q[5][n], z11 = q[3][n] + q[5][n];                                     \
                const T z20 = q[7][n] + q[8][n], z21 = q[6][n] + q[8][n];                                     \
                y00[n] = z10 + z20;                                                                           \
                y01[n] = z11 + z21;                                                                           \
                y10[n] = z00 + z20;                                                                           \
                y11[n] = z01 + z21;                                                                           \
            }                                                                                                 \
        }                                                                                                     \
}
DEFINE_WINOGRAD(float, f32)
DEFINE_WINOGRAD(double, f64)

/* Eight partial sums added pairwise: a fixed order, so a row's result does not depend on anything else. */
#define FOLD8(p) ((((p)[0] + (p)[1]) + ((p)[2] + (p)[3])) + (((p)[4] + (p)[5]) + ((p)[6] + (p)[7])))

/* The block kernels run on GCC's vector extensions: gcc left these loops scalar (some 6 cycles a value), since it
 * cannot reorder a sum without fast-math. Sums are in double, as ATen's CPU BatchNorm sums: 8 partial sums as
 * two 4-lane double vectors fed by 4-value loads (widened for float), partial sum j taking values i = j mod 8;
 * elementwise passes on the stem's 32-byte vectors V; values in the dtype. Only vectors of up to 32 bytes: built
 * for AVX2, 64-byte ones made the forward kernels 5x slower. Each lane does the IEEE operations the scalar tail
 * does for one value, so the bits do not depend on the instruction set. */
typedef double D4 __attribute__((vector_size(32)));
typedef float F4 __attribute__((vector_size(16)));
#ifdef __AVX__
#include <immintrin.h>
/* gcc 12 lowers __builtin_convertvector of 4 floats to 4 doubles as two 2-lane conversions and an insert */
static inline D4 to_d4_float(F4 v) { return (D4)_mm256_cvtps_pd((__m128)v); }
#else
static inline D4 to_d4_float(F4 v) { return __builtin_convertvector(v, D4); }
#endif
static inline D4 to_d4_double(D4 v) { return v; }
#define TO_D4(v) _Generic((v), F4: to_d4_float, D4: to_d4_double)(v)

#define DEFINE_ROWS(T, IT, SUFFIX)                                                                            \
typedef T Q_##SUFFIX __attribute__((vector_size(4 * sizeof(T))));                                             \
static inline D4 wide_##SUFFIX(const T *p) {                                                                  \
    Q_##SUFFIX v;                                                                                             \
    memcpy(&v, p, sizeof v);                                                                                  \
    return TO_D4(v);                                                                                          \
}                                                                                                             \
/* the 4 values at p less m, in T, then widened */                                                            \
static inline D4 wide_less_##SUFFIX(const T *p, T m) {                                                        \
    Q_##SUFFIX v;                                                                                             \
    memcpy(&v, p, sizeof v);                                                                                  \
    return TO_D4(v - m);                                                                                      \
}                                                                                                             \
static inline double fold_##SUFFIX(D4 lo, D4 hi) {                                                            \
    const double p[8] = {lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]};                             \
    return FOLD8(p);                                                                                          \
}                                                                                                             \
/* Mean (rounded to T) and the sum of squared deviations from it, in double, of each of NR rows of L values (rows \
 * x, x + L, ...): NR = 2 runs two rows' sums side by side, which a row's latency-bound chains leave room for. */ \
static inline __attribute__((always_inline)) void rows_stats_##SUFFIX(const T *x, int64_t L, const int NR,    \
                                                                      T *mean_out, double *sq_out) {          \
    D4 lo[2] = {{0}}, hi[2] = {{0}};                                                                          \
    int64_t i = 0;                                                                                            \
    for (; i + 8 <= L; i += 8)                                                                                \
        for (int j = 0; j < NR; j++) {                                                                        \
            lo[j] += wide_##SUFFIX(x + j * L + i);                                                            \
            hi[j] += wide_##SUFFIX(x + j * L + i + 4);                                                        \
        }                                                                                                     \
    T mean[2];                                                                                                \
    for (int j = 0; j < NR; j++) {                                                                            \
        double sum = fold_##SUFFIX(lo[j], hi[j]);                                                             \
        for (int64_t t = i; t < L; t++) sum += x[j * L + t];                                                  \
        mean[j] = (T)(sum / L);                                                                               \
        lo[j] = hi[j] = (D4){0};                                                                              \
    }                                                                                                         \
    for (i = 0; i + 8 <= L; i += 8)                                                                           \
        for (int j = 0; j < NR; j++) {                                                                        \
            const D4 a = wide_less_##SUFFIX(x + j * L + i, mean[j]);                                          \
            const D4 b = wide_less_##SUFFIX(x + j * L + i + 4, mean[j]);                                      \
            lo[j] += a * a;                                                                                   \
            hi[j] += b * b;                                                                                   \
        }                                                                                                     \
    for (int j = 0; j < NR; j++) {                                                                            \
        double sq = fold_##SUFFIX(lo[j], hi[j]);                                                              \
        for (int64_t t = i; t < L; t++) {                                                                     \
            const double d = x[j * L + t] - mean[j];                                                          \
            sq += d * d;                                                                                      \
        }                                                                                                     \
        mean_out[j] = mean[j];                                                                                \
        sq_out[j] = sq;                                                                                       \
    }                                                                                                         \
}                                                                                                             \
/* y = x * alpha + beta, through relu when relu is set */                                                     \
static inline void row_affine_##SUFFIX(const T *x, int64_t L, T alpha, T beta, int relu, T *y) {              \
    int64_t i = 0;                                                                                            \
    for (; i + LANES_##SUFFIX <= L; i += LANES_##SUFFIX) {                                                    \
        const V_##SUFFIX v = load_##SUFFIX(x + i) * alpha + beta;                                             \
        store_##SUFFIX(y + i, relu ? vrelu_##SUFFIX(v) : v);                                                  \
    }                                                                                                         \
    for (; i < L; i++) {                                                                                      \
        const T v = x[i] * alpha + beta;                                                                      \
        y[i] = relu ? relu_##SUFFIX(v) : v;                                                                   \
    }                                                                                                         \
}                                                                                                             \
/* BatchNorm's backward for one row whose output gradient dy is already in gx: gx becomes the input gradient; \
 * returns the weight and bias gradients in *gw, *gb. */                                                      \
static inline void row_norm_backward_##SUFFIX(T *gx, const T *x, int64_t L, T m, T is, T w, T *gw, T *gb) {   \
    D4 s_lo = {0}, s_hi = {0}, d_lo = {0}, d_hi = {0};                                                        \
    int64_t i = 0;                                                                                            \
    for (; i + 8 <= L; i += 8) {                                                                              \
        const D4 g_lo = wide_##SUFFIX(gx + i), g_hi = wide_##SUFFIX(gx + i + 4);                              \
        s_lo += g_lo;                                                                                         \
        s_hi += g_hi;                                                                                         \
        d_lo += wide_less_##SUFFIX(x + i, m) * g_lo;                                                          \
        d_hi += wide_less_##SUFFIX(x + i + 4, m) * g_hi;                                                      \
    }                                                                                                         \
    double sum = fold_##SUFFIX(s_lo, s_hi), dot = fold_##SUFFIX(d_lo, d_hi);                                  \
    for (; i < L; i++) {                                                                                      \
        sum += gx[i];                                                                                         \
        dot += (double)(x[i] - m) * gx[i];                                                                    \
    }                                                                                                         \
    const T k = (T)(dot * is * is / L), mean_dy = (T)(sum / L), scale = is * w;                               \
    for (i = 0; i + LANES_##SUFFIX <= L; i += LANES_##SUFFIX) {                                               \
        const V_##SUFFIX g = load_##SUFFIX(gx + i), d = load_##SUFFIX(x + i) - m;                             \
        store_##SUFFIX(gx + i, (g - mean_dy - d * k) * scale);                                                \
    }                                                                                                         \
    for (; i < L; i++) gx[i] = (gx[i] - mean_dy - (x[i] - m) * k) * scale;                                    \
    *gw = (T)(dot * is);                                                                                      \
    *gb = (T)sum;                                                                                             \
}
DEFINE_ROWS(float, int32_t, f32)
DEFINE_ROWS(double, int64_t, f64)

/* Rows r and r + 1 (only r when it is the last): their batch statistics m[j], sq[j]. */
#define ROW_PAIR_STATS(SUFFIX, x, L, r, m, sq)                                                                \
    if (R - (r) >= 2)                                                                                         \
        rows_stats_##SUFFIX(x, L, 2, m, sq);                                                                  \
    else                                                                                                      \
        rows_stats_##SUFFIX(x, L, 1, m, sq);

/* Row r's saved mean and invstd and its running statistics from its m and sq; declares alpha and beta. */
#define ROW_NORM(T, m, sq, L, r)                                                                              \
    const T is = (T)(1.0 / sqrt((sq) / (L) + eps));                                                           \
    mean[r] = (m);                                                                                            \
    invstd[r] = is;                                                                                           \
    rmean[r] = (T)(momentum * (m) + (1 - momentum) * rmean[r]);                                               \
    rvar[r] = (T)(momentum * ((sq) / ((L) - 1)) + (1 - momentum) * rvar[r]);                                  \
    const T alpha = is * w[r], beta = b[r] - (m) * alpha;

/* Eval mode: row r's alpha and beta from the running statistics, as ATen's CPU kernel computes them in the dtype:
 * 1 / sqrt(running_var + eps), times the weight. */
#define RUNNING_NORM(T, r)                                                                                    \
    const T alpha = (T)1 / (T)sqrt(rvar[r] + (T)eps) * w[r], beta = b[r] - rmean[r] * alpha;

/* One row's pooled[n] = mean over the 4 pixels q of relu(h + (x * alpha + beta)): x, h rows of (4, N). */
#define TAIL_ROW(T, SUFFIX, xr, hr, N, alpha, beta, pr)                                                       \
    {                                                                                                         \
        int64_t n = 0;                                                                                        \
        for (; n + LANES_##SUFFIX <= (N); n += LANES_##SUFFIX) {                                              \
            V_##SUFFIX total = {0};                                                                           \
            for (int q = 0; q < 4; q++)                                                                       \
                total += vrelu_##SUFFIX(load_##SUFFIX((hr) + q * (N) + n)                                     \
                                        + (load_##SUFFIX((xr) + q * (N) + n) * (alpha) + (beta)));            \
            store_##SUFFIX((pr) + n, total / 4);                                                              \
        }                                                                                                     \
        for (; n < (N); n++) {                                                                                \
            T total = 0;                                                                                      \
            for (int q = 0; q < 4; q++)                                                                       \
                total += relu_##SUFFIX((hr)[q * (N) + n] + ((xr)[q * (N) + n] * (alpha) + (beta)));           \
            (pr)[n] = total / 4;                                                                              \
        }                                                                                                     \
    }

#define DEFINE_BLOCK(T, SUFFIX)                                                                               \
/* y = relu(batch_norm(x)) */                                                                                 \
void bn_relu_forward_##SUFFIX(int64_t R, int64_t L, double momentum, double eps, const T *x, const T *w,      \
                              const T *b, T *rmean, T *rvar, T *mean, T *invstd, T *y) {                      \
    for (int64_t r0 = 0; r0 < R; r0 += 2) {                                                                   \
        T m[2];                                                                                               \
        double sq[2];                                                                                         \
        ROW_PAIR_STATS(SUFFIX, x + r0 * L, L, r0, m, sq)                                                      \
        for (int64_t r = r0; r < R && r < r0 + 2; r++) {                                                      \
            ROW_NORM(T, m[r - r0], sq[r - r0], L, r)                                                          \
            row_affine_##SUFFIX(x + r * L, L, alpha, beta, 1, y + r * L);                                     \
        }                                                                                                     \
    }                                                                                                         \
}                                                                                                             \
/* gy, y -> gx, gw, gb: relu passes the gradient where y > 0 */                                               \
void bn_relu_backward_##SUFFIX(int64_t R, int64_t L, const T *gy, const T *y, const T *x, const T *w,         \
                               const T *mean, const T *invstd, T *gx, T *gw, T *gb) {                         \
    for (int64_t r = 0; r < R; r++) {                                                                         \
        const T *g = gy + r * L, *yr = y + r * L;                                                             \
        T *gxr = gx + r * L;                                                                                  \
        int64_t i = 0;                                                                                        \
        for (; i + LANES_##SUFFIX <= L; i += LANES_##SUFFIX) {                                                \
            const V_##SUFFIX v = load_##SUFFIX(yr + i);                                                       \
            store_##SUFFIX(gxr + i, where_##SUFFIX(v > 0, load_##SUFFIX(g + i)));                             \
        }                                                                                                     \
        for (; i < L; i++) gxr[i] = yr[i] > 0 ? g[i] : 0;                                                     \
        row_norm_backward_##SUFFIX(gxr, x + r * L, L, mean[r], invstd[r], w[r], gw + r, gb + r);              \
    }                                                                                                         \
}                                                                                                             \
/* pooled[r, n] = mean over the 4 pixels q of relu(h + batch_norm(x)), rows of (4, N) */                      \
void block_tail_forward_##SUFFIX(int64_t R, int64_t N, double momentum, double eps, const T *x, const T *h,   \
                                 const T *w, const T *b, T *rmean, T *rvar, T *mean, T *invstd, T *pooled) {  \
    const int64_t L = 4 * N;                                                                                  \
    for (int64_t r0 = 0; r0 < R; r0 += 2) {                                                                   \
        T m[2];                                                                                               \
        double sq[2];                                                                                         \
        ROW_PAIR_STATS(SUFFIX, x + r0 * L, L, r0, m, sq)                                                      \
        for (int64_t r = r0; r < R && r < r0 + 2; r++) {                                                      \
            ROW_NORM(T, m[r - r0], sq[r - r0], L, r)                                                          \
            TAIL_ROW(T, SUFFIX, x + r * L, h + r * L, N, alpha, beta, pooled + r * N)                         \
        }                                                                                                     \
    }                                                                                                         \
}                                                                                                             \
/* Eval mode, forward only: BatchNorm with the running statistics (RUNNING_NORM), which stay as they are */      \
void bn_relu_eval_##SUFFIX(int64_t R, int64_t L, double eps, const T *x, const T *w, const T *b,              \
                           const T *rmean, const T *rvar, T *y) {                                             \
    for (int64_t r = 0; r < R; r++) {                                                                         \
        RUNNING_NORM(T, r)                                                                                    \
        row_affine_##SUFFIX(x + r * L, L, alpha, beta, 1, y + r * L);                                         \
    }                                                                                                         \
}                                                                                                             \
void block_tail_eval_##SUFFIX(int64_t R, int64_t N, double eps, const T *x, const T *h, const T *w,          \
                              const T *b, const T *rmean, const T *rvar, T *pooled) {                         \
    for (int64_t r = 0; r < R; r++) {                                                                         \
        RUNNING_NORM(T, r)                                                                                    \
        TAIL_ROW(T, SUFFIX, x + r * 4 * N, h + r * 4 * N, N, alpha, beta, pooled + r * N)                     \
    }                                                                                                         \
}                                                                                                             \
/* gpooled -> gx (through the BatchNorm), gh (the residual), gw, gb; relu passes where h + bn(x) > 0 */       \
void block_tail_backward_##SUFFIX(int64_t R, int64_t N, const T *gp, const T *x, const T *h, const T *w,      \
                                  const T *b, const T *mean, const T *invstd, T *gx, T *gh, T *gw, T *gb) {   \
    const int64_t L = 4 * N;                                                                                  \
    for (int64_t r = 0; r < R; r++) {                                                                         \
        const T *xr = x + r * L, *hr = h + r * L, *g = gp + r * N;                                            \
        T *gxr = gx + r * L, *ghr = gh + r * L;                                                               \
        const T alpha = invstd[r] * w[r], beta = b[r] - mean[r] * alpha;                                      \
        for (int q = 0; q < 4; q++) {                                                                         \
            const int64_t o = q * N;                                                                          \
            int64_t n = 0;                                                                                    \
            for (; n + LANES_##SUFFIX <= N; n += LANES_##SUFFIX) {                                            \
                const V_##SUFFIX v = load_##SUFFIX(hr + o + n) + (load_##SUFFIX(xr + o + n) * alpha + beta);  \
                const V_##SUFFIX d = where_##SUFFIX(v > 0, load_##SUFFIX(g + n) / 4);                         \
                store_##SUFFIX(gxr + o + n, d);                                                               \
                store_##SUFFIX(ghr + o + n, d);                                                               \
            }                                                                                                 \
            for (; n < N; n++) {                                                                              \
                const T v = hr[o + n] + (xr[o + n] * alpha + beta);                                           \
                ghr[o + n] = gxr[o + n] = v > 0 ? g[n] / 4 : 0;                                               \
            }                                                                                                 \
        }                                                                                                     \
        row_norm_backward_##SUFFIX(gxr, xr, L, mean[r], invstd[r], w[r], gw + r, gb + r);                     \
    }                                                                                                         \
}
DEFINE_BLOCK(float, f32)
DEFINE_BLOCK(double, f64)
