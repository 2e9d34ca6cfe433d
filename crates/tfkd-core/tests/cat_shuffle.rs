//! `tfkd_core::shuffle::cat_shuffle` against the composition it replaces,
//! `channel_shuffle(cat([a, b], 1), 2)` from candle ops: values and both
//! branches' gradients, bit for bit, in f32 and f64, for contiguous branches
//! and for channel slices of one tensor (ShuffleNetV2's stride-1 units pass
//! a `narrow` of their input), and the errors.

use candle_core::{DType, Device, Tensor, Var};
use tfkd_core::rng::SeededRng;
use tfkd_core::shuffle::cat_shuffle;

mod common;
use common::to_f64;

fn composed(a: &Tensor, b: &Tensor) -> Tensor {
    let (n, c, h, w) = a.dims4().unwrap();
    Tensor::cat(&[a, b], 1)
        .unwrap()
        .reshape((n, 2, c, h, w))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((n, 2 * c, h, w))
        .unwrap()
}

#[test]
fn cat_shuffle_matches_the_composition() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(41);
    for dtype in [DType::F32, DType::F64] {
        // Small (one thread) and large (planes over rayon's pool), odd sizes.
        for (n, c, h, w) in [(1, 1, 1, 1), (2, 3, 5, 7), (5, 29, 9, 11), (64, 24, 16, 16)] {
            let tag = format!("{dtype:?} {n}x{c}x{h}x{w}");
            // Two separate branches, and the two halves of one tensor.
            let x = Var::from_tensor(&rng.uniform_tensor((n, 2 * c, h, w), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
            let b0 = Var::from_tensor(&rng.uniform_tensor((n, c, h, w), -1.0, 1.0, dtype, &dev).unwrap()).unwrap();
            let r = rng.uniform_tensor((n, 2 * c, h, w), -1.0, 1.0, dtype, &dev).unwrap();
            for sliced in [false, true] {
                let (a, b) = if sliced {
                    (x.narrow(1, 0, c).unwrap(), x.narrow(1, c, c).unwrap())
                } else {
                    (x.narrow(1, 0, c).unwrap().contiguous().unwrap(), b0.as_tensor().clone())
                };
                let y = cat_shuffle(&a, &b).unwrap();
                let y_ref = composed(&a, &b);
                assert_eq!(y.dims(), &[n, 2 * c, h, w], "{tag}: shape");
                assert_eq!(to_f64(&y), to_f64(&y_ref), "{tag} sliced {sliced}: values");
                let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                let g_ref = (&y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
                for (what, v) in [("x", &x), ("b", &b0)] {
                    match (g.get(v), g_ref.get(v)) {
                        (Some(got), Some(want)) => assert_eq!(to_f64(got), to_f64(want), "{tag} sliced {sliced}: d{what}"),
                        (None, None) => {}
                        (got, want) => panic!("{tag} sliced {sliced}: d{what} present {} vs {}", got.is_some(), want.is_some()),
                    }
                }
            }
        }
    }
}

#[test]
fn cat_shuffle_interleaves_the_branches() {
    let dev = Device::Cpu;
    let a = Tensor::new(&[1f32, 2., 3.], &dev).unwrap().reshape((1, 3, 1, 1)).unwrap();
    let b = Tensor::new(&[10f32, 20., 30.], &dev).unwrap().reshape((1, 3, 1, 1)).unwrap();
    let y = cat_shuffle(&a, &b).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(y, [1., 10., 2., 20., 3., 30.]);
}

#[test]
fn cat_shuffle_rejects_unlike_branches() {
    let dev = Device::Cpu;
    let a = Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap();
    let e = cat_shuffle(&a, &Tensor::zeros((2, 4, 4, 4), DType::F32, &dev).unwrap()).unwrap_err().to_string();
    assert!(e.contains("[2, 3, 4, 4]") && e.contains("[2, 4, 4, 4]"), "{e}");
    let e = cat_shuffle(&a, &Tensor::zeros((2, 3, 4, 4), DType::F64, &dev).unwrap()).unwrap_err().to_string();
    assert!(e.contains("F64"), "{e}");
    assert!(cat_shuffle(&Tensor::zeros((2, 3), DType::F32, &dev).unwrap(), &a).is_err());
}
