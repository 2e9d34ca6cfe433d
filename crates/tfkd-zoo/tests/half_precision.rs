//! `precision = "bf16"`'s plumbing: every CIFAR network of the zoo runs with
//! half-precision activations over f32 parameters (`with_activation_dtype`):
//! the logits come back f32 and close to the f32 network's, and every
//! parameter gets a finite f32 gradient (the master weights stay f32).
//!
//! On the CPU the activations are f16, not bf16: candle's CPU matrix product
//! (the `gemm` crate) has no bf16 kernel, and the casts, mixed-dtype
//! BatchNorm and layers under test do not depend on which 16-bit type it is.
//! bf16 itself runs on GPUs (tfkd-core's `tests/cuda_ops.rs` checks its
//! convolutions and BatchNorm there).

use candle_core::{DType, Device, Tensor};
use tfkd_core::init::SeededVarMap;
use tfkd_core::rng::SeededRng;
use tfkd_zoo::{InputSize, ModelOptions};

const MODELS: &[&str] = &["cnn", "resnet18", "mobilenet_v2", "shufflenet_v2", "densenet121", "resnext29", "googlenet"];

#[test]
fn networks_run_in_half_precision_over_f32_master_weights() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(3);
    let x = rng.uniform_tensor((4, 3, 32, 32), -1.0, 1.0, DType::F32, &dev).unwrap();
    let labels = Tensor::new(&[1u32, 0, 3, 2], &dev).unwrap();
    for &name in MODELS {
        let divisor = if name == "cnn" { 1 } else { 8 };
        let opts = ModelOptions::new(10, InputSize::Cifar).with_width_divisor(divisor);
        let varmap = SeededVarMap::new(0);
        let f32_model = tfkd_zoo::build_with(name, &opts, varmap.var_builder(DType::F32, &dev)).unwrap();
        let bf16_model = tfkd_zoo::with_activation_dtype(
            tfkd_zoo::build_with(name, &opts, varmap.var_builder(DType::F32, &dev)).unwrap(),
            DType::F16,
        );
        // Evaluation mode (running statistics, no dropout): the same network
        // in two precisions.
        let want = f32_model.forward_t(&x, false).unwrap();
        let got = bf16_model.forward_t(&x, false).unwrap();
        assert_eq!(got.dtype(), DType::F32, "{name}: the logits come back in f32");
        let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-3);
        let err = (&got - &want).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale;
        assert!(err < 0.05, "{name}: f16 logits differ from f32 by {err} of their scale");
        // Training mode: a loss on the f32 logits back-propagates into f32
        // gradients of every parameter.
        let logits = bf16_model.forward_t(&x, true).unwrap();
        let loss = tfkd_core::loss::cross_entropy(&logits, &labels).unwrap();
        let grads = loss.backward().unwrap();
        for (path, var) in tfkd_zoo::trainable_vars(&varmap) {
            let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("{name}: {path} got no gradient"));
            assert_eq!(g.dtype(), DType::F32, "{name}: {path}'s gradient");
            let finite = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().is_finite();
            assert!(finite, "{name}: {path}'s gradient is not finite");
        }
    }
}
