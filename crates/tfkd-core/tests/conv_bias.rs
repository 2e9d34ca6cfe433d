//! `tfkd_core::conv::add_channel_bias` against candle's `broadcast_add`:
//! values and gradients (input and bias) on random shapes (batch 1, odd
//! sizes, rank 2 to 5) in f32 and f64; `conv2d_with_bias` (the bias in place
//! on the convolution's output) against the two ops it replaces, and what
//! its graph keeps.

use candle_core::{DType, Device, Tensor, Var};
use tfkd_core::conv::{add_channel_bias, conv2d, conv2d_with_bias};
use tfkd_core::graph::kept_by_graph;
use tfkd_core::rng::SeededRng;

mod common;
use common::{rel_err, to_f64};

#[test]
fn channel_bias_matches_broadcast_add() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(41);
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        for case in 0..40 {
            let rank = 2 + case % 4;
            let mut dims = vec![1 + rng.below(5), 1 + rng.below(9)];
            for _ in 2..rank {
                dims.push(1 + rng.below(13));
            }
            if case == 39 {
                dims = vec![32, 24, 16, 16]; // several chunks on rayon's pool
            }
            let c = dims[1];
            let y = Var::from_tensor(&rng.uniform_tensor(dims.as_slice(), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&rng.uniform_tensor(c, -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
            let r = rng.uniform_tensor(dims.as_slice(), -1.0, 1.0, dtype, &dev).unwrap();
            let mut bshape = vec![1; dims.len()];
            bshape[1] = c;
            let want = y.broadcast_add(&b.reshape(bshape.as_slice()).unwrap()).unwrap();
            let got = add_channel_bias(&y, &b).unwrap();
            assert_eq!(to_f64(&got), to_f64(&want), "{dtype:?} {dims:?}: forward");
            let g = (&got * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (&want * &r).unwrap().sum_all().unwrap().backward().unwrap();
            assert_eq!(to_f64(g.get(&y).unwrap()), to_f64(g_ref.get(&y).unwrap()), "{dtype:?} {dims:?}: dy");
            let e = rel_err(&to_f64(g.get(&b).unwrap()), &to_f64(g_ref.get(&b).unwrap()));
            assert!(e < tol, "{dtype:?} {dims:?}: db relative error {e:e}");
        }
    }
}

#[test]
fn channel_bias_reports_bad_shapes() {
    let dev = Device::Cpu;
    let y = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
    let b = Tensor::zeros(4, DType::F32, &dev).unwrap();
    assert!(add_channel_bias(&y, &b).is_err());
    assert!(add_channel_bias(&b, &b).is_err());
}

/// Dense, strided, grouped and depthwise convolutions with a bias: the
/// in-place bias gives the same output and the same three gradients, bit for
/// bit, as a convolution followed by `add_channel_bias`, and its graph keeps
/// one buffer per convolution where the two ops keep two.
#[test]
fn conv_with_bias_in_place_is_the_two_ops_with_one_buffer_less() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(43);
    // (N, C_in, H, W), (C_out, k, padding, stride, groups)
    let cases = [
        ((2, 3, 9, 7), (5, 3, 1, 1, 1)),
        ((3, 4, 8, 8), (6, 3, 1, 2, 2)),
        ((2, 6, 7, 9), (6, 3, 1, 1, 6)),
        ((1, 4, 6, 6), (8, 1, 0, 1, 1)),
        ((4, 8, 17, 17), (8, 3, 1, 2, 8)),
    ];
    for dtype in [DType::F32, DType::F64] {
        for ((n, c, h, w), (co, k, p, s, g)) in cases {
            let x = Var::from_tensor(&rng.uniform_tensor((n, c, h, w), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
            let wt = Var::from_tensor(&rng.uniform_tensor((co, c / g, k, k), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
            let b = Var::from_tensor(&rng.uniform_tensor(co, -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
            // Through a tracked input, as inside a network.
            let x_in = (x.as_tensor() * 1.0).unwrap();
            let fused = conv2d_with_bias(&x_in, &wt, &b, p, s, g).unwrap();
            let two_ops = add_channel_bias(&conv2d(&x_in, &wt, p, s, g).unwrap(), &b).unwrap();
            let case = format!("{dtype:?} x {:?} w {:?} p {p} s {s} g {g}", x.dims(), wt.dims());
            assert_eq!(to_f64(&fused), to_f64(&two_ops), "{case}: forward");
            let r = rng.uniform_tensor(fused.dims(), -1.0, 1.0, dtype, &dev).unwrap();
            let (loss, loss_ref) = ((&fused * &r).unwrap().sum_all().unwrap(), (&two_ops * &r).unwrap().sum_all().unwrap());
            let out_bytes = (fused.elem_count() * dtype.size_in_bytes()) as u64;
            // Kept: x_in, the output, the product with r, the sum.
            let (kept, kept_ref) = (kept_by_graph(&loss), kept_by_graph(&loss_ref));
            assert_eq!(kept.bytes + out_bytes, kept_ref.bytes, "{case}: one output buffer less");
            let (gr, gr_ref) = (loss.backward().unwrap(), loss_ref.backward().unwrap());
            for (v, name) in [(&x, "dx"), (&wt, "dw"), (&b, "db")] {
                assert_eq!(to_f64(gr.get(v).unwrap()), to_f64(gr_ref.get(v).unwrap()), "{case}: {name}");
            }
        }
    }
}

/// Where the convolution's output cannot be changed in place (a dtype
/// without the fast op), the bias is a second op: same values.
#[test]
fn conv_with_bias_falls_back_where_the_op_does_not_run() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(44);
    let x = rng.uniform_tensor((2, 3, 5, 5), -1.0, 1.0, DType::F32, &dev).unwrap().to_dtype(DType::F16).unwrap();
    let w = Var::from_tensor(&rng.uniform_tensor((4, 3, 3, 3), -1.0, 1.0, DType::F32, &dev).unwrap().to_dtype(DType::F16).unwrap()).unwrap();
    let b = Var::from_tensor(&rng.uniform_tensor(4, -1.0, 1.0, DType::F32, &dev).unwrap().to_dtype(DType::F16).unwrap()).unwrap();
    let got = conv2d_with_bias(&x, &w, &b, 1, 1, 1).unwrap();
    let want = add_channel_bias(&conv2d(&x, &w, 1, 1, 1).unwrap(), &b).unwrap();
    assert_eq!(to_f64(&got), to_f64(&want));
    let g = got.sum_all().unwrap().backward().unwrap();
    assert_eq!(g.get(&b).unwrap().dims(), &[4]);
}

/// A biased convolution followed by ReLU / ReLU6 (AlexNet's): with the
/// activation in the bias's in-place op, the same output and gradients, bit
/// for bit, as `conv2d_with_bias` then the activation, and one output
/// buffer less kept; where the bias cannot run in place (f16) the two ops.
#[test]
fn conv_with_bias_and_activation_in_place_is_the_ops_with_one_buffer_less() {
    use tfkd_core::activation::Activation;
    use tfkd_core::conv::conv2d_with_bias_act;
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(45);
    for dtype in [DType::F32, DType::F64] {
        for act in [Activation::Relu, Activation::Relu6] {
            for ((n, c, h, w), (co, k, p, s, g)) in [((2, 3, 9, 7), (5, 3, 1, 1, 1)), ((3, 4, 8, 8), (6, 3, 1, 2, 2)), ((2, 6, 7, 9), (6, 3, 1, 1, 6))] {
                let x = Var::from_tensor(&rng.uniform_tensor((n, c, h, w), -3.0, 3.0, dtype, &dev).unwrap()).unwrap();
                let wt = Var::from_tensor(&rng.uniform_tensor((co, c / g, k, k), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
                let b = Var::from_tensor(&rng.uniform_tensor(co, -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
                let x_in = (x.as_tensor() * 1.0).unwrap();
                let fused = conv2d_with_bias_act(&x_in, &wt, &b, act, p, s, g).unwrap();
                let two_ops = act.apply(&conv2d_with_bias(&x_in, &wt, &b, p, s, g).unwrap()).unwrap();
                let case = format!("{dtype:?} {act:?} x {:?} w {:?} p {p} s {s} g {g}", x.dims(), wt.dims());
                assert_eq!(to_f64(&fused), to_f64(&two_ops), "{case}: forward");
                let r = rng.uniform_tensor(fused.dims(), -1.0, 1.0, dtype, &dev).unwrap();
                let (loss, loss_ref) = ((&fused * &r).unwrap().sum_all().unwrap(), (&two_ops * &r).unwrap().sum_all().unwrap());
                let out_bytes = (fused.elem_count() * dtype.size_in_bytes()) as u64;
                assert_eq!(kept_by_graph(&loss).bytes + out_bytes, kept_by_graph(&loss_ref).bytes, "{case}: one output buffer less");
                let (gr, gr_ref) = (loss.backward().unwrap(), loss_ref.backward().unwrap());
                for (v, name) in [(&x, "dx"), (&wt, "dw"), (&b, "db")] {
                    assert_eq!(to_f64(gr.get(v).unwrap()), to_f64(gr_ref.get(v).unwrap()), "{case}: {name}");
                }
            }
        }
    }
    let f16 = |t: Tensor| t.to_dtype(DType::F16).unwrap();
    let x = f16(rng.uniform_tensor((2, 3, 5, 5), -1.0, 1.0, DType::F32, &dev).unwrap());
    let w = f16(rng.uniform_tensor((4, 3, 3, 3), -1.0, 1.0, DType::F32, &dev).unwrap());
    let b = f16(rng.uniform_tensor(4, -1.0, 1.0, DType::F32, &dev).unwrap());
    let got = conv2d_with_bias_act(&x, &w, &b, Activation::Relu, 1, 1, 1).unwrap();
    let want = Activation::Relu.apply(&conv2d_with_bias(&x, &w, &b, 1, 1, 1).unwrap()).unwrap();
    assert_eq!(to_f64(&got), to_f64(&want), "f16: the two ops");
}
