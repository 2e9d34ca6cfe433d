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
