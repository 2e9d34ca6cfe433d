//! A guard against candle convolution regressions (peers-and-candle.md §4.5).
//!
//! candle 0.9.1 computed wrong conv2d weight gradients whenever batch > 1,
//! 0.9.2 a wrong forward when C == H == W, and ≤ 0.11.0 on CUDA the same
//! weight-gradient bug. For `L = Σ conv(x)²` (a sum over samples) the batched
//! weight gradient must equal the sum of per-sample gradients; all three
//! quantities (forward, weight and input gradients) are also checked against a
//! direct float64 convolution written out below.

// The checks read `!(err <= tol)` on purpose: a NaN error must fail them.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use candle_core::{DType, Device, Var};
use tfkd_core::rng::SeededRng;

mod common;
use common::{rel_err, to_f64, Case};

const CASES: &[Case] = &[
    Case { name: "3x3 s1", n: 4, c_in: 3, h: 8, w: 8, c_out: 5, k: 3, stride: 1, pad: 1, groups: 1 },
    Case { name: "3x3 s2 odd size", n: 4, c_in: 4, h: 9, w: 9, c_out: 6, k: 3, stride: 2, pad: 1, groups: 1 },
    Case { name: "1x1 s2 shortcut", n: 4, c_in: 8, h: 8, w: 8, c_out: 16, k: 1, stride: 2, pad: 0, groups: 1 },
    Case { name: "C == H == W = 8", n: 3, c_in: 8, h: 8, w: 8, c_out: 4, k: 3, stride: 1, pad: 1, groups: 1 },
    Case { name: "C == H == W = 16", n: 2, c_in: 16, h: 16, w: 16, c_out: 8, k: 3, stride: 1, pad: 1, groups: 1 },
    Case { name: "depthwise 3x3 s1", n: 4, c_in: 6, h: 7, w: 7, c_out: 6, k: 3, stride: 1, pad: 1, groups: 6 },
    Case { name: "depthwise 3x3 s2", n: 4, c_in: 8, h: 8, w: 8, c_out: 8, k: 3, stride: 2, pad: 1, groups: 8 },
    Case { name: "grouped 1x1", n: 4, c_in: 8, h: 5, w: 5, c_out: 12, k: 1, stride: 1, pad: 0, groups: 4 },
    Case { name: "grouped 3x3", n: 3, c_in: 8, h: 6, w: 6, c_out: 8, k: 3, stride: 1, pad: 1, groups: 2 },
    Case { name: "5x5 s2 non-square", n: 3, c_in: 5, h: 11, w: 7, c_out: 7, k: 5, stride: 2, pad: 2, groups: 1 },
];

/// Direct convolution in float64: returns (y, dL/dw, dL/dx) for L = Σ y².
fn reference(c: &Case, x: &[f64], wt: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (ho, wo) = ((c.h + 2 * c.pad - c.k) / c.stride + 1, (c.w + 2 * c.pad - c.k) / c.stride + 1);
    let (cig, cog) = (c.c_in / c.groups, c.c_out / c.groups);
    let xi = |n: usize, ch: usize, i: usize, j: usize| ((n * c.c_in + ch) * c.h + i) * c.w + j;
    let wi = |o: usize, ch: usize, a: usize, b: usize| ((o * cig + ch) * c.k + a) * c.k + b;
    let mut y = vec![0.0; c.n * c.c_out * ho * wo];
    let mut dw = vec![0.0; wt.len()];
    let mut dx = vec![0.0; x.len()];
    // Visits every (output, weight tap, input) triple once.
    let taps = |f: &mut dyn FnMut(usize, usize, usize, usize)| {
        for n in 0..c.n {
            for o in 0..c.c_out {
                let g = o / cog;
                for oi in 0..ho {
                    for oj in 0..wo {
                        let yi = ((n * c.c_out + o) * ho + oi) * wo + oj;
                        for ch in 0..cig {
                            for a in 0..c.k {
                                for b in 0..c.k {
                                    let (i, j) = ((oi * c.stride + a) as isize - c.pad as isize, (oj * c.stride + b) as isize - c.pad as isize);
                                    if i >= 0 && j >= 0 && (i as usize) < c.h && (j as usize) < c.w {
                                        f(yi, xi(n, g * cig + ch, i as usize, j as usize), wi(o, ch, a, b), 0);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    taps(&mut |yi, xi, wi, _| y[yi] += x[xi] * wt[wi]);
    taps(&mut |yi, xi, wi, _| {
        dw[wi] += 2.0 * y[yi] * x[xi];
        dx[xi] += 2.0 * y[yi] * wt[wi];
    });
    (y, dw, dx)
}

#[test]
fn conv2d_forward_and_gradients_are_right_for_batches() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(42);
    let mut failures = Vec::new();
    for c in CASES {
        let x = rng.uniform_tensor((c.n, c.c_in, c.h, c.w), -1.0, 1.0, DType::F32, &dev).unwrap();
        let w = Var::from_tensor(
            &rng.uniform_tensor((c.c_out, c.c_in / c.groups, c.k, c.k), -0.5, 0.5, DType::F32, &dev).unwrap(),
        )?;
        let xv = Var::from_tensor(&x)?;
        let y = xv.conv2d(&w, c.pad, c.stride, 1, c.groups)?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        let batched_dw = to_f64(grads.get(&w).unwrap());
        let batched_dx = to_f64(grads.get(&xv).unwrap());
        let mut summed_dw = vec![0.0; batched_dw.len()];
        for n in 0..c.n {
            let xn = x.narrow(0, n, 1)?;
            let g = xn.conv2d(&w, c.pad, c.stride, 1, c.groups)?.sqr()?.sum_all()?.backward()?;
            for (s, v) in summed_dw.iter_mut().zip(to_f64(g.get(&w).unwrap())) {
                *s += v;
            }
        }
        let (ry, rdw, rdx) = reference(c, &to_f64(&x), &to_f64(w.as_tensor()));
        for (what, err) in [
            ("forward", rel_err(&to_f64(&y), &ry)),
            ("weight gradient vs direct", rel_err(&batched_dw, &rdw)),
            ("weight gradient vs sum of per-sample", rel_err(&batched_dw, &summed_dw)),
            ("input gradient", rel_err(&batched_dx, &rdx)),
        ] {
            if !(err < 1e-5) {
                failures.push(format!("{} {what}: relative error {err:e}", c.name));
            }
        }
    }
    assert!(failures.is_empty(), "candle conv2d is wrong:\n{}", failures.join("\n"));
    Ok(())
}
