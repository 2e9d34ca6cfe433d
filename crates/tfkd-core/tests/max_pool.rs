//! `tfkd_core::pool::max_pool2d`'s CPU op against the composition it replaces
//! (`window_taps` + `maximum`) on random inputs, and PyTorch's tie rule (the
//! whole gradient to the first maximum). Whole-op parity with PyTorch is in
//! tfkd-zoo's `tests/ops.rs`.

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{rel_err, to_f64};
use tfkd_core::conv::window_taps;
use tfkd_core::pool::max_pool2d;
use tfkd_core::rng::SeededRng;

fn composed(x: &Tensor, k: usize, s: usize, p: usize) -> Tensor {
    let taps = window_taps(x, (k, k), s, p, f64::NEG_INFINITY).unwrap();
    let first = taps[0].clone();
    taps[1..].iter().fold(first, |acc, t| acc.maximum(t).unwrap())
}

#[test]
fn max_pool_matches_the_composition() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(3);
    for dtype in [DType::F32, DType::F64] {
        for (n, c, h, w, k, s, p) in [
            (2, 3, 8, 8, 3, 1, 1),
            (3, 2, 9, 7, 3, 2, 1),
            (1, 4, 6, 6, 2, 2, 0),
            (2, 2, 11, 10, 3, 3, 1),
            (2, 1, 5, 9, 5, 2, 2),
            (1, 1, 3, 3, 3, 1, 0),
            // Tiling windows (k = s, p = 0) on sides they do not divide:
            // the rows and columns past the last window get no gradient.
            (2, 3, 7, 9, 2, 2, 0),
            (1, 2, 10, 11, 3, 3, 0),
        ] {
            let tag = format!("{dtype:?} {n}x{c}x{h}x{w} k{k} s{s} p{p}");
            let x0 = rng.uniform_tensor((n, c, h, w), -1.0, 1.0, dtype, &dev).unwrap();
            let (x, x_ref) = (Var::from_tensor(&x0).unwrap(), Var::from_tensor(&x0).unwrap());
            let y = max_pool2d(&x, k, s, p).unwrap();
            let y_ref = composed(&x_ref, k, s, p);
            assert_eq!(y.dims(), y_ref.dims(), "{tag}: shape");
            assert_eq!(rel_err(&to_f64(&y), &to_f64(&y_ref)), 0.0, "{tag}: values");
            let r = rng.uniform_tensor(y.dims(), -1.0, 1.0, dtype, &dev).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (&y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let e = rel_err(&to_f64(g.get(&x).unwrap()), &to_f64(g_ref.get(&x_ref).unwrap()));
            assert!(e < 1e-6, "{tag}: gradient rel err {e}");
        }
    }
}

#[test]
fn ties_send_the_gradient_to_the_first_maximum() {
    let dev = Device::Cpu;
    // One 2×2 window of equal values, then one where the maximum is NaN.
    let x = Var::new(&[[[[1f32, 1.0, 0.0, 5.0], [1.0, 1.0, f32::NAN, 2.0]]]], &dev).unwrap();
    let y = max_pool2d(&x, 2, 2, 0).unwrap();
    let ys = to_f64(&y);
    assert_eq!(ys[0], 1.0);
    assert!(ys[1].is_nan(), "NaN propagates, as in PyTorch");
    let g = y.sum_all().unwrap().backward().unwrap();
    let gx = to_f64(g.get(&x).unwrap());
    assert_eq!(gx, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
}

#[test]
fn overlapping_windows_add_their_gradients() {
    let dev = Device::Cpu;
    // 3×3 stride 1 padding 1 on a 3×3 input whose centre is the maximum of
    // every window: it collects all nine output gradients.
    let x = Var::new(&[[[[0f32, 0.1, 0.2], [0.3, 9.0, 0.4], [0.5, 0.6, 0.7]]]], &dev).unwrap();
    let y = max_pool2d(&x, 3, 1, 1).unwrap();
    assert_eq!(to_f64(&y), vec![9.0; 9]);
    let g = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(to_f64(g.get(&x).unwrap()), vec![0.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn max_pool_rejects_bad_geometry() {
    let x = Tensor::zeros((1, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    for (k, s, p, what) in [(0, 1, 0, "kernel"), (3, 0, 0, "stride"), (2, 2, 2, "padding"), (7, 1, 1, "smaller")] {
        let e = max_pool2d(&x, k, s, p).unwrap_err().to_string();
        assert!(e.contains(what), "k{k} s{s} p{p}: {e}");
    }
}

/// The scan the op's definition states: each output's window maximum and
/// the input it came from, the first maximum in row-major order (the last
/// NaN where there is one, as PyTorch's `val > max || isnan(val)`).
fn scan_reference(x: &[f64], (h, w): (usize, usize), k: usize, s: usize, p: usize) -> (Vec<f64>, Vec<usize>) {
    let (h_o, w_o) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
    let (mut y, mut argmax) = (Vec::with_capacity(h_o * w_o), Vec::with_capacity(h_o * w_o));
    for i in 0..h_o {
        for j in 0..w_o {
            let mut best: Option<(f64, usize)> = None;
            for a in 0..k {
                for b in 0..k {
                    let (r, c) = ((s * i + a) as isize - p as isize, (s * j + b) as isize - p as isize);
                    if r < 0 || c < 0 || r >= h as isize || c >= w as isize {
                        continue;
                    }
                    let at = r as usize * w + c as usize;
                    let v = x[at];
                    best = match best {
                        Some((m, _)) if !(v > m || v.is_nan()) => best,
                        _ => Some((v, at)),
                    };
                }
            }
            let (m, at) = best.unwrap();
            y.push(m);
            argmax.push(at);
        }
    }
    (y, argmax)
}

/// The scan's gradient: every output's gradient added, in output order, to
/// its window's maximum, summed in the element type `T`.
fn scan_gradient<T: Copy + Default + std::ops::AddAssign>(argmax: &[usize], g: &[T], len: usize) -> Vec<T> {
    let mut dx = vec![T::default(); len];
    for (&at, &gv) in argmax.iter().zip(g) {
        dx[at] += gv;
    }
    dx
}

#[test]
fn any_geometry_matches_the_scan_exactly() {
    // Values on a coarse grid tie often; some NaNs and -inf too. The
    // gradient must be the scan's to the bit: same positions, same order of
    // the additions.
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(11);
    for (h, w, k, s, p) in [
        (8, 8, 3, 1, 1),
        (9, 7, 3, 2, 1),
        (5, 9, 5, 2, 2),
        (1, 1, 5, 1, 2),
        (2, 3, 5, 3, 2),
        (7, 6, 3, 1, 0),
        (6, 11, 4, 1, 2),
        (10, 10, 3, 2, 0),
        (3, 3, 3, 1, 1),
        // 2×2 tiles: eight windows at a time in AVX2 registers (f32), the
        // rest (and the odd last row and column) by the generic kernel.
        (6, 37, 2, 2, 0),
        (5, 32, 2, 2, 0),
    ] {
        let tag = format!("{h}x{w} k{k} s{s} p{p}");
        let u = to_f64(&rng.uniform_tensor((2 * h * w,), 0.0, 1.0, DType::F64, &dev).unwrap());
        let xs: Vec<f64> = u[..h * w]
            .iter()
            .zip(&u[h * w..])
            .map(|(&a, &b)| match (b * 40.0) as usize {
                0 => f64::NAN,
                1 => f64::NEG_INFINITY,
                _ => (a * 4.0).floor(),
            })
            .collect();
        let (h_o, w_o) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let gs = to_f64(&rng.uniform_tensor((h_o * w_o,), -1.0, 1.0, DType::F64, &dev).unwrap());
        let (y_ref, argmax) = scan_reference(&xs, (h, w), k, s, p);
        for dtype in [DType::F32, DType::F64] {
            let x = Var::from_tensor(&Tensor::from_vec(xs.clone(), (1, 1, h, w), &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
            let g = Tensor::from_vec(gs.clone(), (1, 1, h_o, w_o), &dev).unwrap().to_dtype(dtype).unwrap();
            let y = max_pool2d(&x, k, s, p).unwrap();
            let ys = to_f64(&y);
            for (o, (a, b)) in ys.iter().zip(&y_ref).enumerate() {
                assert!(a == b || (a.is_nan() && b.is_nan()), "{tag} {dtype:?}: output {o}: {a} vs {b}");
            }
            let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
            let dx = to_f64(grads.get(&x).unwrap());
            let want: Vec<f64> = if dtype == DType::F32 {
                // Summed in f32, in the same order (x lies on a grid f32 holds exactly).
                let g32: Vec<f32> = gs.iter().map(|&v| v as f32).collect();
                scan_gradient(&argmax, &g32, h * w).iter().map(|&v| v as f64).collect()
            } else {
                scan_gradient(&argmax, &gs, h * w)
            };
            assert_eq!(dx, want, "{tag} {dtype:?}: gradient");
        }
    }
}

#[test]
fn tiles_of_every_pattern_match_the_scan_exactly() {
    // Every 2×2 window over {NaN, 1, 0, −0, −inf}: 625 windows in one row
    // (the f32 kernel takes eight at a time), so that two or more NaNs,
    // ties and signed zeros fall on every tap order.
    let dev = Device::Cpu;
    let values = [f64::NAN, 1.0, 0.0, -0.0, f64::NEG_INFINITY];
    let windows = values.len().pow(4);
    let (h, w) = (2, 2 * windows);
    let mut xs = vec![0.0; h * w];
    for j in 0..windows {
        let taps = [j % 5, j / 5 % 5, j / 25 % 5, j / 125 % 5].map(|i| values[i]);
        xs[2 * j] = taps[0];
        xs[2 * j + 1] = taps[1];
        xs[w + 2 * j] = taps[2];
        xs[w + 2 * j + 1] = taps[3];
    }
    let gs: Vec<f64> = (0..windows).map(|j| 1.0 + j as f64 / 8.0).collect();
    let (y_ref, argmax) = scan_reference(&xs, (h, w), 2, 2, 0);
    for dtype in [DType::F32, DType::F64] {
        let x = Var::from_tensor(&Tensor::from_vec(xs.clone(), (1, 1, h, w), &dev).unwrap().to_dtype(dtype).unwrap()).unwrap();
        let g = Tensor::from_vec(gs.clone(), (1, 1, 1, windows), &dev).unwrap().to_dtype(dtype).unwrap();
        let y = max_pool2d(&x, 2, 2, 0).unwrap();
        for (o, (a, b)) in to_f64(&y).iter().zip(&y_ref).enumerate() {
            assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{dtype:?}: output {o}: {a} vs {b}");
        }
        let grads = (&y * &g).unwrap().sum_all().unwrap().backward().unwrap();
        let dx = to_f64(grads.get(&x).unwrap());
        let want = scan_gradient(&argmax, &gs, h * w);
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&dx), bits(&want), "{dtype:?}: gradient");
    }
}
