//! `tfkd_core::conv::add_channel_bias` against candle's `broadcast_add`:
//! values and gradients (input and bias) on random shapes (batch 1, odd
//! sizes, rank 2 to 5) in f32 and f64.

use candle_core::{DType, Device, Tensor, Var};
use tfkd_core::conv::add_channel_bias;
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
