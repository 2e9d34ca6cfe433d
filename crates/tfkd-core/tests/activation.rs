//! `tfkd_core::activation::relu6` (and `relu`) against candle's composed
//! `x.relu()?.minimum(6.0)`: values and gradients on random odd-sized
//! inputs in f32 and f64 (away from the kinks), and PyTorch's gradient at
//! exactly 0 and 6 (zero, where candle's composition gives 1 and ½).

use candle_core::{DType, Device, Tensor, Var};
use tfkd_core::activation::{relu, relu6, ReluOp};
use tfkd_core::rng::SeededRng;

mod common;
use common::to_f64;

#[test]
fn relu6_matches_composed_candle() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(31);
    for dtype in [DType::F32, DType::F64] {
        // Small (one thread) and large (several chunks on rayon's pool), odd sizes.
        for shape in [vec![1, 1, 1, 1], vec![3, 5, 7, 9], vec![2, 7], vec![33, 17, 13, 11]] {
            let x = Var::from_tensor(&rng.uniform_tensor(shape.as_slice(), -3.0, 9.0, dtype, &dev).unwrap()).unwrap();
            let r = rng.uniform_tensor(shape.as_slice(), -1.0, 1.0, dtype, &dev).unwrap();
            let y = relu6(&x).unwrap();
            let y_ref = x.relu().unwrap().minimum(6f64).unwrap();
            assert_eq!(to_f64(&y), to_f64(&y_ref), "{dtype:?} {shape:?}: forward");
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = (&y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
            assert_eq!(
                to_f64(g.get(&x).unwrap()),
                to_f64(g_ref.get(&x).unwrap()),
                "{dtype:?} {shape:?}: gradient"
            );
        }
    }
}

#[test]
fn relu6_gradient_at_the_kinks_is_pytorchs() {
    let dev = Device::Cpu;
    let x = Var::new(&[-1.0f32, 0.0, 0.5, 6.0, 7.0, f32::NAN], &dev).unwrap();
    let y = relu6(&x).unwrap();
    let v: Vec<f32> = y.to_vec1().unwrap();
    assert_eq!(&v[..5], &[0.0, 0.0, 0.5, 6.0, 6.0]);
    assert!(v[5].is_nan(), "NaN propagates");
    let g = y.sum_all().unwrap().backward().unwrap();
    let d: Vec<f32> = g.get(&x).unwrap().to_vec1().unwrap();
    // PyTorch 2.15 (`hardtanh_backward`) passes the gradient at NaN.
    assert_eq!(d, vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
}

/// Non-contiguous input.
#[test]
fn relu6_on_a_view() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(32);
    let x = rng.uniform_tensor((4, 6), -3.0, 9.0, DType::F32, &dev).unwrap();
    let v = x.t().unwrap();
    let y = relu6(&v).unwrap();
    assert_eq!(to_f64(&y), to_f64(&v.relu().unwrap().minimum(6f64).unwrap()));
}

#[test]
fn relu_matches_candle_away_from_zero_and_pytorch_at_it() {
    let dev = Device::Cpu;
    // Random values (never exactly 0): values and gradients as candle's relu.
    let x0 = Tensor::new(&[[-1.5f32, 0.25, 3.0], [2.0, -0.5, 7.5]], &dev).unwrap();
    let (x, x_ref) = (Var::from_tensor(&x0).unwrap(), Var::from_tensor(&x0).unwrap());
    let r = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &dev).unwrap();
    let y = x.relu_op().unwrap();
    let y_ref = x_ref.relu().unwrap();
    assert_eq!(to_f64(&y), to_f64(&y_ref));
    let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let g_ref = (&y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(to_f64(g.get(&x).unwrap()), to_f64(g_ref.get(&x_ref).unwrap()));
    // At exactly 0 PyTorch's gradient is 0 (candle's passes it); at +∞ it passes.
    // At NaN it passes too (`threshold_backward` zeroes where x <= 0).
    let x = Var::new(&[0f64, f64::INFINITY, -0.0, 1.0, f64::NAN], &dev).unwrap();
    let g = relu(&x).unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(to_f64(g.get(&x).unwrap()), vec![0.0, 1.0, 0.0, 1.0, 1.0]);
}
