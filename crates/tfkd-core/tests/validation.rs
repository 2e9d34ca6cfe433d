//! Bad input gives a clear error naming the parameter, tensor or label; never a
//! panic and never a silently wrong number.

use candle_core::{DType, Device, Tensor};
use tfkd_core::loss::{cross_entropy, KdLoss, LabelSmoothing, VirtualTeacherLoss};
use tfkd_core::optim::{Sgd, SgdConfig};
use tfkd_core::Error;

fn logits(rows: &[[f32; 4]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), 4), &Device::Cpu).unwrap()
}

fn message<T>(r: tfkd_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("must be rejected"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn invalid_hyper_parameters_are_named() {
    let s = logits(&[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 0.0]]);
    let y = Tensor::new(&[0u32, 3], &Device::Cpu).unwrap();
    let kd = |a, t, m| KdLoss::self_training(a, t, m).forward(&s, &s, &y);
    assert!(message(kd(1.5, 4.0, 1.0)).contains("alpha = 1.5"));
    assert!(message(kd(0.5, 0.0, 1.0)).contains("temperature = 0"));
    assert!(message(kd(0.5, f64::NAN, 1.0)).contains("temperature"));
    assert!(message(kd(0.5, 4.0, -1.0)).contains("multiplier = -1"));
    // a must exceed 1/K = 0.25 for K = 4.
    let mut reg = VirtualTeacherLoss::as_coded(0.5, 20.0, 1.0);
    reg.correct_prob = 0.2;
    let m = message(reg.forward(&s, &y));
    assert!(m.contains("correct_prob = 0.2") && m.contains("1/4"), "{m}");
    let lsr = LabelSmoothing { epsilon: 1.2, ..LabelSmoothing::official() };
    assert!(message(lsr.forward(&s, &y)).contains("epsilon = 1.2"));
    let bad = SgdConfig { nesterov: true, momentum: 0.0, ..SgdConfig::default() };
    assert!(message(Sgd::new(vec![], bad)).contains("Nesterov"));
    let bad = SgdConfig { weight_decay: -1e-4, ..SgdConfig::default() };
    assert!(message(Sgd::new(vec![], bad)).contains("weight_decay"));
}

#[test]
fn labels_shapes_and_dtypes_are_checked() {
    let s = logits(&[[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 0.0]]);
    let dev = Device::Cpu;
    match cross_entropy(&s, &Tensor::new(&[1u32, 4], &dev).unwrap()) {
        Err(Error::LabelOutOfRange { index: 1, label: 4, num_classes: 4 }) => {}
        other => panic!("unexpected {other:?}"),
    }
    match cross_entropy(&s, &Tensor::new(&[-1i64, 0], &dev).unwrap()) {
        Err(Error::LabelOutOfRange { index: 0, label: -1, .. }) => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(message(cross_entropy(&s, &Tensor::new(&[1u32], &dev).unwrap())).contains("labels"));
    assert!(message(cross_entropy(&s, &Tensor::new(&[1f32, 0.0], &dev).unwrap())).contains("integer"));
    let y = Tensor::new(&[0u32, 1], &dev).unwrap();
    let teacher = logits(&[[1.0, 2.0, 3.0, 4.0]]);
    let m = message(KdLoss::official(0.9, 4.0).forward(&s, &teacher, &y));
    assert!(m.contains("teacher logits") && m.contains("[1, 4]"), "{m}");
    let m = message(KdLoss::official(0.9, 4.0).forward(&s, &s.to_dtype(DType::F64).unwrap(), &y));
    assert!(m.contains("dtype"), "{m}");
    let flat = Tensor::new(&[1f32, 2.0], &dev).unwrap();
    assert!(message(cross_entropy(&flat, &y)).contains("expected shape"));
}

#[test]
fn non_finite_inputs_are_named_and_extreme_logits_stay_finite() {
    let dev = Device::Cpu;
    let y = Tensor::new(&[0u32, 3], &dev).unwrap();
    let s = logits(&[[1e4, -1e4, 0.0, 1e4], [-1e4, -1e4, -1e4, 1e4]]);
    let t = logits(&[[-1e4, 1e4, 1e4, -1e4], [1e4, 0.0, 0.0, -1e4]]);
    for temperature in [1.0, 4.0, 20.0] {
        let loss = KdLoss::official(0.9, temperature).forward(&s, &t, &y).unwrap();
        assert!(loss.total.to_scalar::<f32>().unwrap().is_finite());
    }
    let nan = logits(&[[f32::NAN, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]);
    assert!(matches!(cross_entropy(&nan, &y), Err(Error::NonFinite { what: "logits" })));
    let inf = logits(&[[f32::INFINITY, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]);
    assert!(matches!(
        KdLoss::official(0.9, 4.0).forward(&s, &inf, &y),
        Err(Error::NonFinite { what: "teacher logits" })
    ));
}

/// The momentum buffers outlive a step; they must not hold the step's graph
/// (candle's gradients can carry op history), or memory grows every step.
#[test]
fn sgd_state_holds_no_graph() {
    use candle_core::Var;
    let dev = Device::Cpu;
    let w = Var::new(&[[0.5f32, -1.0], [2.0, 0.25]], &dev).unwrap();
    let x = Tensor::new(&[[1.0f32, 2.0], [3.0, -1.0]], &dev).unwrap();
    let mut sgd = Sgd::new(vec![("w".into(), w.clone())], SgdConfig::default()).unwrap();
    for _ in 0..3 {
        let loss = x.matmul(&w.as_tensor().sqr().unwrap()).unwrap().exp().unwrap().sum_all().unwrap();
        sgd.backward_step(&loss).unwrap();
    }
    let state = sgd.state();
    assert_eq!(state.len(), 1);
    assert!(state.iter().all(|(_, t)| !t.track_op()), "a momentum buffer keeps op history");
}
