// tfkd's own CUDA kernels (built with `--features cuda` by build.rs through
// nvcc into PTX, loaded by `cuda.rs`). Each computes what its CPU twin in
// tfkd-core computes, with the same rule for ties and NaN; one thread per
// output element, grid-stride loops.

#include <stdint.h>

#define GRID_STRIDE(i, n) \
    for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < (n); i += (uint64_t)blockDim.x * gridDim.x)

// y = min(max(x, 0), hi): ReLU (hi = +inf) and ReLU6. NaN passes through
// (both comparisons are false), as PyTorch.
extern "C" __global__ void tfkd_clamp_f32(const float* x, float* y, float hi, uint64_t n) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        float low = v < 0.0f ? 0.0f : v;
        y[i] = low > hi ? hi : low;
    }
}

// dx = 0 where x <= 0 or (bounded) x >= hi, else g: PyTorch's gradients of
// ReLU and ReLU6 (the gradient passes at NaN, and for ReLU at +inf).
extern "C" __global__ void tfkd_clamp_grad_f32(const float* g, const float* x, float* dx, float hi, int bounded, uint64_t n) {
    GRID_STRIDE(i, n) {
        float v = x[i];
        bool pass = !(v <= 0.0f) && !(bounded && v >= hi);
        dx[i] = pass ? g[i] : 0.0f;
    }
}

// The flat index, in its h x w plane, of the maximum of the window whose
// top-left corner (padded coordinates minus padding) is (r0, c0): the first
// strict maximum in row-major order, or the last NaN (PyTorch's rule:
// `val > max || isnan(val)` replaces), starting from the first tap inside
// the input. Every window holds at least one input (padding <= kernel / 2).
__device__ __forceinline__ int window_argmax(const float* plane, int h, int w, int r0, int c0, int k) {
    int ra = max(r0, 0), rb = min(r0 + k, h);
    int ca = max(c0, 0), cb = min(c0 + k, w);
    int best_at = ra * w + ca;
    float best = plane[best_at];
    for (int r = ra; r < rb; ++r) {
        for (int c = ca; c < cb; ++c) {
            if (r == ra && c == ca) continue;
            float v = plane[r * w + c];
            if (v > best || isnan(v)) {
                best = v;
                best_at = r * w + c;
            }
        }
    }
    return best_at;
}

// Max pooling of planes (N*C of them, h x w) into ho x wo.
extern "C" __global__ void tfkd_max_pool2d_f32(const float* x, float* y, uint64_t planes, int h, int w, int ho, int wo, int k, int s, int p) {
    uint64_t per_plane = (uint64_t)ho * wo;
    GRID_STRIDE(i, planes * per_plane) {
        uint64_t plane = i / per_plane;
        int o = (int)(i % per_plane);
        int oi = o / wo, oj = o % wo;
        const float* xp = x + plane * (uint64_t)h * w;
        y[i] = xp[window_argmax(xp, h, w, oi * s - p, oj * s - p, k)];
    }
}

// dx[i, j] = sum of g over the windows whose maximum is at (i, j), gathered
// per input element (no atomics: deterministic), windows in row-major order.
extern "C" __global__ void tfkd_max_pool2d_grad_f32(const float* g, const float* x, float* dx, uint64_t planes, int h, int w, int ho, int wo, int k, int s, int p) {
    uint64_t per_plane = (uint64_t)h * w;
    GRID_STRIDE(i, planes * per_plane) {
        uint64_t plane = i / per_plane;
        int at = (int)(i % per_plane);
        int r = at / w, c = at % w;
        const float* xp = x + plane * per_plane;
        const float* gp = g + plane * (uint64_t)ho * wo;
        // Windows oi with oi*s - p <= r < oi*s - p + k.
        int oi0 = r + p - k + 1 <= 0 ? 0 : (r + p - k + 1 + s - 1) / s;
        int oi1 = min((r + p) / s, ho - 1);
        int oj0 = c + p - k + 1 <= 0 ? 0 : (c + p - k + 1 + s - 1) / s;
        int oj1 = min((c + p) / s, wo - 1);
        float acc = 0.0f;
        for (int oi = oi0; oi <= oi1; ++oi) {
            for (int oj = oj0; oj <= oj1; ++oj) {
                if (window_argmax(xp, h, w, oi * s - p, oj * s - p, k) == at) acc += gp[oi * wo + oj];
            }
        }
        dx[i] = acc;
    }
}

// ---------------------------------------------------------------------------
// The fused losses (crates/tfkd-core/src/loss/fused.rs has the formulas):
// one block per row of the student logits z (N x K); per-row terms in
// double, then one block adds the rows in a fixed order.

// The loss's configuration; the same layout as `LossParams` in cuda.rs.
struct LossParams {
    double hard_weight;   // w_h
    double hard_on;       // label target of the hard term
    double hard_off;
    double soft_weight;   // w_s
    double sigma;         // student scale of the soft term
    double soft_on;       // label target of the soft term (soft_kind 1)
    double soft_off;
    double neg_entropy;   // its sum t log t
    double teacher_scale; // 1/T of the teacher target (soft_kind 2)
    int has_hard;
    int soft_kind;        // 0: none, 1: label target, 2: teacher target
};

// Block-wide sum and max of one double per thread (blockDim.x a power of
// two, at most 256), the same order on every call.
__device__ double block_sum(double v, double* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

__device__ double block_max(double v, double* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] = fmax(sh[threadIdx.x], sh[threadIdx.x + s]);
        __syncthreads();
    }
    double r = sh[0];
    __syncthreads();
    return r;
}

// Per row n: with `rows`, writes the unweighted [H_n, S_n] to rows[2n..];
// with `grad` (and the op's three upstream gradients in `upstream`), writes
// dL/dz_n = c0 dH_n + c1 dS_n with c0 = w_h (g_total + g_hard),
// c1 = w_s (g_total + g_soft). `t` (teacher logits) only for soft_kind 2.
extern "C" __global__ void tfkd_fused_loss_rows_f32(const float* z, const float* t, const uint32_t* labels, uint64_t n, int k,
                                                    LossParams p, double* rows, float* grad, const float* upstream) {
    __shared__ double sh[256];
    const double K = (double)k;
    const bool needs_sum = (p.has_hard && p.hard_off != 0.0) || (p.soft_kind == 1 && p.soft_off != 0.0);
    for (uint64_t row = blockIdx.x; row < n; row += gridDim.x) {
        const float* zr = z + row * (uint64_t)k;
        const float* tr = p.soft_kind == 2 ? t + row * (uint64_t)k : 0;
        // A label outside [0, k) (labels read on the GPU are not checked
        // before): NaN terms and gradient row, which the loss's finiteness
        // check reports as that label. Uniform in the block (one row).
        if (labels[row] >= (uint32_t)k) {
            if (rows && threadIdx.x == 0) rows[2 * row] = rows[2 * row + 1] = nan("");
            if (grad)
                for (int j = threadIdx.x; j < k; j += blockDim.x) grad[row * (uint64_t)k + j] = nanf("");
            continue;
        }
        const int y = (int)labels[row];
        double acc = -INFINITY;
        for (int j = threadIdx.x; j < k; j += blockDim.x) acc = fmax(acc, (double)zr[j]);
        const double m = block_max(acc, sh);
        double sum_diff = 0.0;
        if (needs_sum) {
            acc = 0.0;
            for (int j = threadIdx.x; j < k; j += blockDim.x) acc += (double)zr[j] - m;
            sum_diff = block_sum(acc, sh);
        }
        const double zy = (double)zr[y] - m;
        double hard_sum = 0.0, soft_sum = 0.0, mt = 0.0, t_sum = 0.0, cross = 0.0;
        if (p.has_hard) {
            acc = 0.0;
            for (int j = threadIdx.x; j < k; j += blockDim.x) acc += exp((double)zr[j] - m);
            hard_sum = block_sum(acc, sh);
        }
        if (p.soft_kind != 0) {
            if (p.has_hard && p.sigma == 1.0) {
                soft_sum = hard_sum;
            } else {
                acc = 0.0;
                for (int j = threadIdx.x; j < k; j += blockDim.x) acc += exp(p.sigma * ((double)zr[j] - m));
                soft_sum = block_sum(acc, sh);
            }
        }
        if (p.soft_kind == 2) {
            acc = -INFINITY;
            for (int j = threadIdx.x; j < k; j += blockDim.x) acc = fmax(acc, (double)tr[j]);
            mt = block_max(acc, sh);
            double a = 0.0, b = 0.0;
            for (int j = threadIdx.x; j < k; j += blockDim.x) {
                double st = p.teacher_scale * ((double)tr[j] - mt);
                double et = exp(st);
                a += et;
                b += et * (st - p.sigma * ((double)zr[j] - m));
            }
            t_sum = block_sum(a, sh);
            cross = block_sum(b, sh);
        }
        if (rows && threadIdx.x == 0) {
            double h = 0.0, s = 0.0;
            if (p.has_hard)
                h = (p.hard_on + (K - 1.0) * p.hard_off) * log(hard_sum) - p.hard_off * sum_diff - (p.hard_on - p.hard_off) * zy;
            if (p.soft_kind == 1)
                s = p.neg_entropy + (p.soft_on + (K - 1.0) * p.soft_off) * log(soft_sum) - p.soft_off * p.sigma * sum_diff
                    - (p.soft_on - p.soft_off) * p.sigma * zy;
            if (p.soft_kind == 2) s = cross / t_sum - log(t_sum) + log(soft_sum);
            rows[2 * row] = h;
            rows[2 * row + 1] = s;
        }
        if (grad) {
            const double c0 = p.hard_weight * ((double)upstream[0] + (double)upstream[1]);
            const double c1 = p.soft_weight * ((double)upstream[0] + (double)upstream[2]);
            float* gr = grad + row * (uint64_t)k;
            for (int j = threadIdx.x; j < k; j += blockDim.x) {
                double zj = (double)zr[j] - m;
                double g = 0.0;
                if (p.has_hard) {
                    g += c0 * ((p.hard_on + (K - 1.0) * p.hard_off) * exp(zj) / hard_sum - p.hard_off);
                    if (j == y) g -= c0 * (p.hard_on - p.hard_off);
                }
                if (p.soft_kind == 1) {
                    double cs = c1 * p.sigma;
                    g += cs * ((p.soft_on + (K - 1.0) * p.soft_off) * exp(p.sigma * zj) / soft_sum - p.soft_off);
                    if (j == y) g -= cs * (p.soft_on - p.soft_off);
                }
                if (p.soft_kind == 2) {
                    double et = exp(p.teacher_scale * ((double)tr[j] - mt));
                    g += c1 * p.sigma * (exp(p.sigma * zj) / soft_sum - et / t_sum);
                }
                gr[j] = (float)g;
            }
        }
    }
}

// out = [w_h sum H + w_s sum S, w_h sum H, w_s sum S] over the n rows, by
// one block, in a fixed order.
extern "C" __global__ void tfkd_fused_loss_total_f32(const double* rows, uint64_t n, double hard_weight, double soft_weight, float* out) {
    __shared__ double sh[256];
    double h = 0.0, s = 0.0;
    for (uint64_t i = threadIdx.x; i < n; i += blockDim.x) {
        h += rows[2 * i];
        s += rows[2 * i + 1];
    }
    h = block_sum(h, sh);
    s = block_sum(s, sh);
    if (threadIdx.x == 0) {
        double hard = hard_weight * h, soft = soft_weight * s;
        out[0] = (float)(hard + soft);
        out[1] = (float)hard;
        out[2] = (float)soft;
    }
}

// ---------------------------------------------------------------------------
// A convolution's per-channel bias: out[n, c, s] = y[n, c, s] + b[c] (planes
// of `plane` elements), and its gradient db[c] = sum over n, s of g[n, c, s],
// one block per channel in double, in a fixed order.

extern "C" __global__ void tfkd_channel_bias_f32(const float* y, const float* b, float* out, uint64_t total, int c, uint64_t plane) {
    GRID_STRIDE(i, total) {
        out[i] = y[i] + b[(i / plane) % (uint64_t)c];
    }
}

extern "C" __global__ void tfkd_channel_sums_f32(const float* g, float* db, uint64_t n, int c, uint64_t plane) {
    __shared__ double sh[256];
    for (int ch = blockIdx.x; ch < c; ch += gridDim.x) {
        double acc = 0.0;
        for (uint64_t ni = 0; ni < n; ++ni) {
            const float* gp = g + (ni * (uint64_t)c + ch) * plane;
            for (uint64_t s = threadIdx.x; s < plane; s += blockDim.x) acc += (double)gp[s];
        }
        acc = block_sum(acc, sh);
        if (threadIdx.x == 0) db[ch] = (float)acc;
    }
}

// ---------------------------------------------------------------------------
// The optimizers, multi-tensor: one launch updates every parameter in place
// (PyTorch's foreach / multi_tensor_apply). The host splits each parameter
// into pieces of at most a few thousand elements and uploads a table of
// them; one block walks one piece. Rounded as candle's separate f32
// operations on the CPU (no fused multiply-adds), so both devices step
// alike.

// One piece of one parameter (the layout of `Chunk` in cuda.rs).
struct Chunk {
    float* p;              // the parameter
    const float* g;        // its gradient
    float* s1;             // SGD: the momentum buffer (null without momentum); Adam: m
    float* s2;             // Adam: v
    uint64_t start, len;   // the piece: elements start .. start + len
    int fresh;             // SGD: the buffer is new this step (b = d)
    float step_size;       // Adam: lr / (1 - beta1^t)
    float inv_bias2_sqrt;  // Adam: 1 / sqrt(1 - beta2^t)
    int unused;
};

// The hyper-parameters (the layouts of `SgdScalars` and `AdamScalars` in
// cuda.rs).
struct SgdScalars {
    float lr, wd, mu, one_minus_tau;
    int nesterov;
};
struct AdamScalars {
    float b1, one_minus_b1, b2, one_minus_b2, eps, wd;
};

// Calls f(k, i) for every element i of every piece k: block b takes pieces
// b, b + gridDim.x, ...; its threads the piece's elements.
template <class F>
__device__ __forceinline__ void for_each_piece_element(const Chunk* chunks, uint64_t count, F f) {
    for (uint64_t c = blockIdx.x; c < count; c += gridDim.x) {
        const Chunk k = chunks[c];
        for (uint64_t i = k.start + threadIdx.x; i < k.start + k.len; i += blockDim.x) f(k, i);
    }
}

// d = g + wd p (weight decay as an L2 term, PyTorch's SGD and Adam).
__device__ __forceinline__ float with_decay(float g, float p, float wd) {
    return wd != 0.0f ? __fadd_rn(g, __fmul_rn(p, wd)) : g;
}

// torch.optim.SGD: d = g + wd p; b = d (fresh) or mu b + (1 - tau) d;
// d = nesterov ? d + mu b : b; p = p - lr d.
extern "C" __global__ void tfkd_sgd_f32(const Chunk* chunks, uint64_t count, SgdScalars s) {
    for_each_piece_element(chunks, count, [&](const Chunk& k, uint64_t i) {
        float p = k.p[i];
        float d = with_decay(k.g[i], p, s.wd);
        if (k.s1) {
            float b = k.fresh ? d : __fadd_rn(__fmul_rn(k.s1[i], s.mu), __fmul_rn(d, s.one_minus_tau));
            k.s1[i] = b;
            d = s.nesterov ? __fadd_rn(d, __fmul_rn(b, s.mu)) : b;
        }
        k.p[i] = __fsub_rn(p, __fmul_rn(d, s.lr));
    });
}

// torch.optim.Adam (L2 weight decay, no amsgrad): d = g + wd p;
// m = b1 m + (1 - b1) d; v = b2 v + (1 - b2) d^2;
// p = p - (m / (sqrt(v) / sqrt(1 - b2^t) + eps)) * lr / (1 - b1^t).
extern "C" __global__ void tfkd_adam_f32(const Chunk* chunks, uint64_t count, AdamScalars s) {
    for_each_piece_element(chunks, count, [&](const Chunk& k, uint64_t i) {
        float p = k.p[i];
        float d = with_decay(k.g[i], p, s.wd);
        float m = __fadd_rn(__fmul_rn(k.s1[i], s.b1), __fmul_rn(d, s.one_minus_b1));
        float v = __fadd_rn(__fmul_rn(k.s2[i], s.b2), __fmul_rn(__fmul_rn(d, d), s.one_minus_b2));
        k.s1[i] = m;
        k.s2[i] = v;
        float denom = __fadd_rn(__fmul_rn(__fsqrt_rn(v), k.inv_bias2_sqrt), s.eps);
        k.p[i] = __fsub_rn(p, __fmul_rn(__fdiv_rn(m, denom), k.step_size));
    });
}

// ---------------------------------------------------------------------------
// BatchNorm's running statistics, in place: r <- keep r + gain s (keep =
// 1 - momentum; gain = momentum, times M/(M - 1) for the variance). Rounded
// as the CPU's two scalings and an addition (no fused multiply-add).

extern "C" __global__ void tfkd_running_average_f32(float* r, const float* s, float keep, float gain, uint64_t n) {
    GRID_STRIDE(i, n) r[i] = __fadd_rn(__fmul_rn(r[i], keep), __fmul_rn(s[i], gain));
}

// ---------------------------------------------------------------------------
// Depthwise convolution (groups = C; output channel o = c·m + i reads input
// channel c), NCHW, dilation 1, as PyTorch's own fp32 CUDA kernels do it
// (PyTorch does not use cuDNN for fp32 depthwise convolutions): one thread
// per output element forward, one per input element for the input
// gradient, one block per kernel tap for the weight gradient. Taps are
// summed in row-major order, as the CPU kernels sum them.

// The problem's sizes (the layout of `DepthwiseShape` in cuda.rs). Every
// tensor has fewer than 2^31 elements (the host checks), so indices are
// 32-bit, as in PyTorch's kernels.
struct DepthwiseShape {
    int n, c, m, h, w, kh, kw, s, p, ho, wo;
};

// y[n, o, r, j] = sum_{a, b} k[o, a, b] x[n, o / m, r s - p + a, j s - p + b]
// (taps outside the input are zero). KH = KW = 0: any kernel size.
template <int KH, int KW>
__device__ __forceinline__ float depthwise_output(const float* xp, const float* kp, const DepthwiseShape& d, int r, int j) {
    const int kh = KH ? KH : d.kh, kw = KW ? KW : d.kw;
    const int r0 = r * d.s - d.p, c0 = j * d.s - d.p;
    float acc = 0.0f;
#pragma unroll
    for (int a = 0; a < kh; ++a) {
        const int row = r0 + a;
        if (row < 0 || row >= d.h) continue;
#pragma unroll
        for (int b = 0; b < kw; ++b) {
            const int col = c0 + b;
            if (col < 0 || col >= d.w) continue;
            acc += kp[a * kw + b] * xp[row * d.w + col];
        }
    }
    return acc;
}

extern "C" __global__ void tfkd_depthwise_f32(const float* x, const float* k, float* y, DepthwiseShape d) {
    const int co = d.c * d.m;
    const int total = d.n * co * d.ho * d.wo;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int j = i % d.wo;
        int t = i / d.wo;
        const int r = t % d.ho;
        t /= d.ho;
        const int o = t % co;
        const int n = t / co;
        const float* xp = x + (n * d.c + o / d.m) * d.h * d.w;
        const float* kp = k + o * d.kh * d.kw;
        y[i] = d.kh == 3 && d.kw == 3 ? depthwise_output<3, 3>(xp, kp, d, r, j) : depthwise_output<0, 0>(xp, kp, d, r, j);
    }
}

// dx[n, c, row, col] = sum over the m output channels o of c and the taps
// (a, b) with row = r s - p + a, col = j s - p + b inside the output of
// k[o, a, b] g[n, o, r, j].
extern "C" __global__ void tfkd_depthwise_input_grad_f32(const float* g, const float* k, float* dx, DepthwiseShape d) {
    const int co = d.c * d.m;
    const int total = d.n * d.c * d.h * d.w;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += blockDim.x * gridDim.x) {
        const int col = i % d.w;
        int t = i / d.w;
        const int row = t % d.h;
        t /= d.h;
        const int ch = t % d.c;
        const int n = t / d.c;
        float acc = 0.0f;
        for (int mi = 0; mi < d.m; ++mi) {
            const int o = ch * d.m + mi;
            const float* gp = g + (n * co + o) * d.ho * d.wo;
            const float* kp = k + o * d.kh * d.kw;
            for (int a = 0; a < d.kh; ++a) {
                const int rs = row + d.p - a;
                if (rs < 0 || rs % d.s) continue;
                const int r = rs / d.s;
                if (r >= d.ho) continue;
                for (int b = 0; b < d.kw; ++b) {
                    const int cs = col + d.p - b;
                    if (cs < 0 || cs % d.s) continue;
                    const int j = cs / d.s;
                    if (j >= d.wo) continue;
                    acc += kp[a * d.kw + b] * gp[r * d.wo + j];
                }
            }
        }
        dx[i] = acc;
    }
}

// dk[o, a, b] = sum_{n, r, j} g[n, o, r, j] x[n, o / m, r s - p + a, j s - p + b],
// one block per tap, in double, the block's sum in a fixed order.
extern "C" __global__ void tfkd_depthwise_weight_grad_f32(const float* x, const float* g, float* dk, DepthwiseShape d) {
    __shared__ double sh[256];
    const int co = d.c * d.m;
    const int taps = co * d.kh * d.kw;
    const int plane_out = d.ho * d.wo;
    for (int q = blockIdx.x; q < taps; q += gridDim.x) {
        const int b = q % d.kw;
        const int a = (q / d.kw) % d.kh;
        const int o = q / (d.kw * d.kh);
        const int ch = o / d.m;
        double acc = 0.0;
        for (int e = threadIdx.x; e < d.n * plane_out; e += blockDim.x) {
            const int n = e / plane_out;
            const int rem = e % plane_out;
            const int row = (rem / d.wo) * d.s - d.p + a, col = (rem % d.wo) * d.s - d.p + b;
            if (row < 0 || row >= d.h || col < 0 || col >= d.w) continue;
            acc += (double)g[(n * co + o) * plane_out + rem] * (double)x[(n * d.c + ch) * d.h * d.w + row * d.w + col];
        }
        acc = block_sum(acc, sh);
        if (threadIdx.x == 0) dk[q] = (float)acc;
    }
}

// ---------------------------------------------------------------------------
// A residual connection and its activation: y = min(max(a + b, lo), hi)
// (lo = 0: ReLU / ReLU6; lo = -inf, hi = inf: the sum alone). y may be a
// (each thread reads a[i] before writing y[i]).

extern "C" __global__ void tfkd_add_clamp_f32(const float* a, const float* b, float* y, float lo, float hi, uint64_t n) {
    GRID_STRIDE(i, n) {
        float v = a[i] + b[i];
        float low = v < lo ? lo : v;
        y[i] = low > hi ? hi : low;
    }
}
