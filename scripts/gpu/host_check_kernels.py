#!/usr/bin/env python3
"""Checks tfkd's CUDA kernels (crates/tfkd-core/src/cuda/kernels.cu) on a
machine without a GPU: the file is compiled as plain C++ (one "thread" that
walks every grid-stride loop), called through ctypes, and compared with
PyTorch on the CPU: ReLU / ReLU6 and their gradients at the bounds, max
pooling forward and backward with ties and NaN (PyTorch's rule: first
maximum, last NaN), the per-channel bias, SGD's in-place update (against
torch.optim.SGD), and the fused losses' row terms, totals and gradients
(label targets as in CE / LSR / Tf-KD_reg, teacher targets as in KD) against
the formulas of crates/tfkd-core/src/loss/fused.rs written with torch ops.

This is a developer's check of the kernels' arithmetic, not a CI test (it
needs g++ and PyTorch); on a GPU, crates/tfkd-core/tests/cuda_ops.rs runs the
kernels themselves against the CPU ops.

Usage: python scripts/gpu/host_check_kernels.py
"""

import ctypes
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(HERE, "..", "..", "crates", "tfkd-core", "src", "cuda", "kernels.cu")

SHIM = r"""
#include <cmath>
#include <algorithm>
#include <cstdint>
using std::isnan; using std::max; using std::min;
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads()
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __fsqrt_rn(float a) { return std::sqrt(a); }
struct Dim3 { unsigned x; };
static Dim3 blockIdx{0}, blockDim{1}, threadIdx{0}, gridDim{1};
#include "KERNELS"
"""


def build():
    tmp = tempfile.mkdtemp()
    src = os.path.join(tmp, "host.cpp")
    with open(src, "w") as f:
        f.write(SHIM.replace("KERNELS", os.path.abspath(KERNELS)))
    lib = os.path.join(tmp, "kernels.so")
    subprocess.check_call(["g++", "-O1", "-std=c++17", "-shared", "-fPIC", "-o", lib, src])
    return ctypes.CDLL(lib)


def ptr(t):
    return ctypes.c_void_p(t.data_ptr())


def main():
    lib = build()
    u64, i32, f32 = ctypes.c_uint64, ctypes.c_int, ctypes.c_float
    failures = 0

    def check(name, ours, want):
        nonlocal failures
        same = torch.equal(torch.isnan(ours), torch.isnan(want)) and torch.allclose(
            torch.nan_to_num(ours), torch.nan_to_num(want), atol=1e-5, rtol=1e-5)
        print(("ok   " if same else "FAIL ") + name)
        failures += 0 if same else 1

    # Clamp: values at and around the bounds, infinities, NaN.
    x = torch.tensor([-2.0, -0.0, 0.0, 1e-7, 3.0, 6.0, 6.5, float("inf"), float("-inf"), float("nan")])
    g = torch.arange(1.0, x.numel() + 1)
    for hi, name, op in [(float("inf"), "relu", F.relu), (6.0, "relu6", F.relu6)]:
        y = torch.empty_like(x)
        lib.tfkd_clamp_f32(ptr(x), ptr(y), f32(hi), u64(x.numel()))
        check(f"{name} forward", y, op(x))
        dx = torch.empty_like(x)
        lib.tfkd_clamp_grad_f32(ptr(g), ptr(x), ptr(dx), f32(hi), i32(int(hi != float("inf"))), u64(x.numel()))
        xr = x.clone().requires_grad_(True)
        op(xr).backward(g)
        check(f"{name} gradient", dx, xr.grad)
        # A residual connection and its activation (the gradient then comes
        # from the output, as the clamp-grad kernel gets it in that op).
        b = torch.linspace(-3, 3, x.numel())
        y = torch.empty_like(x)
        lib.tfkd_add_clamp_f32(ptr(x), ptr(b), ptr(y), f32(0.0), f32(hi), u64(x.numel()))
        check(f"residual add + {name} forward", y, op(x + b))
        dx = torch.empty_like(x)
        lib.tfkd_clamp_grad_f32(ptr(g), ptr(y), ptr(dx), f32(hi), i32(int(hi != float("inf"))), u64(x.numel()))
        xr = x.clone().requires_grad_(True)
        op(xr + b).backward(g)
        check(f"residual add + {name} gradient (from the output)", dx, xr.grad)
    # The sum alone (lo = -inf, hi = inf), in place.
    b = torch.linspace(-3, 3, x.numel())
    y = x.clone()
    lib.tfkd_add_clamp_f32(ptr(y), ptr(b), ptr(y), f32(float("-inf")), f32(float("inf")), u64(x.numel()))
    check("residual add alone, in place", y, x + b)

    # Max pooling: random values, many ties (a few distinct values), NaN.
    gen = torch.Generator().manual_seed(0)
    cases = [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0), (3, 3, 0), (5, 2, 2)]
    for k, s, p in cases:
        for kind in ["random", "ties", "nan"]:
            n, c, h, w = 2, 3, 9, 7
            if kind == "random":
                x = torch.randn(n, c, h, w, generator=gen)
            else:
                x = torch.randint(0, 3, (n, c, h, w), generator=gen).float()
                if kind == "nan":
                    x[torch.rand(n, c, h, w, generator=gen) < 0.1] = float("nan")
            ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            y = torch.empty(n, c, ho, wo)
            lib.tfkd_max_pool2d_f32(ptr(x), ptr(y), u64(n * c), i32(h), i32(w), i32(ho), i32(wo), i32(k), i32(s), i32(p))
            xr = x.clone().requires_grad_(True)
            yr = F.max_pool2d(xr, k, s, p)
            check(f"max pool k{k} s{s} p{p} {kind} forward", y, yr.detach())
            gy = torch.randn(n, c, ho, wo, generator=gen)
            yr.backward(gy)
            dx = torch.empty_like(x)
            lib.tfkd_max_pool2d_grad_f32(ptr(gy), ptr(x), ptr(dx), u64(n * c), i32(h), i32(w), i32(ho), i32(wo), i32(k), i32(s), i32(p))
            check(f"max pool k{k} s{s} p{p} {kind} gradient", dx, xr.grad)

    # A convolution's per-channel bias and its gradient.
    y = torch.randn(3, 5, 4, 6, generator=gen)
    b = torch.randn(5, generator=gen)
    out = torch.empty_like(y)
    lib.tfkd_channel_bias_f32(ptr(y), ptr(b), ptr(out), u64(y.numel()), i32(5), u64(24))
    check("channel bias forward", out, y + b.view(1, 5, 1, 1))
    db = torch.empty(5)
    lib.tfkd_channel_sums_f32(ptr(y), ptr(db), u64(3), i32(5), u64(24))
    check("channel bias gradient (sums)", db, y.double().sum((0, 2, 3)).float())

    # The optimizers, multi-tensor: a table of pieces (two parameters, one
    # split into pieces of 20), against torch.optim stepping from the same
    # state.
    class Chunk(ctypes.Structure):
        _fields_ = [("p", ctypes.c_void_p), ("g", ctypes.c_void_p), ("s1", ctypes.c_void_p), ("s2", ctypes.c_void_p),
                    ("start", ctypes.c_uint64), ("len", ctypes.c_uint64), ("fresh", ctypes.c_int),
                    ("step_size", ctypes.c_float), ("inv_bias2_sqrt", ctypes.c_float), ("unused", ctypes.c_int)]

    class SgdScalars(ctypes.Structure):
        _fields_ = [(n, ctypes.c_float) for n in ["lr", "wd", "mu", "one_minus_tau"]] + [("nesterov", ctypes.c_int)]

    class AdamScalars(ctypes.Structure):
        _fields_ = [(n, ctypes.c_float) for n in ["b1", "one_minus_b1", "b2", "one_minus_b2", "eps", "wd"]]

    def table(params, grads, s1, s2, fresh, scales):
        pieces = []
        for k, p in enumerate(params):
            for start in range(0, p.numel(), 20):
                pieces.append(Chunk(p.data_ptr(), grads[k].data_ptr(), s1[k].data_ptr() if s1 else None,
                                    s2[k].data_ptr() if s2 else None, start, min(20, p.numel() - start),
                                    int(fresh), scales[k][0], scales[k][1], 0))
        return (Chunk * len(pieces))(*pieces), u64(len(pieces))

    sizes = [50, 7]
    for momentum, dampening, wd, nesterov, first in [(0.9, 0.0, 5e-4, False, False), (0.9, 0.0, 5e-4, True, False), (0.5, 0.1, 0.0, False, False),
                                                     (0.0, 0.0, 1e-3, False, False), (0.9, 0.0, 5e-4, False, True), (0.9, 0.0, 5e-4, True, True)]:
        p0 = [torch.randn(n, generator=gen) for n in sizes]
        g = [torch.randn(n, generator=gen) for n in sizes]
        b0 = [torch.randn(n, generator=gen) for n in sizes]
        params = [torch.nn.Parameter(p.clone()) for p in p0]
        opt = torch.optim.SGD(params, lr=0.1, momentum=momentum, dampening=dampening, weight_decay=wd, nesterov=nesterov, foreach=False)
        if momentum and not first:
            for param, b in zip(params, b0):
                opt.state[param]["momentum_buffer"] = b.clone()
        for param, gk in zip(params, g):
            param.grad = gk.clone()
        opt.step()
        p, b = [x.clone() for x in p0], ([x.clone() for x in b0] if momentum else None)
        chunks, count = table(p, g, b, None, first, [(0.0, 0.0)] * len(sizes))
        lib.tfkd_sgd_f32(chunks, count, SgdScalars(0.1, wd, momentum, 1 - dampening, int(nesterov)))
        name = f"SGD momentum {momentum} dampening {dampening} wd {wd} nesterov {nesterov}{' first step' if first else ''}"
        check(name + ": parameters", torch.cat(p), torch.cat([x.detach() for x in params]))
        if momentum:
            check(name + ": buffers", torch.cat(b), torch.cat([opt.state[x]["momentum_buffer"] for x in params]))

    for wd, steps in [(0.0, 1), (0.0, 3), (1e-2, 2)]:
        p0 = [torch.randn(n, generator=gen) for n in sizes]
        grads = [[torch.randn(n, generator=gen) for n in sizes] for _ in range(steps)]
        params = [torch.nn.Parameter(p.clone()) for p in p0]
        opt = torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd, foreach=False)
        p = [x.clone() for x in p0]
        m, v = [torch.zeros(n) for n in sizes], [torch.zeros(n) for n in sizes]
        for t in range(1, steps + 1):
            for param, gk in zip(params, grads[t - 1]):
                param.grad = gk.clone()
            opt.step()
            scale = (1e-2 / (1 - 0.9 ** t), 1 / (1 - 0.999 ** t) ** 0.5)
            chunks, count = table(p, grads[t - 1], m, v, False, [scale] * len(sizes))
            lib.tfkd_adam_f32(chunks, count, AdamScalars(0.9, 1 - 0.9, 0.999, 1 - 0.999, 1e-8, wd))
        name = f"Adam wd {wd}, {steps} steps"
        check(name + ": parameters", torch.cat(p), torch.cat([x.detach() for x in params]))
        check(name + ": first moments", torch.cat(m), torch.cat([opt.state[x]["exp_avg"] for x in params]))
        check(name + ": second moments", torch.cat(v), torch.cat([opt.state[x]["exp_avg_sq"] for x in params]))

    # Depthwise convolution (groups = C, channel multiplier m), forward and
    # both gradients, against F.conv2d and its autograd.
    class DepthwiseShape(ctypes.Structure):
        _fields_ = [(n, ctypes.c_int) for n in ["n", "c", "m", "h", "w", "kh", "kw", "s", "p", "ho", "wo"]]

    for n, c, m, h, w, k, s, p in [(2, 3, 1, 7, 5, 3, 1, 1), (2, 4, 1, 9, 8, 3, 2, 1), (1, 2, 2, 6, 6, 3, 1, 1),
                                   (3, 5, 1, 5, 5, 5, 1, 2), (2, 3, 3, 8, 7, 3, 2, 0), (2, 2, 1, 4, 6, 1, 2, 0)]:
        xr = torch.randn(n, c, h, w, generator=gen, requires_grad=True)
        kr = torch.randn(c * m, 1, k, k, generator=gen, requires_grad=True)
        yr = F.conv2d(xr, kr, stride=s, padding=p, groups=c)
        gy = torch.randn(yr.shape, generator=gen)
        yr.backward(gy)
        ho, wo = yr.shape[2], yr.shape[3]
        d = DepthwiseShape(n, c, m, h, w, k, k, s, p, ho, wo)
        x, kk = xr.detach().contiguous(), kr.detach().contiguous()
        y, dx, dk = torch.empty(yr.shape), torch.empty(x.shape), torch.empty(kk.shape)
        lib.tfkd_depthwise_f32(ptr(x), ptr(kk), ptr(y), d)
        lib.tfkd_depthwise_input_grad_f32(ptr(gy), ptr(kk), ptr(dx), d)
        lib.tfkd_depthwise_weight_grad_f32(ptr(x), ptr(gy), ptr(dk), d)
        name = f"depthwise {n}x{c}x{h}x{w} m{m} k{k} s{s} p{p}"
        check(name + ": forward", y, yr.detach())
        check(name + ": input gradient", dx, xr.grad)
        check(name + ": weight gradient", dk, kr.grad)

    # BatchNorm's running statistics, in place, against nn.BatchNorm2d's
    # update (momentum 0.1; the unbiased batch variance).
    bn = torch.nn.BatchNorm2d(7)
    bn.running_mean.copy_(torch.randn(7, generator=gen))
    bn.running_var.copy_(torch.rand(7, generator=gen) + 0.5)
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    xs = torch.randn(4, 7, 3, 5, generator=gen)
    bn(xs)
    m = xs.numel() // 7
    mean, var = xs.mean((0, 2, 3)), xs.var((0, 2, 3), unbiased=False)
    lib.tfkd_running_average_f32(ptr(rm), ptr(mean), f32(1 - 0.1), f32(0.1), u64(7))
    lib.tfkd_running_average_f32(ptr(rv), ptr(var), f32(1 - 0.1), f32(0.1 * m / (m - 1)), u64(7))
    check("BatchNorm running mean", rm, bn.running_mean)
    check("BatchNorm running variance", rv, bn.running_var)

    # Fused losses.
    class LossParams(ctypes.Structure):
        _fields_ = [(name, ctypes.c_double) for name in
                    ["hard_weight", "hard_on", "hard_off", "soft_weight", "sigma", "soft_on", "soft_off",
                     "neg_entropy", "teacher_scale"]] + [("has_hard", ctypes.c_int), ("soft_kind", ctypes.c_int)]

    def label_target(n, k, y, on, off):
        t = torch.full((n, k), off, dtype=torch.float64)
        t[torch.arange(n), y] = on
        return t

    configs = [
        # name, has_hard, (on, off), soft_kind, sigma, (son, soff), teacher_scale
        ("cross-entropy", 1, (1.0, 0.0), 0, 1.0, None, 0.0),
        ("label smoothing", 1, (0.9, 0.1 / 9), 0, 1.0, None, 0.0),
        ("KD T=20", 1, (1.0, 0.0), 2, 1 / 20, None, 1 / 20),
        ("KD T=1", 1, (1.0, 0.0), 2, 1.0, None, 1.0),
        ("Tf-KD_reg as coded", 1, (1.0, 0.0), 1, 1.0, (0.2, 0.8 / 9), 0.0),
        ("Tf-KD_reg Eq. 9", 1, (1.0, 0.0), 1, 1 / 20, (0.2, 0.8 / 9), 0.0),
        ("soft only", 0, (1.0, 0.0), 2, 1 / 4, None, 1 / 3),
    ]
    for name, has_hard, (on, off), kind, sigma, soft_lt, tscale in configs:
        n, k = 6, 10
        z = (torch.randn(n, k, generator=gen) * 3).float()
        t = (torch.randn(n, k, generator=gen) * 3).float()
        y = torch.randint(0, k, (n,), generator=gen)
        labels = y.to(torch.int32)
        son, soff = soft_lt if soft_lt else (0.0, 0.0)
        w_h, w_s = (0.3 / n) if has_hard else 0.0, (0.7 * 5 / n) if kind else 0.0
        tl = label_target(n, k, y, son, soff) if kind == 1 else None
        neg_entropy = float((tl[0] * torch.log(tl[0].clamp_min(1e-300))).sum()) if kind == 1 else 0.0
        params = LossParams(w_h, on, off, w_s, sigma, son, soff, neg_entropy, tscale, has_hard, kind)
        rows = torch.zeros(n, 2, dtype=torch.float64)
        lib.tfkd_fused_loss_rows_f32(ptr(z), ptr(t), ptr(labels), u64(n), i32(k), params, ptr(rows), None, None)
        out = torch.zeros(3)
        lib.tfkd_fused_loss_total_f32(ptr(rows), u64(n), ctypes.c_double(w_h), ctypes.c_double(w_s), ptr(out))
        up = torch.tensor([0.7, 0.2, -0.4])
        grad = torch.zeros(n, k)
        lib.tfkd_fused_loss_rows_f32(ptr(z), ptr(t), ptr(labels), u64(n), i32(k), params, None, ptr(grad), ptr(up))
        zr = z.double().requires_grad_(True)
        h_rows = -(label_target(n, k, y, on, off) * F.log_softmax(zr, 1)).sum(1) if has_hard else torch.zeros(n, dtype=torch.float64)
        if kind == 0:
            s_rows = torch.zeros(n, dtype=torch.float64)
        else:
            target = tl if kind == 1 else F.softmax(t.double() * tscale, 1)
            s_rows = (target * (torch.log(target.clamp_min(1e-300)) - F.log_softmax(zr * sigma, 1))).sum(1)
        check(f"{name}: row terms", rows.float(), torch.stack([h_rows, s_rows], 1).detach().float())
        hard, soft = w_h * h_rows.sum(), w_s * s_rows.sum()
        check(f"{name}: totals", out, torch.stack([hard + soft, hard, soft]).detach().float())
        ((hard + soft) * float(up[0]) + hard * float(up[1]) + soft * float(up[2])).backward()
        check(f"{name}: gradient", grad, zr.grad.float())

    # A label out of range (labels read on the GPU are not checked before the
    # kernel): that row's terms and gradient are NaN, the others untouched.
    n, k = 4, 10
    z = torch.randn(n, k, generator=gen)
    labels = torch.tensor([3, 10, 0, 7], dtype=torch.int32)
    params = LossParams(1.0 / n, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1, 0)
    rows = torch.zeros(n, 2, dtype=torch.float64)
    lib.tfkd_fused_loss_rows_f32(ptr(z), None, ptr(labels), u64(n), i32(k), params, ptr(rows), None, None)
    grad = torch.zeros(n, k)
    up = torch.tensor([1.0, 0.0, 0.0])
    lib.tfkd_fused_loss_rows_f32(ptr(z), None, ptr(labels), u64(n), i32(k), params, None, ptr(grad), ptr(up))
    bad_row_nan = bool(rows[1].isnan().all()) and bool(grad[1].isnan().all())
    others_finite = bool(rows[[0, 2, 3]].isfinite().all()) and bool(grad[[0, 2, 3]].isfinite().all())
    ok = bad_row_nan and others_finite
    failures += 0 if ok else 1
    print(("ok  " if ok else "FAIL"), "label out of range: NaN row, other rows finite")

    print("all kernels match PyTorch" if failures == 0 else f"{failures} mismatches")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
