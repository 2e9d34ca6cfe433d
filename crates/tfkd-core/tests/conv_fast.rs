//! `tfkd_core::conv::conv2d` against `Tensor::conv2d` + candle's autograd:
//! forward values and the gradients for the input and the kernel, on the
//! shapes the zoo uses (strided, 1×1 with padding, grouped, depthwise, …).
//!
//! Non-square cases keep `(H + 2p − k) mod s` equal for both spatial dims:
//! candle 0.11.1's own conv2d backward derives the output padding from the
//! height only and fails otherwise.

use candle_core::{DType, Device, Tensor, Var};
use tfkd_core::conv::conv2d;
use tfkd_core::rng::SeededRng;

mod common;
use common::Case;

#[rustfmt::skip]
const CASES: &[Case] = &[
    Case { name: "3x3 s1 p1", n: 2, c_in: 3, h: 8, w: 8, c_out: 5, k: 3, stride: 1, pad: 1, groups: 1 },
    Case { name: "3x3 s2 p1 odd", n: 3, c_in: 4, h: 9, w: 9, c_out: 6, k: 3, stride: 2, pad: 1, groups: 1 },
    Case { name: "3x3 s2 p1 even", n: 2, c_in: 4, h: 8, w: 10, c_out: 6, k: 3, stride: 2, pad: 1, groups: 1 },
    Case { name: "1x1 s1 p0", n: 2, c_in: 8, h: 6, w: 6, c_out: 4, k: 1, stride: 1, pad: 0, groups: 1 },
    Case { name: "1x1 s2 p0", n: 2, c_in: 8, h: 8, w: 10, c_out: 16, k: 1, stride: 2, pad: 0, groups: 1 },
    Case { name: "1x1 s1 p1 (MobileNetV2)", n: 2, c_in: 5, h: 6, w: 6, c_out: 7, k: 1, stride: 1, pad: 1, groups: 1 },
    Case { name: "5x5 s2 p2 non-square", n: 2, c_in: 3, h: 11, w: 9, c_out: 4, k: 5, stride: 2, pad: 2, groups: 1 },
    Case { name: "7x7 s2 p3", n: 2, c_in: 3, h: 16, w: 16, c_out: 8, k: 7, stride: 2, pad: 3, groups: 1 },
    Case { name: "3x3 s3 p0", n: 2, c_in: 3, h: 10, w: 13, c_out: 4, k: 3, stride: 3, pad: 0, groups: 1 },
    // Output as wide as the input (im2col copies a whole shifted plane per
    // tap), down to taps that read only the padding.
    Case { name: "5x5 s1 p2 same width", n: 3, c_in: 4, h: 7, w: 6, c_out: 5, k: 5, stride: 1, pad: 2, groups: 1 },
    Case { name: "7x7 s1 p3 on 2x2", n: 2, c_in: 3, h: 2, w: 2, c_out: 4, k: 7, stride: 1, pad: 3, groups: 1 },
    Case { name: "groups 2", n: 2, c_in: 6, h: 7, w: 7, c_out: 8, k: 3, stride: 1, pad: 1, groups: 2 },
    Case { name: "groups 4 s2", n: 2, c_in: 8, h: 8, w: 8, c_out: 12, k: 3, stride: 2, pad: 1, groups: 4 },
    Case { name: "groups 8 s2 odd (ResNeXt)", n: 3, c_in: 16, h: 9, w: 7, c_out: 24, k: 3, stride: 2, pad: 1, groups: 8 },
    Case { name: "groups 2 1x1", n: 2, c_in: 6, h: 5, w: 5, c_out: 4, k: 1, stride: 1, pad: 0, groups: 2 },
    Case { name: "groups 3 5x5 s2", n: 2, c_in: 6, h: 11, w: 9, c_out: 9, k: 5, stride: 2, pad: 2, groups: 3 },
    Case { name: "depthwise s2", n: 2, c_in: 6, h: 9, w: 9, c_out: 6, k: 3, stride: 2, pad: 1, groups: 6 },
    Case { name: "batch 5", n: 5, c_in: 4, h: 6, w: 6, c_out: 3, k: 3, stride: 1, pad: 1, groups: 1 },
    Case { name: "C == H == W", n: 2, c_in: 8, h: 8, w: 8, c_out: 8, k: 3, stride: 1, pad: 1, groups: 1 },
    // Enough work per image to run in parallel: fewer images than threads
    // (products split over the pool), more images than threads (a job each).
    Case { name: "batch 1", n: 1, c_in: 16, h: 16, w: 16, c_out: 16, k: 3, stride: 1, pad: 1, groups: 1 },
    Case { name: "batch 1 s2 groups 2", n: 1, c_in: 16, h: 15, w: 15, c_out: 32, k: 3, stride: 2, pad: 1, groups: 2 },
    Case { name: "batch 7", n: 7, c_in: 12, h: 12, w: 10, c_out: 10, k: 3, stride: 1, pad: 1, groups: 1 },
    Case { name: "batch 7 s2 groups 4", n: 7, c_in: 16, h: 13, w: 13, c_out: 16, k: 3, stride: 2, pad: 1, groups: 4 },
    Case { name: "batch 7 1x1", n: 7, c_in: 64, h: 8, w: 8, c_out: 32, k: 1, stride: 1, pad: 0, groups: 1 },
    Case { name: "batch 7 groups 4 1x1", n: 7, c_in: 32, h: 9, w: 9, c_out: 16, k: 1, stride: 1, pad: 0, groups: 4 },
    Case { name: "batch 7 7x7 s2 p3", n: 7, c_in: 3, h: 20, w: 20, c_out: 16, k: 7, stride: 2, pad: 3, groups: 1 },
    // Small feature maps: images multiplied together in blocks of
    // ⌈256 / H_o·W_o⌉ (4 at 8×8, 16 at 4×4), the last block partial, down
    // to a single image.
    Case { name: "blocks 8x8 4+4+2", n: 10, c_in: 8, h: 8, w: 8, c_out: 12, k: 3, stride: 1, pad: 1, groups: 1 },
    Case { name: "blocks 4x4 1x1 16+16+5", n: 37, c_in: 16, h: 4, w: 4, c_out: 8, k: 1, stride: 1, pad: 0, groups: 1 },
    Case { name: "blocks s2 groups 2 4+4+1", n: 9, c_in: 8, h: 15, w: 15, c_out: 8, k: 3, stride: 2, pad: 1, groups: 2 },
    Case { name: "blocks 1x1 groups 4 4+4+1", n: 9, c_in: 16, h: 8, w: 8, c_out: 8, k: 1, stride: 1, pad: 0, groups: 4 },
];

fn max_abs(t: &Tensor) -> f64 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    common::rel_err(&common::to_f64(a), &common::to_f64(b))
}

#[test]
fn fast_conv2d_matches_candle() {
    matches_candle(DType::F32, 1e-5);
}

/// The f64 kernels, to f64 precision.
#[test]
fn fast_conv2d_matches_candle_f64() {
    matches_candle(DType::F64, 1e-12);
}

/// The tensor-op path of CUDA and Metal, which the CPU takes for the
/// dtypes without CPU kernels: f16 here, against candle's f32 convolution
/// of the same (f16-rounded) values, at f16 precision.
#[test]
fn tensor_op_path_matches_candle() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(5);
    for c in CASES.iter().filter(|c| c.groups == 1 || c.c_in != c.groups) {
        let x0 = rng.uniform_tensor((c.n, c.c_in, c.h, c.w), -1.0, 1.0, DType::F32, &dev).unwrap();
        let w0 = rng.uniform_tensor((c.c_out, c.c_in / c.groups, c.k, c.k), -0.5, 0.5, DType::F32, &dev).unwrap();
        let (x0, w0) = (x0.to_dtype(DType::F16).unwrap(), w0.to_dtype(DType::F16).unwrap());
        let (x, w) = (Var::from_tensor(&x0).unwrap(), Var::from_tensor(&w0).unwrap());
        let x32 = Var::from_tensor(&x0.to_dtype(DType::F32).unwrap()).unwrap();
        let w32 = Var::from_tensor(&w0.to_dtype(DType::F32).unwrap()).unwrap();
        let y = conv2d(&x, &w, c.pad, c.stride, c.groups).unwrap();
        let y_ref = x32.conv2d(&w32, c.pad, c.stride, 1, c.groups).unwrap();
        let e = rel_err(&y.to_dtype(DType::F32).unwrap(), &y_ref);
        assert!(e < 1e-2, "{} f16: forward rel err {e}", c.name);
        let r = rng.uniform_tensor(y.dims(), -1.0, 1.0, DType::F32, &dev).unwrap();
        let g = (&y * &r.to_dtype(DType::F16).unwrap()).unwrap().sum_all().unwrap().backward().unwrap();
        let r = r.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
        let g_ref = (&y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (what, v, v32) in [("x", &x, &x32), ("w", &w, &w32)] {
            let a = g.get(v).unwrap().to_dtype(DType::F32).unwrap();
            let e = rel_err(&a, g_ref.get(v32).unwrap());
            assert!(e < 1e-2, "{} f16: d{what} rel err {e}", c.name);
        }
    }
}

fn matches_candle(dtype: DType, tol: f64) {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(7);
    for c in CASES {
        let x0 = rng
            .uniform_tensor((c.n, c.c_in, c.h, c.w), -1.0, 1.0, dtype, &dev)
            .unwrap();
        let w0 = rng
            .uniform_tensor(
                (c.c_out, c.c_in / c.groups, c.k, c.k),
                -0.5,
                0.5,
                dtype,
                &dev,
            )
            .unwrap();
        let x = Var::from_tensor(&x0).unwrap();
        let w = Var::from_tensor(&w0).unwrap();
        let y_ref = x.conv2d(&w, c.pad, c.stride, 1, c.groups).unwrap();
        let y = conv2d(&x, &w, c.pad, c.stride, c.groups).unwrap();
        assert_eq!(y.dims(), y_ref.dims(), "{}: output shape", c.name);
        let e = rel_err(&y, &y_ref);
        assert!(e < tol, "{} {dtype:?}: forward rel err {e}", c.name);
        // A non-uniform upstream gradient: L = Σ y ⊙ r.
        let r = rng
            .uniform_tensor(y.dims(), -1.0, 1.0, dtype, &dev)
            .unwrap();
        let g_ref = (&y_ref * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (what, v) in [("x", &x), ("w", &w)] {
            let a = g
                .get(v)
                .unwrap_or_else(|| panic!("{}: no gradient for {what}", c.name));
            let b = g_ref.get(v).unwrap();
            let e = rel_err(a, b);
            assert!(e < tol, "{} {dtype:?}: d{what} rel err {e}", c.name);
        }
    }
}

#[test]
fn fast_conv2d_reports_bad_shapes() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 5, 5), DType::F32, &dev).unwrap();
    let w = Tensor::zeros((3, 3, 3, 3), DType::F32, &dev).unwrap();
    let e = conv2d(&x, &w, 1, 1, 1).unwrap_err().to_string();
    assert!(e.contains('4') && e.contains('3'), "{e}");
    let w = Tensor::zeros((3, 4, 7, 7), DType::F32, &dev).unwrap();
    assert!(conv2d(&x, &w, 0, 1, 1).is_err());
    assert!(conv2d(&x, &w, 1, 0, 1).is_err());
    let w = Tensor::zeros((3, 2, 3, 3), DType::F32, &dev).unwrap();
    assert!(
        conv2d(&x, &w, 1, 1, 2).is_err(),
        "3 output channels in 2 groups"
    );
}

/// Different output paddings along H and W (which candle's own backward
/// cannot do): the last input column of a 9×10 input with stride 2, padding
/// 0 is never read, so everything must match candle on the 9×9 crop and that
/// column's input gradient must be zero.
#[test]
fn fast_conv2d_mixed_output_padding() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(11);
    for k in [1usize, 3] {
        let x0 = rng
            .uniform_tensor((2, 3, 9, 10), -1.0, 1.0, DType::F32, &dev)
            .unwrap();
        let w0 = rng
            .uniform_tensor((4, 3, k, k), -0.5, 0.5, DType::F32, &dev)
            .unwrap();
        let (x, w) = (
            Var::from_tensor(&x0).unwrap(),
            Var::from_tensor(&w0).unwrap(),
        );
        let x9 = Var::from_tensor(&x0.narrow(3, 0, 9).unwrap().contiguous().unwrap()).unwrap();
        let w9 = Var::from_tensor(&w0).unwrap();
        let y = conv2d(&x, &w, 0, 2, 1).unwrap();
        let y_ref = x9.conv2d(&w9, 0, 2, 1, 1).unwrap();
        assert!(rel_err(&y, &y_ref) < 1e-5, "k{k}: forward");
        let r = rng
            .uniform_tensor(y.dims(), -1.0, 1.0, DType::F32, &dev)
            .unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (&y_ref * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dx = g.get(&x).unwrap();
        let e = rel_err(&dx.narrow(3, 0, 9).unwrap(), g_ref.get(&x9).unwrap());
        assert!(e < 1e-5, "k{k}: dx rel err {e}");
        assert_eq!(
            max_abs(&dx.narrow(3, 9, 1).unwrap()),
            0.0,
            "k{k}: unread column"
        );
        let e = rel_err(g.get(&w).unwrap(), g_ref.get(&w9).unwrap());
        assert!(e < 1e-5, "k{k}: dw rel err {e}");
    }
}

/// Padding larger than the kernel (whole im2col rows and columns of zeros)
/// and strides up to 3, against candle on the explicitly padded input.
#[test]
fn fast_conv2d_wide_padding() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(13);
    for (k, s, p, h, w) in [(1usize, 1usize, 3usize, 2usize, 3usize), (1, 2, 4, 3, 3), (3, 3, 4, 4, 4), (1, 3, 2, 1, 4), (3, 1, 3, 2, 2)] {
        let x0 = rng.uniform_tensor((2, 3, h, w), -1.0, 1.0, DType::F32, &dev).unwrap();
        let w0 = rng.uniform_tensor((4, 3, k, k), -0.5, 0.5, DType::F32, &dev).unwrap();
        let (x, wv) = (Var::from_tensor(&x0).unwrap(), Var::from_tensor(&w0).unwrap());
        let y = conv2d(&x, &wv, p, s, 1).unwrap();
        let r = rng.uniform_tensor(y.dims(), -1.0, 1.0, DType::F32, &dev).unwrap();
        let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        // Reference: the same convolution on the explicitly padded input
        // (padding 0), whose input gradient is cropped back.
        let xp = Var::from_tensor(&x0.pad_with_zeros(2, p, p).unwrap().pad_with_zeros(3, p, p).unwrap()).unwrap();
        let wr = Var::from_tensor(&w0).unwrap();
        let y_ref = xp.conv2d(&wr, 0, s, 1, 1).unwrap();
        assert!(rel_err(&y, &y_ref) < 1e-5, "k{k} s{s} p{p}: forward");
        let g_ref = (&y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let dx_ref = g_ref.get(&xp).unwrap().narrow(2, p, h).unwrap().narrow(3, p, w).unwrap();
        let e = rel_err(g.get(&x).unwrap(), &dx_ref);
        assert!(e < 1e-5 || max_abs(&dx_ref) == 0.0 && max_abs(g.get(&x).unwrap()) == 0.0, "k{k} s{s} p{p}: dx rel err {e}");
        let e = rel_err(g.get(&wv).unwrap(), g_ref.get(&wr).unwrap());
        assert!(e < 1e-5, "k{k} s{s} p{p}: dw rel err {e}");
    }
}

/// The CPU engine's results depend neither on the scheduling nor on the
/// number of threads (so `reproduce-table` gives the same numbers on any
/// core count): the weight gradient's partials cover fixed blocks of images
/// and are added in a fixed order.
#[test]
fn fast_conv2d_is_deterministic() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(17);
    // 6×6 outputs: blocks of 8 images. 21 images: three blocks, a job
    // each; 7 and 2 images: one block, fewer than threads, so its products
    // are split over the pool.
    for n in [21, 7, 2] {
        let x0 = rng.uniform_tensor((n, 16, 12, 12), -1.0, 1.0, DType::F32, &dev).unwrap();
        let w0 = rng.uniform_tensor((16, 8, 3, 3), -0.5, 0.5, DType::F32, &dev).unwrap();
        let r = rng.uniform_tensor((n, 16, 6, 6), -1.0, 1.0, DType::F32, &dev).unwrap();
        let run = || {
            let (x, w) = (Var::from_tensor(&x0).unwrap(), Var::from_tensor(&w0).unwrap());
            let y = conv2d(&x, &w, 1, 2, 2).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            [y, g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone()]
                .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        };
        let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap().install(run);
        for threads in [1, 2, 3, 5] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            for _ in 0..3 {
                assert_eq!(pool.install(run), one_thread, "batch {n}, {threads} threads");
            }
        }
    }
}

/// A channel slice of a tracked tensor as the input (ShuffleNetV2's split):
/// the same values and gradients as the slice made contiguous first, and the
/// graph keeps the slice as it is, with no contiguous copy of it (the
/// convolution's kernels read a copy that lives while a pass runs).
#[test]
fn a_channel_slice_is_convolved_without_a_kept_copy() {
    use tfkd_core::graph::kept_by_graph;
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(45);
    for dtype in [DType::F32, DType::F64] {
        let whole = Var::from_tensor(&rng.uniform_tensor((3, 8, 7, 7), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
        let w = Var::from_tensor(&rng.uniform_tensor((5, 4, 3, 3), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
        let r = rng.uniform_tensor((3, 5, 4, 4), -1.0, 1.0, dtype, &dev).unwrap();
        let run = |copy_first: bool| {
            let x = (whole.as_tensor() * 1.0).unwrap(); // a graph node, as inside a network
            let mut half = x.narrow(1, 4, 4).unwrap();
            if copy_first {
                half = half.contiguous().unwrap();
            }
            let y = conv2d(&half, &w, 1, 2, 1).unwrap();
            let loss = (&y * &r).unwrap().sum_all().unwrap();
            let kept = kept_by_graph(&loss);
            let grads = loss.backward().unwrap();
            (y, kept, grads.get(&whole).unwrap().clone(), grads.get(&w).unwrap().clone())
        };
        let (y, kept, dx, dw) = run(false);
        let (y_ref, kept_ref, dx_ref, dw_ref) = run(true);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(flat(&y), flat(&y_ref), "{dtype:?}: forward");
        assert_eq!(flat(&dx), flat(&dx_ref), "{dtype:?}: dx");
        assert_eq!(flat(&dw), flat(&dw_ref), "{dtype:?}: dw");
        let half_bytes = (3 * 4 * 7 * 7 * dtype.size_in_bytes()) as u64;
        assert_eq!(kept.bytes + half_bytes, kept_ref.bytes, "{dtype:?}: no copy of the slice kept");
    }
}

/// `cat_conv2d` (DenseNet's `cat([x, conv(h)], 1)` as one op) against the
/// two ops: the same values and gradients (x, h, w) bit for bit, one
/// convolution output fewer kept by the graph; and a concatenation that
/// does not fit is an error naming the shapes.
#[test]
fn cat_conv2d_is_the_two_ops_with_one_buffer_less() {
    use tfkd_core::conv::cat_conv2d;
    use tfkd_core::graph::kept_by_graph;
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(46);
    // (x channels, h (N, C, H, W), (C_out, k, padding, stride, groups))
    let cases = [(6, (2, 5, 8, 8), (3, 3, 1, 1, 1)), (4, (3, 8, 9, 9), (4, 3, 1, 2, 2)), (2, (2, 4, 5, 5), (5, 1, 0, 1, 1))];
    for dtype in [DType::F32, DType::F64] {
        for (cx, (n, c, h, w), (co, k, p, s, g)) in cases {
            let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let x = Var::from_tensor(&rng.uniform_tensor((n, cx, ho, wo), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
            let hv = Var::from_tensor(&rng.uniform_tensor((n, c, h, w), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
            let wv = Var::from_tensor(&rng.uniform_tensor((co, c / g, k, k), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
            let r = rng.uniform_tensor((n, cx + co, ho, wo), -1.0, 1.0, dtype, &dev).unwrap();
            let run = |fused: bool| {
                // Through tracked nodes, as inside a network.
                let (x_in, h_in) = ((x.as_tensor() * 1.0).unwrap(), (hv.as_tensor() * 1.0).unwrap());
                let y = if fused {
                    cat_conv2d(&x_in, &h_in, &wv, p, s, g).unwrap()
                } else {
                    Tensor::cat(&[&x_in, &conv2d(&h_in, &wv, p, s, g).unwrap()], 1).unwrap()
                };
                let loss = (&y * &r).unwrap().sum_all().unwrap();
                let kept = kept_by_graph(&loss).bytes;
                let grads = loss.backward().unwrap();
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
                (flat(&y), [&x, &hv, &wv].map(|v| flat(grads.get(v).unwrap())), kept)
            };
            let (got, want) = (run(true), run(false));
            let case = format!("{dtype:?} x {cx} h {:?} k {k} p {p} s {s} g {g}", (n, c, h, w));
            assert_eq!(got.0, want.0, "{case}: forward");
            for (i, name) in ["dx", "dh", "dw"].iter().enumerate() {
                assert_eq!(got.1[i], want.1[i], "{case}: {name}");
            }
            let y_bytes = (n * co * ho * wo * dtype.size_in_bytes()) as u64;
            assert_eq!(got.2 + y_bytes, want.2, "{case}: the convolution's output is not kept");
        }
    }
    let x = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
    let h = Var::zeros((2, 3, 5, 5), DType::F32, &dev).unwrap();
    let w = Var::zeros((2, 3, 3, 3), DType::F32, &dev).unwrap();
    let err = cat_conv2d(&x, &h, &w, 1, 1, 1).unwrap_err().to_string();
    assert!(err.contains("[2, 3, 4, 4]") && err.contains("(2, 2, 5, 5)"), "{err}");
}
