//! `tfkd_core::conv::depthwise_conv2d` (and `conv2d` with `groups = C_in`,
//! which routes to it) against a direct float64 convolution and against
//! candle's composed `Tensor::conv2d` + autograd: forward values, input and
//! kernel gradients, on random shapes (batch 1, odd sizes, strides 1–3,
//! padding 0–2, kernels 1/3/5 and non-square, channel multipliers 1 and 2),
//! in f32 and f64; and the composed `depthwise_conv2d_taps` used off the CPU.

use candle_core::{DType, Device, Tensor, Var};
use tfkd_core::conv::{conv2d, depthwise_conv2d, depthwise_conv2d_taps};
use tfkd_core::rng::SeededRng;

mod common;
use common::{rel_err, to_f64};

/// A depthwise problem: `x: (n, c, h, w)`, `w: (c·m, 1, kh, kw)`.
#[derive(Clone, Copy, Debug)]
struct Dw {
    n: usize,
    c: usize,
    m: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    s: usize,
    p: usize,
}

impl Dw {
    fn out(&self) -> (usize, usize) {
        (
            (self.h + 2 * self.p - self.kh) / self.s + 1,
            (self.w + 2 * self.p - self.kw) / self.s + 1,
        )
    }
    /// candle 0.11.1's conv2d backward derives the output padding from the
    /// height only (it is right only when both dims leave the same
    /// remainder), and underflows when the last output rows read nothing but
    /// padding (`(H_o − 1)·s + k_h < 2p`).
    fn candle_can_differentiate(&self) -> bool {
        let (ho, wo) = self.out();
        (self.h + 2 * self.p - self.kh) % self.s == (self.w + 2 * self.p - self.kw) % self.s
            && (ho - 1) * self.s + self.kh >= 2 * self.p
            && (wo - 1) * self.s + self.kw >= 2 * self.p
    }
}

/// Random problems: the same seed always gives the same list.
fn random_cases(count: usize, seed: u64) -> Vec<Dw> {
    let mut rng = SeededRng::new(seed);
    let mut cases = Vec::with_capacity(count);
    while cases.len() < count {
        let kh = [1, 3, 5][rng.below(3)];
        let kw = if rng.below(5) == 0 { [1, 3, 5][rng.below(3)] } else { kh };
        let p = rng.below(3);
        let s = 1 + rng.below(3);
        let n = 1 + rng.below(3);
        let c = 1 + rng.below(7);
        let m = if rng.below(4) == 0 { 2 } else { 1 };
        let h = 1 + rng.below(13);
        let w = 1 + rng.below(13);
        if h + 2 * p < kh || w + 2 * p < kw {
            continue;
        }
        cases.push(Dw { n, c, m, h, w, kh, kw, s, p });
    }
    cases
}

/// Direct convolution in f64 for `L = Σ y ⊙ r`: `(y, ∂L/∂x, ∂L/∂w)`.
fn reference(d: &Dw, x: &[f64], k: &[f64], r: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (ho, wo) = d.out();
    let co = d.c * d.m;
    let mut y = vec![0.0; d.n * co * ho * wo];
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; k.len()];
    for n in 0..d.n {
        for o in 0..co {
            let c = o / d.m;
            for i in 0..ho {
                for j in 0..wo {
                    let yi = ((n * co + o) * ho + i) * wo + j;
                    for a in 0..d.kh {
                        for b in 0..d.kw {
                            let (ii, jj) = ((i * d.s + a) as isize - d.p as isize, (j * d.s + b) as isize - d.p as isize);
                            if ii < 0 || jj < 0 || ii as usize >= d.h || jj as usize >= d.w {
                                continue;
                            }
                            let xi = ((n * d.c + c) * d.h + ii as usize) * d.w + jj as usize;
                            let ki = (o * d.kh + a) * d.kw + b;
                            y[yi] += x[xi] * k[ki];
                            dx[xi] += r[yi] * k[ki];
                            dw[ki] += r[yi] * x[xi];
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

struct Inputs {
    x: Tensor,
    k: Tensor,
    r: Tensor,
}

fn inputs(d: &Dw, rng: &mut SeededRng, dtype: DType) -> Inputs {
    let dev = Device::Cpu;
    let (ho, wo) = d.out();
    Inputs {
        x: rng.uniform_tensor((d.n, d.c, d.h, d.w), -1.0, 1.0, dtype, &dev).unwrap(),
        k: rng.uniform_tensor((d.c * d.m, 1, d.kh, d.kw), -0.5, 0.5, dtype, &dev).unwrap(),
        r: rng.uniform_tensor((d.n, d.c * d.m, ho, wo), -1.0, 1.0, dtype, &dev).unwrap(),
    }
}

/// `(y, ∂L/∂x, ∂L/∂w)` of `conv(x, k)` for `L = Σ y ⊙ r`.
fn run(conv: impl Fn(&Tensor, &Tensor) -> Tensor, inp: &Inputs) -> [Vec<f64>; 3] {
    let x = Var::from_tensor(&inp.x).unwrap();
    let k = Var::from_tensor(&inp.k).unwrap();
    let y = conv(&x, &k);
    let grads = (&y * &inp.r).unwrap().sum_all().unwrap().backward().unwrap();
    [to_f64(&y), to_f64(grads.get(&x).unwrap()), to_f64(grads.get(&k).unwrap())]
}

#[test]
fn depthwise_matches_direct_reference_on_random_shapes() {
    let mut rng = SeededRng::new(3);
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        for d in random_cases(120, 17) {
            let inp = inputs(&d, &mut rng, dtype);
            let want = reference(&d, &to_f64(&inp.x), &to_f64(&inp.k), &to_f64(&inp.r));
            let got = run(|x, k| depthwise_conv2d(x, k, d.p, d.s).unwrap(), &inp);
            for (what, a, b) in [("y", &got[0], &want.0), ("dx", &got[1], &want.1), ("dw", &got[2], &want.2)] {
                let e = rel_err(a, b);
                assert!(e < tol, "{dtype:?} {d:?}: {what} relative error {e:e}");
            }
        }
    }
}

/// The composed form used off the CPU (`depthwise_conv2d_taps`, built from
/// `window_taps`): same reference, channel multiplier 1, candle's autograd.
#[test]
fn depthwise_taps_match_direct_reference_on_random_shapes() {
    let mut rng = SeededRng::new(4);
    let mut compared = 0;
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        for d in random_cases(120, 23).into_iter().filter(|d| d.m == 1) {
            let inp = inputs(&d, &mut rng, dtype);
            let want = reference(&d, &to_f64(&inp.x), &to_f64(&inp.k), &to_f64(&inp.r));
            let got = run(|x, k| depthwise_conv2d_taps(x, k, d.p, d.s).unwrap(), &inp);
            for (what, a, b) in [("y", &got[0], &want.0), ("dx", &got[1], &want.1), ("dw", &got[2], &want.2)] {
                let e = rel_err(a, b);
                assert!(e < tol, "{dtype:?} {d:?}: {what} relative error {e:e}");
            }
            compared += 1;
        }
    }
    assert!(compared > 120, "only {compared} cases compared");
}

#[test]
fn depthwise_matches_candle_composed_conv() {
    let mut rng = SeededRng::new(5);
    let mut compared = 0;
    for d in random_cases(120, 29) {
        if !d.candle_can_differentiate() {
            continue;
        }
        let inp = inputs(&d, &mut rng, DType::F32);
        let want = run(|x, k| x.conv2d(k, d.p, d.s, 1, d.c).unwrap(), &inp);
        // Through the zoo's entry point: groups = C_in routes to the depthwise op.
        let got = run(|x, k| conv2d(x, k, d.p, d.s, d.c).unwrap(), &inp);
        for (what, a, b) in [("y", &got[0], &want[0]), ("dx", &got[1], &want[1]), ("dw", &got[2], &want[2])] {
            let e = rel_err(a, b);
            assert!(e < 1e-4, "{d:?}: {what} relative error {e:e}");
        }
        compared += 1;
    }
    assert!(compared > 60, "only {compared} cases compared");
}

/// The zoo's shapes: MobileNetV2 / ShuffleNetV2 3×3 depthwise, strides 1 and
/// 2, even and odd sides, batch 1.
#[test]
fn depthwise_zoo_shapes_match_candle() {
    let mut rng = SeededRng::new(8);
    #[rustfmt::skip]
    let cases = [
        Dw { n: 4, c: 32, m: 1, h: 16, w: 16, kh: 3, kw: 3, s: 1, p: 1 },
        Dw { n: 4, c: 24, m: 1, h: 16, w: 16, kh: 3, kw: 3, s: 2, p: 1 },
        Dw { n: 1, c: 48, m: 1, h: 8, w: 8, kh: 3, kw: 3, s: 1, p: 1 },
        Dw { n: 3, c: 16, m: 1, h: 7, w: 7, kh: 3, kw: 3, s: 2, p: 1 },
        Dw { n: 2, c: 12, m: 1, h: 9, w: 9, kh: 5, kw: 5, s: 2, p: 2 },
    ];
    for d in cases {
        let inp = inputs(&d, &mut rng, DType::F32);
        let want = run(|x, k| x.conv2d(k, d.p, d.s, 1, d.c).unwrap(), &inp);
        let got = run(|x, k| conv2d(x, k, d.p, d.s, d.c).unwrap(), &inp);
        for (what, a, b) in [("y", &got[0], &want[0]), ("dx", &got[1], &want[1]), ("dw", &got[2], &want[2])] {
            let e = rel_err(a, b);
            assert!(e < 1e-4, "{d:?}: {what} relative error {e:e}");
        }
    }
}

/// Only the operands that track gradients get one; without any, the op is a
/// plain forward.
#[test]
fn depthwise_gradients_only_where_tracked() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(9);
    let x = rng.uniform_tensor((2, 3, 6, 6), -1.0, 1.0, DType::F32, &dev).unwrap();
    let k = rng.uniform_tensor((3, 1, 3, 3), -1.0, 1.0, DType::F32, &dev).unwrap();
    let kv = Var::from_tensor(&k).unwrap();
    let g = depthwise_conv2d(&x, &kv, 1, 1).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none());
    assert!(g.get(&kv).is_some());
    let xv = Var::from_tensor(&x).unwrap();
    let g = depthwise_conv2d(&xv, &k, 1, 1).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(&xv).is_some());
    let y = depthwise_conv2d(&x, &k, 1, 2).unwrap();
    let want = x.conv2d(&k, 1, 2, 1, 3).unwrap();
    assert!(rel_err(&to_f64(&y), &to_f64(&want)) < 1e-6);
}

/// Non-contiguous operands (a channel slice, a transposed view) work.
#[test]
fn depthwise_non_contiguous_inputs() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(10);
    let big = rng.uniform_tensor((2, 8, 7, 9), -1.0, 1.0, DType::F32, &dev).unwrap();
    let x = big.narrow(1, 2, 4).unwrap().transpose(2, 3).unwrap();
    let k = rng.uniform_tensor((4, 1, 3, 3), -1.0, 1.0, DType::F32, &dev).unwrap();
    let y = depthwise_conv2d(&x, &k, 1, 2).unwrap();
    let want = x.contiguous().unwrap().conv2d(&k, 1, 2, 1, 4).unwrap();
    assert!(rel_err(&to_f64(&y), &to_f64(&want)) < 1e-6);
}

/// Results do not depend on the number of threads (each element is computed
/// by one thread, in a fixed order).
#[test]
fn depthwise_is_thread_count_independent() {
    let d = Dw { n: 4, c: 32, m: 1, h: 16, w: 16, kh: 3, kw: 3, s: 1, p: 1 };
    let inp = inputs(&d, &mut SeededRng::new(12), DType::F32);
    let conv = |x: &Tensor, k: &Tensor| depthwise_conv2d(x, k, d.p, d.s).unwrap();
    let pool = |t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
    let one = pool(1).install(|| run(conv, &inp));
    let four = pool(4).install(|| run(conv, &inp));
    assert_eq!(one, four);
}

#[test]
fn depthwise_reports_bad_shapes() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((1, 4, 5, 5), DType::F32, &dev).unwrap();
    let k = Tensor::zeros((6, 1, 3, 3), DType::F32, &dev).unwrap();
    let e = depthwise_conv2d(&x, &k, 1, 1).unwrap_err().to_string();
    assert!(e.contains("(6, 1, 3, 3)") && e.contains('4'), "{e}");
    let k = Tensor::zeros((4, 2, 3, 3), DType::F32, &dev).unwrap();
    assert!(depthwise_conv2d(&x, &k, 1, 1).is_err());
    let k = Tensor::zeros((4, 1, 9, 9), DType::F32, &dev).unwrap();
    assert!(depthwise_conv2d(&x, &k, 1, 1).is_err());
    let k = Tensor::zeros((4, 1, 3, 3), DType::F32, &dev).unwrap();
    assert!(depthwise_conv2d(&x, &k, 1, 0).is_err());
}
