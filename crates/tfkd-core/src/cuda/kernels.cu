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
