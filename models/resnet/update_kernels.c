/* One whole SGD update of a narrow packed ResNet in one call: forward, loss, backward and the step of every member,
 * for PackedResNet.sgd_update (models/resnet/packed.py). models/resnet/native.py builds this file, which includes
 * packed_kernels.c: one library, whose kernels this update calls.
 *
 * Why by hand: at narrow widths (C <= 16, native.ONE_CALL_MAX_C) the update's arithmetic is small, and through
 * autograd it is some 150 ATen ops, five Python autograd Functions and a pass of autograd's engine: 2.1-2.4 ms per
 * update of a pack of 10 at C = 1-4, nearly all of it fixed costs, 0.4-0.7 ms here (docs/benchmarks.md). This is
 * the same computation as PackedResNet's training forward and its backward: the same kernels for the stem's tail,
 * the Winograd transforms and the block's BatchNorms, with the glue that runs as ATen ops there written as loops
 * here: the stem BatchNorm's statistics from the patch moments and their fold into the stem weight, the Winograd
 * products, the fc layer, the mean cross-entropy and the SGD step, and the analytic backward of each. IEEE
 * arithmetic without FMA contraction (ISO C), sums in a fixed order per member: a member's numbers do not depend
 * on the pack it is in.
 *
 * Layouts (contiguous; member s after member s - 1): images (65, I) the I training images as columns, pixel row 64
 * zero (StemInputs.pixels); moments (I, 90) each image's stem patch moments (StemInputs.moments, per image);
 * labels (I); idx (S, N) each member's minibatch; taps (9, 16) the stem's im2col rows of images
 * (_stem_patch_index); stem (S, C, 9), conv1 and conv2 (S, C, C, 9), fc_w (S, K, C), fc_b (S, K); BatchNorm
 * weights, biases and running statistics (S, C) of the stem, bn1 and bn2, their num_batches_tracked (S); loss (S)
 * each member's minibatch loss, out. Returns 0, or -1 (nothing updated) where its scratch memory could not be had.
 */
#include "packed_kernels.c"

#include <stdlib.h>

#define EXP_f32 expf
#define LOG_f32 logf
#define EXP_f64 exp
#define LOG_f64 log

#define DEFINE_UPDATE(T, SUFFIX)                                                                              \
/* a . b over n values: lane partial sums folded in lane order, then the tail */                             \
static inline T dot_##SUFFIX(const T *a, const T *b, int64_t n) {                                             \
    V_##SUFFIX acc = {0};                                                                                     \
    int64_t i = 0;                                                                                            \
    for (; i + LANES_##SUFFIX <= n; i += LANES_##SUFFIX) acc += load_##SUFFIX(a + i) * load_##SUFFIX(b + i);  \
    T total = 0;                                                                                              \
    for (int l = 0; l < LANES_##SUFFIX; l++) total += acc[l];                                                 \
    for (; i < n; i++) total += a[i] * b[i];                                                                  \
    return total;                                                                                             \
}                                                                                                             \
/* out[n] = sum over j < J, in order, of a[j * stride] * x[j * N + n]: a row of a small matrix product */       \
static inline void combine_##SUFFIX(T *out, const T *a, int64_t stride, const T *x, int64_t J, int64_t N) {    \
    memset(out, 0, N * sizeof(T));                                                                            \
    for (int64_t j = 0; j < J; j++) {                                                                         \
        const T w = a[j * stride], *xj = x + j * N;                                                           \
        for (int64_t n = 0; n < N; n++) out[n] += w * xj[n];                                                  \
    }                                                                                                         \
}                                                                                                             \
/* Per Winograd block t: m = A u, (C x C) @ (C x N); A^T u with transpose set */                              \
static void products_##SUFFIX(int64_t C, int64_t N, const T *A, const T *u, T *m, int transpose) {            \
    for (int t = 0; t < 9; t++)                                                                               \
        for (int64_t i = 0; i < C; i++) {                                                                     \
            const T *a = A + t * C * C + (transpose ? i : i * C);                                             \
            combine_##SUFFIX(m + (t * C + i) * N, a, transpose ? C : 1, u + t * C * N, C, N);                 \
        }                                                                                                     \
}                                                                                                             \
/* A block conv on 2x2 maps, x (C, 4, N) -> y, keeping its weight transform A and input transform u */       \
static void conv_forward_##SUFFIX(int64_t C, int64_t N, const T *W, const T *x, T *A, T *u, T *m, T *y) {    \
    winograd_weight_##SUFFIX(1, C, W, A);                                                                     \
    winograd_input_##SUFFIX(1, C, N, N, N, x, u, 0);                                                          \
    products_##SUFFIX(C, N, A, u, m, 0);                                                                      \
    winograd_output_##SUFFIX(1, C, N, N, N, m, y, 0);                                                         \
}                                                                                                             \
/* Its backward, as _NativeBlockConv.backward: gy -> gx and gW; dm, du, dA scratch */                         \
static void conv_backward_##SUFFIX(int64_t C, int64_t N, const T *gy, const T *A, const T *u, T *dm, T *du,  \
                                   T *dA, T *gx, T *gW) {                                                     \
    winograd_input_##SUFFIX(1, C, N, N, N, gy, dm, 1);                                                        \
    products_##SUFFIX(C, N, A, dm, du, 1);                                                                    \
    winograd_output_##SUFFIX(1, C, N, N, N, du, gx, 1);                                                       \
    for (int t = 0; t < 9; t++)                                                                               \
        for (int64_t i = 0; i < C; i++)                                                                       \
            for (int64_t j = 0; j < C; j++)                                                                   \
                dA[(t * C + i) * C + j] = dot_##SUFFIX(dm + (t * C + i) * N, u + (t * C + j) * N, N);         \
    winograd_weight_backward_##SUFFIX(1, C, dA, gW);                                                          \
}                                                                                                             \
/* p += -lr * g over n values, as SGD's step */                                                               \
static inline void step_##SUFFIX(T *p, const T *g, int64_t n, T lr) {                                         \
    for (int64_t i = 0; i < n; i++) p[i] += -lr * g[i];                                                       \
}                                                                                                             \
                                                                                                              \
int sgd_update_##SUFFIX(int64_t S, int64_t C, int64_t N, int64_t K, int64_t I, double lr, double momentum,   \
                        double eps, const T *images, const T *moments, const int64_t *labels,                 \
                        const int64_t *idx, const int64_t *taps, T *stem, T *bn0_w, T *bn0_b, T *bn0_rm,      \
                        T *bn0_rv, T *conv1, T *bn1_w, T *bn1_b, T *bn1_rm, T *bn1_rv, T *conv2, T *bn2_w,    \
                        T *bn2_b, T *bn2_rm, T *bn2_rv, T *fc_w, T *fc_b, int64_t *tracked0,                  \
                        int64_t *tracked1, int64_t *tracked2, T *loss) {                                      \
    const int64_t CN = C * N, W2 = C * C * 9;                                                                 \
    /* one member's scratch, in this order: */                                                                \
    const int64_t sizes[] = {                                                                                 \
        209 * N,                                 /* P: the minibatch's stem patches (9, 16, N), its pixels (65, N) */ \
        4 * CN, 4 * CN, 4 * CN, 4 * CN, CN,                /* h, y1, f, y2, pooled */                         \
        K * N,                                             /* logits, then their gradient */                  \
        9 * CN, 9 * CN, 9 * CN, 9 * CN,                    /* u1, m1, u2, m2 (m1, m2 the backward's dm, du) */ \
        4 * CN, 4 * CN, 4 * CN, 4 * CN, 4 * CN, CN,        /* gradients of y2, h, f, y1, conv1's input, pooled */ \
        9 * C * C, 9 * C * C, 9 * C * C, W2, W2,           /* A1, A2, dA, gradients of conv1, conv2 */        \
        9 * C, 9 * C, 9 * C, K * C, K,                     /* folded stem weight and its gradient, stem's; fc's */ \
        16 * C};                                           /* per-channel values (below) */                   \
    enum { PARTS = sizeof sizes / sizeof *sizes };                                                            \
    int64_t total = 0;                                                                                        \
    for (int i = 0; i < PARTS; i++) total += sizes[i];                                                        \
    T *buffer = malloc(total * sizeof(T)), *part[PARTS];                                                      \
    uint8_t *win = malloc(4 * CN);                                                                            \
    if (!buffer || !win) {  /* nothing updated: the caller raises MemoryError */                              \
        free(buffer);                                                                                         \
        free(win);                                                                                            \
        return -1;                                                                                            \
    }                                                                                                         \
    T *next = buffer;                                                                                         \
    for (int i = 0; i < PARTS; i++) { part[i] = next; next += sizes[i]; }                                     \
    T *P = part[0], *h = part[1], *y1 = part[2], *f = part[3], *y2 = part[4], *pooled = part[5];             \
    T *logits = part[6], *u1 = part[7], *dm = part[8], *u2 = part[9], *du = part[10], *m1 = dm, *m2 = du;    \
    T *g_y2 = part[11], *g_h = part[12], *g_f = part[13], *g_y1 = part[14], *g_x = part[15];                 \
    T *g_pooled = part[16], *A1 = part[17], *A2 = part[18], *dA = part[19], *g_conv1 = part[20];             \
    T *g_conv2 = part[21], *folded = part[22], *g_folded = part[23], *g_stem = part[24], *g_fw = part[25];    \
    T *g_fb = part[26], *pc = part[27];                                                                       \
    T *bias0 = pc, *mean0 = pc + C, *scale0 = pc + 2 * C, *is0 = pc + 3 * C, *var0 = pc + 4 * C;             \
    T *mean1 = pc + 5 * C, *invstd1 = pc + 6 * C, *mean2 = pc + 7 * C, *invstd2 = pc + 8 * C;                \
    T *g_bias0 = pc + 9 * C, *g_bn0_w = pc + 10 * C, *g_bn1_w = pc + 11 * C, *g_bn1_b = pc + 12 * C;         \
    T *g_bn2_w = pc + 13 * C, *g_bn2_b = pc + 14 * C;                                                         \
    const T n16 = (T)(16 * N), unbias = (T)((16.0 * N) / (16.0 * N - 1)), mom = (T)momentum, rate = (T)lr;   \
    for (int64_t s = 0; s < S; s++) {                                                                         \
        const int64_t *ix = idx + s * N;                                                                      \
        T *w0 = stem + s * C * 9, *w1 = conv1 + s * W2, *w2 = conv2 + s * W2;                                 \
        T *fw = fc_w + s * K * C, *fb = fc_b + s * K;                                                         \
        T *g0 = bn0_w + s * C, *b0 = bn0_b + s * C, *rm0 = bn0_rm + s * C, *rv0 = bn0_rv + s * C;             \
        T *g1 = bn1_w + s * C, *b1 = bn1_b + s * C, *g2 = bn2_w + s * C, *b2 = bn2_b + s * C;                 \
        /* the stem's patches and the minibatch's patch moments (sums of multiples of 1/256: exact) */        \
        for (int r = 0; r < 65; r++)  /* the minibatch's pixels, stored after the patches */             \
            for (int64_t n = 0; n < N; n++) P[(144 + r) * N + n] = images[r * I + ix[n]];                     \
        for (int k = 0; k < 144; k++) memcpy(P + k * N, P + (144 + taps[k]) * N, N * sizeof(T));              \
        T sum[90] = {0};                                                                                      \
        for (int64_t n = 0; n < N; n++)                                                                       \
            for (int j = 0; j < 90; j++) sum[j] += moments[ix[n] * 90 + j];                                   \
        T pm[9], cov[81];                                                                                     \
        for (int k = 0; k < 9; k++) pm[k] = sum[81 + k] / n16;                                                \
        for (int k = 0; k < 81; k++) cov[k] = sum[k] / n16 - pm[k / 9] * pm[k % 9];                           \
        /* the stem BatchNorm folded into the stem weight, as PackedResNet._stem */                            \
        for (int64_t c = 0; c < C; c++) {                                                                     \
            const T *w = w0 + c * 9;                                                                          \
            T mean = 0, var = 0;                                                                              \
            for (int k = 0; k < 9; k++) mean += w[k] * pm[k];                                                 \
            for (int j = 0; j < 9; j++) {                                                                     \
                T r = 0;                                                                                      \
                for (int k = 0; k < 9; k++) r += w[k] * cov[k * 9 + j];                                       \
                var += r * w[j];                                                                              \
            }                                                                                                 \
            var0[c] = var;                                                                                    \
            var = var < 0 ? 0 : var;                                                                          \
            rm0[c] += mom * (mean - rm0[c]);                                                                  \
            rv0[c] += mom * (var * unbias - rv0[c]);                                                          \
            is0[c] = (T)1 / (T)sqrt(var + (T)eps);                                                            \
            scale0[c] = g0[c] * is0[c];                                                                       \
            mean0[c] = mean;                                                                                  \
            bias0[c] = b0[c] - mean * scale0[c];                                                              \
            for (int k = 0; k < 9; k++) folded[c * 9 + k] = w[k] * scale0[c];                                 \
        }                                                                                                     \
        /* forward */                                                                                         \
        stem_pool_forward_##SUFFIX(1, 1, C, N, folded, bias0, P, h, win);                                     \
        conv_forward_##SUFFIX(C, N, w1, h, A1, u1, m1, y1);                                                   \
        bn_relu_forward_##SUFFIX(C, 4 * N, momentum, eps, y1, g1, b1, bn1_rm + s * C, bn1_rv + s * C, mean1,  \
                                 invstd1, f);                                                                 \
        conv_forward_##SUFFIX(C, N, w2, f, A2, u2, m2, y2);                                                   \
        block_tail_forward_##SUFFIX(C, N, momentum, eps, y2, h, g2, b2, bn2_rm + s * C, bn2_rv + s * C,       \
                                    mean2, invstd2, pooled);                                                  \
        for (int64_t k = 0; k < K; k++) {                                                                     \
            combine_##SUFFIX(logits + k * N, fw + k * C, 1, pooled, C, N);                                    \
            for (int64_t n = 0; n < N; n++) logits[k * N + n] += fb[k];                                       \
        }                                                                                                     \
        /* mean cross-entropy, and its gradient (softmax - one-hot) / N in place of the logits */            \
        double total_loss = 0;                                                                                \
        T e[K];                                                                                               \
        for (int64_t n = 0; n < N; n++) {                                                                     \
            T top = logits[n];                                                                                \
            for (int64_t k = 1; k < K; k++) top = logits[k * N + n] > top ? logits[k * N + n] : top;          \
            T z = 0;                                                                                          \
            for (int64_t k = 0; k < K; k++) z += (e[k] = EXP_##SUFFIX(logits[k * N + n] - top));              \
            const int64_t y = labels[ix[n]];                                                                  \
            total_loss += (top + LOG_##SUFFIX(z)) - logits[y * N + n];                                        \
            for (int64_t k = 0; k < K; k++) logits[k * N + n] = (e[k] / z - (k == y ? 1 : 0)) / (T)N;         \
        }                                                                                                     \
        loss[s] = (T)(total_loss / N);                                                                        \
        /* backward */                                                                                        \
        const T *g_logits = logits;                                                                           \
        for (int64_t k = 0; k < K; k++) {                                                                     \
            T b = 0;                                                                                          \
            for (int64_t n = 0; n < N; n++) b += g_logits[k * N + n];                                         \
            g_fb[k] = b;                                                                                      \
            for (int64_t c = 0; c < C; c++) g_fw[k * C + c] = dot_##SUFFIX(g_logits + k * N, pooled + c * N, N); \
        }                                                                                                     \
        for (int64_t c = 0; c < C; c++) combine_##SUFFIX(g_pooled + c * N, fw + c, C, g_logits, K, N);        \
        block_tail_backward_##SUFFIX(C, N, g_pooled, y2, h, g2, b2, mean2, invstd2, g_y2, g_h, g_bn2_w,       \
                                     g_bn2_b);                                                                \
        conv_backward_##SUFFIX(C, N, g_y2, A2, u2, dm, du, dA, g_f, g_conv2);                                 \
        bn_relu_backward_##SUFFIX(C, 4 * N, g_f, f, y1, g1, mean1, invstd1, g_y1, g_bn1_w, g_bn1_b);          \
        conv_backward_##SUFFIX(C, N, g_y1, A1, u1, dm, du, dA, g_x, g_conv1);                                 \
        for (int64_t i = 0; i < 4 * CN; i++) g_h[i] += g_x[i];                                                \
        stem_pool_backward_##SUFFIX(1, 1, C, N, g_h, h, win, P, g_folded, g_bias0);                           \
        /* the fold's backward: through scale = gamma / sqrt(var + eps), bias = beta - mean * scale */        \
        for (int64_t c = 0; c < C; c++) {                                                                     \
            const T *w = w0 + c * 9, *gF = g_folded + c * 9;                                                  \
            T g_scale = 0;                                                                                    \
            for (int k = 0; k < 9; k++) g_scale += gF[k] * w[k];                                              \
            g_scale -= g_bias0[c] * mean0[c];                                                                 \
            const T g_mean = -g_bias0[c] * scale0[c];                                                         \
            const T is = is0[c];                                                                              \
            const T g_var = var0[c] >= 0 ? g_scale * g0[c] * ((T)-0.5 * is * is * is) : 0;                   \
            g_bn0_w[c] = g_scale * is;                                                                        \
            for (int k = 0; k < 9; k++) {                                                                     \
                T quad = 0; /* (cov + cov^T) w, row k */                                                      \
                for (int j = 0; j < 9; j++) quad += (cov[k * 9 + j] + cov[j * 9 + k]) * w[j];                 \
                g_stem[c * 9 + k] = gF[k] * scale0[c] + g_mean * pm[k] + g_var * quad;                        \
            }                                                                                                 \
        }                                                                                                     \
        /* SGD's step on every parameter, BatchNorm's batch counters */                                       \
        step_##SUFFIX(w0, g_stem, 9 * C, rate);                                                               \
        step_##SUFFIX(g0, g_bn0_w, C, rate);                                                                  \
        step_##SUFFIX(b0, g_bias0, C, rate);                                                                  \
        step_##SUFFIX(w1, g_conv1, W2, rate);                                                                 \
        step_##SUFFIX(g1, g_bn1_w, C, rate);                                                                  \
        step_##SUFFIX(b1, g_bn1_b, C, rate);                                                                  \
        step_##SUFFIX(w2, g_conv2, W2, rate);                                                                 \
        step_##SUFFIX(g2, g_bn2_w, C, rate);                                                                  \
        step_##SUFFIX(b2, g_bn2_b, C, rate);                                                                  \
        step_##SUFFIX(fw, g_fw, K * C, rate);                                                                 \
        step_##SUFFIX(fb, g_fb, K, rate);                                                                     \
        tracked0[s]++;                                                                                        \
        tracked1[s]++;                                                                                        \
        tracked2[s]++;                                                                                        \
    }                                                                                                         \
    free(buffer);                                                                                             \
    free(win);                                                                                                \
    return 0;                                                                                                 \
}
DEFINE_UPDATE(float, f32)
DEFINE_UPDATE(double, f64)
