/* Three pieces of the packed ResNet's update as C kernels, for models/resnet/packed.py (which compiles this file once
 * per machine: models/resnet/native.py). Why by hand: each is passes over memory that ATen runs as several
 * kernels with large intermediates; measured on the machines in docs/benchmarks.md.
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
 * 2. The residual block's 3x3 convolution on a 2x2 map as a dense (4C x 4C) matrix per member, gathered from
 *    the (C, C, 3, 3) weight, and the gradient's fold back onto the 9 taps: with ATen an index_select and a
 *    scatter_add over a 16C^2 index, here two streaming loops (a weight row is read or written 4 times, in
 *    cache). Layouts: W (S, C, C, 9), D (S, 4C, 4C) with row co*4 + q and column ci*4 + r.
 * 3. The residual block's elementwise work in training mode, forward and backward: BatchNorm + ReLU after the
 *    first conv, and BatchNorm + residual + ReLU + the global average pool after the second. Through ATen ops
 *    that is some ten kernels per block and direction, each a pass over an (S, C, 4, N) activation; here one
 *    row (a member's channel, 4N values) at a time, in cache. BatchNorm as nn.BatchNorm2d computes it (ATen's
 *    CPU kernel): statistics summed in double, mean and 1/sqrt(var + eps) rounded to the dtype, running
 *    statistics updated in place with the unbiased variance, y = x * alpha + beta. Sums use 8 partial sums
 *    (vectorized without fast-math), so results match ATen's to rounding, not bit for bit. Layouts: rows R = S*C
 *    of L = 4N values, x the conv output, h the block input; weight, bias, running statistics, mean and invstd
 *    (R); pooled (R, N).
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
typedef uint8_t B_##SUFFIX __attribute__((vector_size(32 / sizeof(T))));  /* one byte per lane */            \
enum { LANES_##SUFFIX = 32 / sizeof(T) };                                                                     \
static inline V_##SUFFIX load_##SUFFIX(const T *p) { V_##SUFFIX v; memcpy(&v, p, sizeof v); return v; }       \
static inline void store_##SUFFIX(T *p, V_##SUFFIX v) { memcpy(p, &v, sizeof v); }                           \
static inline V_##SUFFIX select_##SUFFIX(M_##SUFFIX m, V_##SUFFIX a, V_##SUFFIX b) {                          \
    return (V_##SUFFIX)(((M_##SUFFIX)a & m) | ((M_##SUFFIX)b & ~m));                                          \
}
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
        for (int q = 0; q < 4; q++)   /* pooled pixel q reads 36 patch rows: a block of them stays in L1 */    \
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
                            const M up = d == 0 ? ~(M){0} : (v > best) | (v != v);                           \
                            best = select_##SUFFIX(up, v, best);                                              \
                            at = (at & ~up) | (up & d);                                                       \
                        }                                                                                     \
                        store_##SUFFIX(o + n, (V)((M)best & ((best > 0) | (best != best))));                  \
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
                        o[n] = (best > 0 || best != best) ? best : 0;                                         \
                        if (wn) wn[n] = at;                                                                   \
                    }                                                                                         \
                }                                                                                             \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
}                                                                                                             \
                                                                                                              \
/* grad, out, win (S, C, 4, N) -> dW (S, C, 9), dbias (S, C); relu passes the gradient where out > 0. Per image    \
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
                        const V gr = (V)((M)load_##SUFFIX(g + n) & (load_##SUFFIX(o + n) > 0));               \
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

/* tap of the 3x3 kernel that output pixel q = 2a + b reads from input pixel r = 2a' + b' on a 2x2 map */
static const int TAP[4][4] = {{4, 5, 7, 8}, {3, 4, 6, 7}, {1, 2, 4, 5}, {0, 1, 3, 4}};
#define DEFINE_DENSE(T, SUFFIX) \
void block_dense_forward_##SUFFIX(int64_t S, int64_t C, const T *W, T *D) { \
    for (int64_t s = 0; s < S; s++) \
        for (int64_t co = 0; co < C; co++) \
            for (int q = 0; q < 4; q++) { \
                const T *w = W + (s * C + co) * C * 9; \
                T *d = D + ((s * C + co) * 4 + q) * 4 * C; \
                const int t0 = TAP[q][0], t1 = TAP[q][1], t2 = TAP[q][2], t3 = TAP[q][3]; \
                for (int64_t ci = 0; ci < C; ci++) { \
                    d[4 * ci] = w[9 * ci + t0]; d[4 * ci + 1] = w[9 * ci + t1]; \
                    d[4 * ci + 2] = w[9 * ci + t2]; d[4 * ci + 3] = w[9 * ci + t3]; \
                } \
            } \
} \
void block_dense_backward_##SUFFIX(int64_t S, int64_t C, const T *gD, T *gW) { \
    for (int64_t s = 0; s < S; s++) \
        for (int64_t co = 0; co < C; co++) { \
            T *gw = gW + (s * C + co) * C * 9; \
            for (int64_t i = 0; i < C * 9; i++) gw[i] = 0; \
            for (int q = 0; q < 4; q++) { \
                const T *g = gD + ((s * C + co) * 4 + q) * 4 * C; \
                const int t0 = TAP[q][0], t1 = TAP[q][1], t2 = TAP[q][2], t3 = TAP[q][3]; \
                for (int64_t ci = 0; ci < C; ci++) { \
                    gw[9 * ci + t0] += g[4 * ci]; gw[9 * ci + t1] += g[4 * ci + 1]; \
                    gw[9 * ci + t2] += g[4 * ci + 2]; gw[9 * ci + t3] += g[4 * ci + 3]; \
                } \
            } \
        } \
}
DEFINE_DENSE(float, f32)
DEFINE_DENSE(double, f64)

/* Eight partial sums added pairwise: a fixed order, so a row's result does not depend on anything else. */
#define FOLD8(p) ((((p)[0] + (p)[1]) + ((p)[2] + (p)[3])) + (((p)[4] + (p)[5]) + ((p)[6] + (p)[7])))

/* Mean (rounded to T) and the sum of squared deviations from it, in double, of one row of L values. */
#define ROW_STATS(T, x, L, mean_out, sq_out)                                                                   \
    do {                                                                                                      \
        double part_[8] = {0};                                                                                \
        int64_t i_ = 0;                                                                                       \
        for (; i_ + 8 <= (L); i_ += 8)                                                                        \
            for (int j_ = 0; j_ < 8; j_++) part_[j_] += (x)[i_ + j_];                                         \
        double sum_ = FOLD8(part_); \
        for (; i_ < (L); i_++) sum_ += (x)[i_];                                                               \
        const T mean_ = (T)(sum_ / (L));                                                                      \
        for (int j_ = 0; j_ < 8; j_++) part_[j_] = 0;                                                         \
        for (i_ = 0; i_ + 8 <= (L); i_ += 8)                                                                  \
            for (int j_ = 0; j_ < 8; j_++) {                                                                  \
                const double d_ = (x)[i_ + j_] - mean_;                                                       \
                part_[j_] += d_ * d_;                                                                         \
            }                                                                                                 \
        double sq_ = FOLD8(part_); \
        for (; i_ < (L); i_++) {                                                                              \
            const double d_ = (x)[i_] - mean_;                                                                \
            sq_ += d_ * d_;                                                                                   \
        }                                                                                                     \
        (mean_out) = mean_;                                                                                   \
        (sq_out) = sq_;                                                                                       \
    } while (0)

/* One row's batch statistics: saved mean and invstd, running statistics updated, returns alpha and beta. */
#define ROW_NORM(T, x, L, r)                                                                                  \
    T m;                                                                                                      \
    double sq;                                                                                                \
    ROW_STATS(T, x, L, m, sq);                                                                                \
    const T is = (T)(1.0 / sqrt(sq / (L) + eps));                                                             \
    mean[r] = m;                                                                                              \
    invstd[r] = is;                                                                                           \
    rmean[r] = (T)(momentum * m + (1 - momentum) * rmean[r]);                                                 \
    rvar[r] = (T)(momentum * (sq / ((L) - 1)) + (1 - momentum) * rvar[r]);                                    \
    const T alpha = is * w[r], beta = b[r] - m * alpha;

/* BatchNorm's backward for one row whose output gradient dy is already in gx: gx becomes the input gradient. */
#define ROW_NORM_BACKWARD(T, gx, x, L, r)                                                                     \
    do {                                                                                                      \
        const T m = mean[r], is = invstd[r];                                                                  \
        double ps_[8] = {0}, pd_[8] = {0};                                                                    \
        int64_t i_ = 0;                                                                                       \
        for (; i_ + 8 <= (L); i_ += 8)                                                                        \
            for (int j_ = 0; j_ < 8; j_++) {                                                                  \
                ps_[j_] += (gx)[i_ + j_];                                                                     \
                pd_[j_] += (double)((x)[i_ + j_] - m) * (gx)[i_ + j_];                                        \
            }                                                                                                 \
        double sum_ = FOLD8(ps_);      \
        double dot_ = FOLD8(pd_);      \
        for (; i_ < (L); i_++) {                                                                              \
            sum_ += (gx)[i_];                                                                                 \
            dot_ += (double)((x)[i_] - m) * (gx)[i_];                                                         \
        }                                                                                                     \
        const T k_ = (T)(dot_ * is * is / (L)), mean_dy_ = (T)(sum_ / (L)), scale_ = is * w[r];               \
        for (i_ = 0; i_ < (L); i_++) (gx)[i_] = ((gx)[i_] - mean_dy_ - ((x)[i_] - m) * k_) * scale_;          \
        gw[r] = (T)(dot_ * is);                                                                               \
        gb[r] = (T)sum_;                                                                                      \
    } while (0)

#define DEFINE_BLOCK(T, SUFFIX)                                                                               \
/* y = relu(batch_norm(x)) */                                                                                 \
void bn_relu_forward_##SUFFIX(int64_t R, int64_t L, double momentum, double eps, const T *x, const T *w,      \
                              const T *b, T *rmean, T *rvar, T *mean, T *invstd, T *y) {                      \
    for (int64_t r = 0; r < R; r++) {                                                                         \
        const T *xr = x + r * L;                                                                              \
        ROW_NORM(T, xr, L, r)                                                                                 \
        T *yr = y + r * L;                                                                                    \
        for (int64_t i = 0; i < L; i++) {                                                                     \
            const T v = xr[i] * alpha + beta;                                                                 \
            yr[i] = (v > 0 || v != v) ? v : 0;                                                                \
        }                                                                                                     \
    }                                                                                                         \
}                                                                                                             \
/* gy, y -> gx, gw, gb: relu passes the gradient where y > 0 */                                               \
void bn_relu_backward_##SUFFIX(int64_t R, int64_t L, const T *gy, const T *y, const T *x, const T *w,         \
                               const T *mean, const T *invstd, T *gx, T *gw, T *gb) {                         \
    for (int64_t r = 0; r < R; r++) {                                                                         \
        const T *g = gy + r * L, *yr = y + r * L, *xr = x + r * L;                                            \
        T *gxr = gx + r * L;                                                                                  \
        for (int64_t i = 0; i < L; i++) gxr[i] = yr[i] > 0 ? g[i] : 0;                                        \
        ROW_NORM_BACKWARD(T, gxr, xr, L, r);                                                                  \
    }                                                                                                         \
}                                                                                                             \
/* pooled[r, n] = mean over the 4 pixels q of relu(h + batch_norm(x)), rows of (4, N) */                     \
void block_tail_forward_##SUFFIX(int64_t R, int64_t N, double momentum, double eps, const T *x, const T *h,   \
                                 const T *w, const T *b, T *rmean, T *rvar, T *mean, T *invstd, T *pooled) {  \
    const int64_t L = 4 * N;                                                                                  \
    for (int64_t r = 0; r < R; r++) {                                                                         \
        const T *xr = x + r * L, *hr = h + r * L;                                                             \
        ROW_NORM(T, xr, L, r)                                                                                 \
        T *pr = pooled + r * N;                                                                               \
        for (int64_t n = 0; n < N; n++) {                                                                     \
            T total = 0;                                                                                      \
            for (int q = 0; q < 4; q++) {                                                                     \
                const T v = hr[q * N + n] + (xr[q * N + n] * alpha + beta);                                   \
                total += (v > 0 || v != v) ? v : 0;                                                           \
            }                                                                                                 \
            pr[n] = total / 4;                                                                                \
        }                                                                                                     \
    }                                                                                                         \
}                                                                                                             \
/* gpooled -> gx (through the BatchNorm), gh (the residual), gw, gb; relu passes where h + bn(x) > 0 */      \
void block_tail_backward_##SUFFIX(int64_t R, int64_t N, const T *gp, const T *x, const T *h, const T *w,      \
                                  const T *b, const T *mean, const T *invstd, T *gx, T *gh, T *gw, T *gb) {   \
    const int64_t L = 4 * N;                                                                                  \
    for (int64_t r = 0; r < R; r++) {                                                                         \
        const T *xr = x + r * L, *hr = h + r * L, *g = gp + r * N;                                            \
        T *gxr = gx + r * L, *ghr = gh + r * L;                                                               \
        const T alpha = invstd[r] * w[r], beta = b[r] - mean[r] * alpha;                                      \
        for (int q = 0; q < 4; q++)                                                                           \
            for (int64_t n = 0; n < N; n++) {                                                                 \
                const int64_t i = q * N + n;                                                                  \
                const T v = hr[i] + (xr[i] * alpha + beta);                                                   \
                ghr[i] = gxr[i] = v > 0 ? g[n] / 4 : 0;                                                       \
            }                                                                                                 \
        ROW_NORM_BACKWARD(T, gxr, xr, L, r);                                                                  \
    }                                                                                                         \
}
DEFINE_BLOCK(float, f32)
DEFINE_BLOCK(double, f64)
