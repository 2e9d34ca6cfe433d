//! `tfkd_core::conv::{conv2d_add, conv2d_accumulate}` (a convolution's
//! output summed with a residual, the sum written into a buffer given up)
//! against the two ops they replace: the same values and gradients, bit for
//! bit, on dense, strided, grouped and depthwise convolutions in f32 and
//! f64; fewer buffers kept by the graph; a residual held elsewhere
//! left untouched; and the fallbacks (another dtype, a shape mismatch).

use candle_core::{DType, Device, Tensor, Var};
use tfkd_core::conv::{conv2d, conv2d_accumulate, conv2d_add};
use tfkd_core::graph::kept_by_graph;
use tfkd_core::rng::SeededRng;

mod common;
use common::to_f64;

/// (N, C_in, H, W), (C_out, k, padding, stride, groups)
type Case = ((usize, usize, usize, usize), (usize, usize, usize, usize, usize));

const CASES: [Case; 6] = [
    ((2, 3, 9, 7), (5, 3, 1, 1, 1)),
    ((3, 4, 8, 8), (6, 3, 1, 2, 2)),
    ((2, 6, 7, 9), (6, 3, 1, 1, 6)),
    ((1, 4, 6, 6), (8, 1, 0, 2, 1)),
    ((4, 8, 17, 17), (8, 3, 1, 2, 8)),
    // A sum of several chunks, over rayon's pool.
    ((2, 4, 64, 64), (16, 3, 1, 1, 1)),
];

/// The sums, each against `conv(x, w) + r` / `r + conv(x, w)` as two ops:
/// the forward, what the graph keeps (no convolution output; accumulated,
/// the residual is the sum's buffer too), and the gradients of x, w and the
/// residual's source.
#[test]
fn the_sums_in_place_are_the_two_ops_with_fewer_buffers() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(71);
    for dtype in [DType::F32, DType::F64] {
        for ((n, c, h, w), (co, k, p, s, g)) in CASES {
            for accumulate in [false, true] {
                let x = Var::from_tensor(&rng.uniform_tensor((n, c, h, w), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
                let wt = Var::from_tensor(&rng.uniform_tensor((co, c / g, k, k), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
                let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
                let src = Var::from_tensor(&rng.uniform_tensor((n, co, ho, wo), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
                let up = rng.uniform_tensor((n, co, ho, wo), -1.0, 1.0, dtype, &dev).unwrap();
                let mix = Var::from_tensor(&rng.uniform_tensor((co, co, 1, 1), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
                let case = format!("{dtype:?} x {:?} w {:?} p {p} s {s} g {g} accumulate {accumulate}", x.dims(), wt.dims());
                // Through tracked ops, as inside a network: the residual is a
                // fresh convolution's output (`accumulate` gives it up), as
                // a Wide ResNet block's second convolution's.
                let run = |fused: bool| {
                    let x_in = (x.as_tensor() * 1.0).unwrap();
                    let r = conv2d(&(src.as_tensor() * 1.0).unwrap(), &mix, 0, 1, 1).unwrap();
                    let y = match (fused, accumulate) {
                        (true, false) => conv2d_add(&x_in, &wt, &r, p, s, g).unwrap(),
                        (true, true) => conv2d_accumulate(r, &x_in, &wt, p, s, g).unwrap(),
                        (false, false) => (conv2d(&x_in, &wt, p, s, g).unwrap() + &r).unwrap(),
                        (false, true) => (&r + conv2d(&x_in, &wt, p, s, g).unwrap()).unwrap(),
                    };
                    let loss = (&y * &up).unwrap().sum_all().unwrap();
                    let kept = kept_by_graph(&loss).bytes;
                    let grads = loss.backward().unwrap();
                    let grads = [&x, &wt, &src].map(|v| to_f64(grads.get(v).unwrap()));
                    (to_f64(&y), kept, grads)
                };
                let (fused, two_ops) = (run(true), run(false));
                assert_eq!(fused.0, two_ops.0, "{case}: forward");
                // The convolution's output is not kept; accumulated, the
                // residual and the sum are one buffer too.
                let out_bytes = (n * co * ho * wo * dtype.size_in_bytes()) as u64;
                let fewer = if accumulate { 2 } else { 1 };
                assert_eq!(fused.1 + fewer * out_bytes, two_ops.1, "{case}: {fewer} output buffers less");
                for (i, name) in ["dx", "dw", "dresidual"].iter().enumerate() {
                    assert_eq!(fused.2[i], two_ops.2[i], "{case}: {name}");
                }
            }
        }
    }
}

/// A residual that another tensor still holds is not written: the sum is
/// then a new buffer, with the same values, and the residual is unchanged.
#[test]
fn a_residual_held_elsewhere_is_not_written() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(72);
    let x = Var::from_tensor(&rng.uniform_tensor((2, 3, 6, 6), -1.0, 1.0, DType::F32, &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&rng.uniform_tensor((4, 3, 3, 3), -1.0, 1.0, DType::F32, &dev).unwrap()).unwrap();
    let r = (rng.uniform_tensor((2, 4, 6, 6), -1.0, 1.0, DType::F32, &dev).unwrap() * 1.0).unwrap();
    let before = to_f64(&r);
    let want = to_f64(&(&r + conv2d(&x, &w, 1, 1, 1).unwrap()).unwrap());
    let got = conv2d_accumulate(r.clone(), &x, &w, 1, 1, 1).unwrap();
    assert_eq!(to_f64(&got), want);
    assert_eq!(to_f64(&r), before, "the residual held by the caller is unchanged");
    // `conv2d_add` never writes its residual.
    let got = conv2d_add(&x, &w, &r, 1, 1, 1).unwrap();
    assert_eq!(to_f64(&got), want);
    assert_eq!(to_f64(&r), before);
}

/// Where the sum has no kernel of tfkd's (f16 on the CPU), the two ops run:
/// same values, gradients for every operand. A residual of another shape
/// is an error naming the shapes.
#[test]
fn the_sums_fall_back_and_report_bad_shapes() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(73);
    let f16 = |t: Tensor| t.to_dtype(DType::F16).unwrap();
    let x = f16(rng.uniform_tensor((2, 3, 5, 5), -1.0, 1.0, DType::F32, &dev).unwrap());
    let w = Var::from_tensor(&f16(rng.uniform_tensor((4, 3, 3, 3), -1.0, 1.0, DType::F32, &dev).unwrap())).unwrap();
    let r = Var::from_tensor(&f16(rng.uniform_tensor((2, 4, 5, 5), -1.0, 1.0, DType::F32, &dev).unwrap())).unwrap();
    let want = to_f64(&(conv2d(&x, &w, 1, 1, 1).unwrap() + r.as_tensor()).unwrap());
    let got = conv2d_add(&x, &w, &r, 1, 1, 1).unwrap();
    assert_eq!(to_f64(&got), want);
    let g = got.sum_all().unwrap().backward().unwrap();
    assert!(g.get(&w).is_some() && g.get(&r).is_some());
    let got = conv2d_accumulate((r.as_tensor() * 1.0).unwrap(), &x, &w, 1, 1, 1).unwrap();
    assert_eq!(to_f64(&got), want);

    let x = rng.uniform_tensor((2, 3, 5, 5), -1.0, 1.0, DType::F32, &dev).unwrap();
    let w = rng.uniform_tensor((4, 3, 3, 3), -1.0, 1.0, DType::F32, &dev).unwrap();
    let wrong = Tensor::zeros((2, 4, 4, 4), DType::F32, &dev).unwrap();
    for err in [conv2d_add(&x, &w, &wrong, 1, 1, 1).unwrap_err(), conv2d_accumulate(wrong.clone(), &x, &w, 1, 1, 1).unwrap_err()] {
        let msg = err.to_string();
        assert!(msg.contains("[2, 4, 4, 4]") && msg.contains("[2, 4, 5, 5]"), "{msg}");
    }
}

/// A residual made by an op that reads its own output in its backward pass
/// (max pooling: its gradient goes to the window's maximum, found again
/// from the output; BatchNorm with its ReLU: the mask is the output) is not
/// written: the sum is a new buffer, and every gradient is the two ops'.
#[test]
fn a_residual_whose_op_reads_its_output_is_not_written() {
    use tfkd_core::activation::Activation;
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(74);
    let h = Var::from_tensor(&rng.uniform_tensor((2, 4, 8, 8), -1.0, 1.0, DType::F32, &dev).unwrap()).unwrap();
    let x = Var::from_tensor(&rng.uniform_tensor((2, 3, 4, 4), -1.0, 1.0, DType::F32, &dev).unwrap()).unwrap();
    let w = Var::from_tensor(&rng.uniform_tensor((4, 3, 3, 3), -1.0, 1.0, DType::F32, &dev).unwrap()).unwrap();
    let up = rng.uniform_tensor((2, 4, 4, 4), -1.0, 1.0, DType::F32, &dev).unwrap();
    let vm = candle_nn::VarMap::new();
    let bn = tfkd_core::norm::BatchNorm::new(4, 1e-5, 0.1, candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev)).unwrap();
    for maker in ["max pool", "batch norm + relu"] {
        let run = |fused: bool| {
            let r = match maker {
                "max pool" => tfkd_core::pool::max_pool2d(&h, 2, 2, 0).unwrap(),
                _ => bn.forward_act_t(&(h.as_tensor() * 1.0).unwrap().narrow(2, 0, 4).unwrap().narrow(3, 0, 4).unwrap(), true, Some(Activation::Relu)).unwrap(),
            };
            let y = if fused {
                conv2d_accumulate(r, &x, &w, 1, 1, 1).unwrap()
            } else {
                (&r + conv2d(&x, &w, 1, 1, 1).unwrap()).unwrap()
            };
            let g = (&y * &up).unwrap().sum_all().unwrap().backward().unwrap();
            (to_f64(&y), [&h, &x, &w].map(|v| to_f64(g.get(v).unwrap())))
        };
        let (fused, two_ops) = (run(true), run(false));
        assert_eq!(fused.0, two_ops.0, "{maker}: forward");
        for (i, name) in ["dh", "dx", "dw"].iter().enumerate() {
            assert_eq!(fused.1[i], two_ops.1[i], "{maker}: {name}");
        }
    }
}
