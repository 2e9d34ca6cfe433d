//! `tfkd_core::norm` against candle-nn's composed `BatchNorm`: the fused
//! training op's output, batch statistics and gradients (input, γ, β) on
//! random shapes (batch 1, odd sizes, rank 2 to 5), in f32 and f64; the
//! `BatchNorm` module's running statistics and evaluation output after
//! several training steps.

use candle_core::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{BatchNormConfig, VarBuilder, VarMap};
use tfkd_core::norm::{batch_norm_train, BatchNorm};
use tfkd_core::rng::SeededRng;

mod common;
use common::{rel_err, to_f64};

/// Random shapes `(N, C, …)` with `N·(spatial) ≥ 2`.
fn random_shapes(count: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = SeededRng::new(seed);
    let mut shapes = Vec::new();
    while shapes.len() < count {
        let rank = 2 + rng.below(4);
        let mut dims = vec![1 + rng.below(5), 1 + rng.below(9)];
        for _ in 2..rank {
            dims.push(1 + rng.below(11));
        }
        let m: usize = dims[0] * dims[2..].iter().product::<usize>();
        if m >= 2 {
            shapes.push(dims);
        }
    }
    shapes
}

/// `[y, ∂x, ∂γ, ∂β, μ, σ²]` for `L = Σ y ⊙ r`.
fn ours(x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor, eps: f64) -> [Vec<f64>; 6] {
    let (xv, wv, bv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap(), Var::from_tensor(b).unwrap());
    let out = batch_norm_train(&xv, &wv, &bv, eps).unwrap();
    let g = (&out.y * r).unwrap().sum_all().unwrap().backward().unwrap();
    [
        to_f64(&out.y),
        to_f64(g.get(&xv).unwrap()),
        to_f64(g.get(&wv).unwrap()),
        to_f64(g.get(&bv).unwrap()),
        to_f64(&out.mean),
        to_f64(&out.var),
    ]
}

/// The same through candle-nn's `BatchNorm::forward_train`; the batch
/// statistics are recovered from the running statistics (momentum 1).
fn candle(x: &Tensor, w: &Tensor, b: &Tensor, r: &Tensor, eps: f64) -> [Vec<f64>; 6] {
    let c = w.dim(0).unwrap();
    let (xv, wv, bv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap(), Var::from_tensor(b).unwrap());
    let zeros = Tensor::zeros(c, x.dtype(), x.device()).unwrap();
    let bn = candle_nn::BatchNorm::new_with_momentum(c, zeros.clone(), zeros, wv.as_tensor().clone(), bv.as_tensor().clone(), eps, 1.0)
        .unwrap();
    let y = bn.forward_t(&xv, true).unwrap();
    let g = (&y * r).unwrap().sum_all().unwrap().backward().unwrap();
    let m = (x.elem_count() / c) as f64;
    let var: Vec<f64> = to_f64(bn.running_var()).iter().map(|v| v * (m - 1.0) / m).collect();
    [
        to_f64(&y),
        to_f64(g.get(&xv).unwrap()),
        to_f64(g.get(&wv).unwrap()),
        to_f64(g.get(&bv).unwrap()),
        to_f64(bn.running_mean()),
        var,
    ]
}

const NAMES: [&str; 6] = ["y", "dx", "dgamma", "dbeta", "mean", "var"];

#[test]
fn fused_batch_norm_matches_candle_on_random_shapes() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(21);
    for (dtype, tol) in [(DType::F32, 1e-4), (DType::F64, 1e-10)] {
        for dims in random_shapes(80, 4) {
            let c = dims[1];
            // Channels with different offsets and scales.
            let x = rng.normal_tensor(dims.as_slice(), 0.0, 1.0, dtype, &dev).unwrap();
            let shift = rng.uniform_tensor(c, -3.0, 3.0, dtype, &dev).unwrap();
            let mut bshape = vec![1; dims.len()];
            bshape[1] = c;
            let x = x.broadcast_add(&shift.reshape(bshape.as_slice()).unwrap()).unwrap();
            let w = rng.uniform_tensor(c, 0.5, 1.5, dtype, &dev).unwrap();
            let b = rng.uniform_tensor(c, -0.5, 0.5, dtype, &dev).unwrap();
            let r = rng.uniform_tensor(dims.as_slice(), -1.0, 1.0, dtype, &dev).unwrap();
            let eps = [1e-5, 1e-3, 0.1][rng.below(3)];
            let got = ours(&x, &w, &b, &r, eps);
            let want = candle(&x, &w, &b, &r, eps);
            // ∂x = γ/√(σ² + ε)·(g − mean g − x̂·mean(g·x̂)) cancels to ~0 when
            // M is tiny (M = 2: exactly, but for ε): its errors are measured
            // against the size of the cancelling terms, γ/√(σ² + ε)·|g|.
            let term = want[5]
                .iter()
                .zip(to_f64(&w))
                .fold(0.0f64, |m, (v, g)| m.max(g.abs() / (v + eps).sqrt()))
                * to_f64(&r).iter().fold(0.0f64, |m, v| m.max(v.abs()));
            for (i, name) in NAMES.iter().enumerate() {
                let e = if *name == "dx" {
                    let abs = got[1].iter().zip(&want[1]).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
                    abs / term.max(want[1].iter().fold(0.0f64, |m, v| m.max(v.abs())))
                } else {
                    rel_err(&got[i], &want[i])
                };
                assert!(e < tol, "{dtype:?} {dims:?} eps {eps}: {name} relative error {e:e}");
            }
        }
    }
}

/// A large common offset (mean 1000, std 1): the shifted sums keep the
/// variance exact where Σx² − (Σx)²/M would lose it in f32.
#[test]
fn fused_batch_norm_large_offset() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(22);
    let x = (rng.normal_tensor((4, 3, 7, 5), 0.0, 1.0, DType::F32, &dev).unwrap() + 1000.0).unwrap();
    let w = Tensor::ones(3, DType::F32, &dev).unwrap();
    let b = Tensor::zeros(3, DType::F32, &dev).unwrap();
    let out = batch_norm_train(&x, &w, &b, 1e-5).unwrap();
    let x64 = x.to_dtype(DType::F64).unwrap();
    let want = batch_norm_train(&x64, &w.to_dtype(DType::F64).unwrap(), &b.to_dtype(DType::F64).unwrap(), 1e-5).unwrap();
    assert!(rel_err(&to_f64(&out.var), &to_f64(&want.var)) < 1e-5);
    // y loses what x itself lost when it was rounded to f32 near 1000.
    assert!(rel_err(&to_f64(&out.y), &to_f64(&want.y)) < 1e-4);
}

#[test]
fn fused_batch_norm_gradients_only_where_tracked() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(23);
    let x = rng.normal_tensor((2, 3, 4, 4), 0.0, 1.0, DType::F32, &dev).unwrap();
    let w = Var::from_tensor(&Tensor::ones(3, DType::F32, &dev).unwrap()).unwrap();
    let b = Tensor::zeros(3, DType::F32, &dev).unwrap();
    let out = batch_norm_train(&x, &w, &b, 1e-5).unwrap();
    let g = out.y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none() && g.get(&b).is_none());
    assert!(g.get(&w).is_some());
}

/// Results do not depend on the number of threads.
#[test]
fn fused_batch_norm_is_thread_count_independent() {
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(24);
    let x = rng.normal_tensor((16, 24, 16, 16), 0.0, 1.0, DType::F32, &dev).unwrap();
    let w = rng.uniform_tensor(24, 0.5, 1.5, DType::F32, &dev).unwrap();
    let b = rng.uniform_tensor(24, -0.5, 0.5, DType::F32, &dev).unwrap();
    let r = rng.uniform_tensor((16, 24, 16, 16), -1.0, 1.0, DType::F32, &dev).unwrap();
    let pool = |t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap();
    let one = pool(1).install(|| ours(&x, &w, &b, &r, 1e-5));
    let four = pool(4).install(|| ours(&x, &w, &b, &r, 1e-5));
    assert_eq!(one, four);
}

#[test]
fn fused_batch_norm_reports_bad_shapes() {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3, 4), DType::F32, &dev).unwrap();
    let w = Tensor::ones(4, DType::F32, &dev).unwrap();
    let b = Tensor::zeros(3, DType::F32, &dev).unwrap();
    let e = batch_norm_train(&x, &w, &b, 1e-5).unwrap_err().to_string();
    assert!(e.contains("3 channels"), "{e}");
    let x1 = Tensor::zeros(3, DType::F32, &dev).unwrap();
    assert!(batch_norm_train(&x1, &b, &b, 1e-5).is_err());
    assert!(batch_norm_train(&x, &b, &b, -1.0).is_err());
}

/// The module against `candle_nn::batch_norm` built the same way: after three
/// training steps the running statistics agree, and so do evaluation outputs
/// and the parameters' gradients.
#[test]
fn batch_norm_module_matches_candle_nn() {
    let dev = Device::Cpu;
    let (c, eps, momentum) = (6, 1e-5, 0.1);
    let vm_ours = VarMap::new();
    let vm_ref = VarMap::new();
    let ours = BatchNorm::new(c, eps, momentum, VarBuilder::from_varmap(&vm_ours, DType::F32, &dev)).unwrap();
    let cfg = BatchNormConfig {
        eps,
        remove_mean: true,
        affine: true,
        momentum,
    };
    let reference = candle_nn::batch_norm(c, cfg, VarBuilder::from_varmap(&vm_ref, DType::F32, &dev)).unwrap();
    let mut names: Vec<String> = vm_ours.data().lock().unwrap().keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["bias", "running_mean", "running_var", "weight"]);
    let mut rng = SeededRng::new(25);
    // Same non-trivial γ and β in both.
    for name in ["weight", "bias"] {
        let v = rng.uniform_tensor(c, 0.5, 1.5, DType::F32, &dev).unwrap();
        vm_ours.data().lock().unwrap()[name].set(&v).unwrap();
        vm_ref.data().lock().unwrap()[name].set(&v).unwrap();
    }
    for step in 0..3 {
        let x = (rng.normal_tensor((3, c, 5, 7), 0.0, 2.0, DType::F32, &dev).unwrap() + step as f64).unwrap();
        let r = rng.uniform_tensor((3, c, 5, 7), -1.0, 1.0, DType::F32, &dev).unwrap();
        let y_ours = ours.forward_t(&x, true).unwrap();
        let y_ref = reference.forward_t(&x, true).unwrap();
        assert!(rel_err(&to_f64(&y_ours), &to_f64(&y_ref)) < 1e-5, "step {step}: y");
        let g_ours = (&y_ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g_ref = (&y_ref * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for name in ["weight", "bias"] {
            let a = g_ours.get(vm_ours.data().lock().unwrap()[name].as_tensor()).unwrap().clone();
            let b = g_ref.get(vm_ref.data().lock().unwrap()[name].as_tensor()).unwrap().clone();
            assert!(rel_err(&to_f64(&a), &to_f64(&b)) < 1e-4, "step {step}: d{name}");
        }
    }
    for name in ["running_mean", "running_var"] {
        let a = to_f64(vm_ours.data().lock().unwrap()[name].as_tensor());
        let b = to_f64(vm_ref.data().lock().unwrap()[name].as_tensor());
        assert!(rel_err(&a, &b) < 1e-6, "{name}: {a:?} vs {b:?}");
    }
    assert_eq!(to_f64(ours.running_mean()), to_f64(vm_ours.data().lock().unwrap()["running_mean"].as_tensor()));
    let x = rng.normal_tensor((2, c, 3, 3), 0.0, 1.0, DType::F32, &dev).unwrap();
    let a = to_f64(&ours.forward_t(&x, false).unwrap());
    let b = to_f64(&reference.forward_t(&x, false).unwrap());
    assert!(rel_err(&a, &b) < 1e-6);
}

/// Over loaded tensors (no `VarMap`), the running statistics are the
/// module's own copies, updated in training mode only.
#[test]
fn batch_norm_module_over_loaded_tensors() {
    let dev = Device::Cpu;
    let c = 3;
    let mut tensors = std::collections::HashMap::new();
    tensors.insert("running_mean".to_string(), Tensor::zeros(c, DType::F32, &dev).unwrap());
    tensors.insert("running_var".to_string(), Tensor::ones(c, DType::F32, &dev).unwrap());
    tensors.insert("weight".to_string(), Tensor::ones(c, DType::F32, &dev).unwrap());
    tensors.insert("bias".to_string(), Tensor::zeros(c, DType::F32, &dev).unwrap());
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
    let bn = BatchNorm::new(c, 1e-5, 0.1, vb).unwrap();
    let x = (Tensor::ones((2, c, 2, 2), DType::F32, &dev).unwrap() * 5.0).unwrap();
    bn.forward_t(&x, false).unwrap();
    assert_eq!(to_f64(bn.running_mean()), vec![0.0; c]);
    bn.forward_t(&x, true).unwrap();
    let rm = to_f64(bn.running_mean());
    assert!(rm.iter().all(|v| (v - 0.5).abs() < 1e-6), "{rm:?}");
    let rv = to_f64(bn.running_var());
    assert!(rv.iter().all(|v| (v - 0.9).abs() < 1e-6), "{rv:?}");
}

/// BatchNorm with its activation inside the op equals BatchNorm then the
/// activation as ops of their own: the output, the batch statistics, and the
/// gradients of the input, γ and β (the mask taken from the output).
#[test]
fn batch_norm_with_its_activation_matches_the_two_ops() {
    use tfkd_core::activation::Activation;
    use tfkd_core::norm::batch_norm_act_train;
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(31);
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        for act in [Activation::Relu, Activation::Relu6] {
            for dims in random_shapes(12, 7) {
                let c = dims[1];
                // Scaled so that ReLU6's upper bound is crossed too.
                let x = (rng.normal_tensor(dims.as_slice(), 0.0, 1.0, dtype, &dev).unwrap() * 4.0).unwrap();
                let w = rng.uniform_tensor(c, 0.5, 8.0, dtype, &dev).unwrap();
                let b = rng.uniform_tensor(c, -2.0, 2.0, dtype, &dev).unwrap();
                let r = rng.uniform_tensor(dims.as_slice(), -1.0, 1.0, dtype, &dev).unwrap();
                let run = |fused: bool| {
                    let (xv, wv, bv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap(), Var::from_tensor(&b).unwrap());
                    let out = if fused {
                        batch_norm_act_train(&xv, &wv, &bv, 1e-5, act).unwrap()
                    } else {
                        let out = batch_norm_train(&xv, &wv, &bv, 1e-5).unwrap();
                        tfkd_core::norm::BatchNormOutput { y: act.apply(&out.y).unwrap(), ..out }
                    };
                    let g = (&out.y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    [&out.y, &out.mean, &out.var, g.get(&xv).unwrap(), g.get(&wv).unwrap(), g.get(&bv).unwrap()].map(to_f64)
                };
                let (fused, separate) = (run(true), run(false));
                // The one pass rounds as the separate ops: the same bits.
                assert_eq!(fused[0], separate[0], "{dtype:?} {act:?} {dims:?} y");
                for (i, what) in ["y", "mean", "var", "dx", "dgamma", "dbeta"].iter().enumerate() {
                    let err = rel_err(&fused[i], &separate[i]);
                    assert!(err <= tol, "{dtype:?} {act:?} {dims:?} {what}: {err:e}");
                }
            }
        }
    }
}

/// The module's `forward_act_t` in training mode: the same output and running
/// statistics as `forward_t` then the activation.
#[test]
fn batch_norm_module_forward_act_t_matches_forward_t_then_the_activation() {
    use tfkd_core::activation::Activation;
    let dev = Device::Cpu;
    let c = 5;
    let (vm_a, vm_b) = (VarMap::new(), VarMap::new());
    let a = BatchNorm::new(c, 1e-5, 0.1, VarBuilder::from_varmap(&vm_a, DType::F32, &dev)).unwrap();
    let b = BatchNorm::new(c, 1e-5, 0.1, VarBuilder::from_varmap(&vm_b, DType::F32, &dev)).unwrap();
    let mut rng = SeededRng::new(32);
    for train in [true, true, false] {
        let x = (rng.normal_tensor((4, c, 3, 3), 0.0, 3.0, DType::F32, &dev).unwrap() + 1.0).unwrap();
        let ya = a.forward_act_t(&x, train, Some(Activation::Relu6)).unwrap();
        let yb = Activation::Relu6.apply(&b.forward_t(&x, train).unwrap()).unwrap();
        assert!(rel_err(&to_f64(&ya), &to_f64(&yb)) < 1e-6, "train {train}");
    }
    assert_eq!(to_f64(a.running_mean()), to_f64(b.running_mean()));
    assert_eq!(to_f64(a.running_var()), to_f64(b.running_var()));
}

/// BatchNorm with a residual (and an activation) inside the op equals
/// BatchNorm, the sum and the activation as ops of their own: the output,
/// the statistics, and the gradients of the input, the residual, γ and β.
#[test]
fn batch_norm_with_a_residual_matches_the_separate_ops() {
    use tfkd_core::activation::Activation;
    use tfkd_core::norm::batch_norm_residual_train;
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(33);
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        for act in [None, Some(Activation::Relu), Some(Activation::Relu6)] {
            for dims in random_shapes(10, 8) {
                let c = dims[1];
                let x = (rng.normal_tensor(dims.as_slice(), 0.0, 1.0, dtype, &dev).unwrap() * 3.0).unwrap();
                let s = (rng.normal_tensor(dims.as_slice(), 0.0, 1.0, dtype, &dev).unwrap() * 3.0).unwrap();
                let w = rng.uniform_tensor(c, 0.5, 4.0, dtype, &dev).unwrap();
                let b = rng.uniform_tensor(c, -2.0, 2.0, dtype, &dev).unwrap();
                let r = rng.uniform_tensor(dims.as_slice(), -1.0, 1.0, dtype, &dev).unwrap();
                let run = |fused: bool| {
                    let vars = [&x, &s, &w, &b].map(|t| Var::from_tensor(t).unwrap());
                    let [xv, sv, wv, bv] = &vars;
                    let out = if fused {
                        batch_norm_residual_train(xv, wv, bv, 1e-5, sv, act).unwrap()
                    } else {
                        let out = batch_norm_train(xv, wv, bv, 1e-5).unwrap();
                        let y = (&out.y + sv.as_tensor()).unwrap();
                        let y = match act {
                            Some(a) => a.apply(&y).unwrap(),
                            None => y,
                        };
                        tfkd_core::norm::BatchNormOutput { y, ..out }
                    };
                    let g = (&out.y * &r).unwrap().sum_all().unwrap().backward().unwrap();
                    let grads = vars.each_ref().map(|v| to_f64(g.get(v).unwrap()));
                    (to_f64(&out.y), to_f64(&out.mean), to_f64(&out.var), grads)
                };
                let (fused, separate) = (run(true), run(false));
                // The one pass rounds as the separate ops: the same bits.
                assert_eq!(fused.0, separate.0, "{dtype:?} {act:?} {dims:?} y");
                let pairs = [
                    ("y", &fused.0, &separate.0),
                    ("mean", &fused.1, &separate.1),
                    ("var", &fused.2, &separate.2),
                    ("dx", &fused.3[0], &separate.3[0]),
                    ("dresidual", &fused.3[1], &separate.3[1]),
                    ("dgamma", &fused.3[2], &separate.3[2]),
                    ("dbeta", &fused.3[3], &separate.3[3]),
                ];
                for (what, a, b) in pairs {
                    let err = rel_err(a, b);
                    assert!(err <= tol, "{dtype:?} {act:?} {dims:?} {what}: {err:e}");
                }
            }
        }
    }
}

/// `forward_into_residual_act_t` (the output written into the residual's
/// buffer) against `forward_residual_act_t`: the same output, running
/// statistics and gradients (input, the residual's source, γ, β), bit for
/// bit, with one buffer fewer kept by the graph; and with the residual held
/// elsewhere it writes nothing into it.
#[test]
fn batch_norm_into_the_residual_is_the_residual_form_with_one_buffer_less() {
    use tfkd_core::activation::Activation;
    use tfkd_core::graph::kept_by_graph;
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(34);
    for dtype in [DType::F32, DType::F64] {
        for act in [None, Some(Activation::Relu)] {
            let (n, c, h, w) = (3, 4, 5, 5);
            let x = rng.normal_tensor((n, c, h, w), 0.5, 2.0, dtype, &dev).unwrap();
            let s = rng.normal_tensor((n, c, h, w), 0.0, 1.0, dtype, &dev).unwrap();
            let r = rng.uniform_tensor((n, c, h, w), -1.0, 1.0, dtype, &dev).unwrap();
            let run = |into: bool, hold: bool| {
                let vm = VarMap::new();
                let bn = BatchNorm::new(c, 1e-5, 0.1, VarBuilder::from_varmap(&vm, dtype, &dev)).unwrap();
                let (xv, sv) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&s).unwrap());
                // The residual as a projection shortcut makes it: an op whose
                // backward pass does not read its output.
                let residual = (sv.as_tensor() * 2.0).unwrap();
                let held = hold.then(|| residual.clone());
                let y = if into {
                    bn.forward_into_residual_act_t(&xv, residual, true, act).unwrap()
                } else {
                    bn.forward_residual_act_t(&xv, &residual, true, act).unwrap()
                };
                if let Some(held) = held {
                    assert_eq!(to_f64(&held), to_f64(&(&s * 2.0).unwrap()), "a residual held elsewhere is not written");
                }
                let loss = (&y * &r).unwrap().sum_all().unwrap();
                let kept = kept_by_graph(&loss).bytes;
                let g = loss.backward().unwrap();
                let (gamma, beta) = bn.weight_and_bias();
                let grads = [g.get(&xv), g.get(&sv), g.get(gamma), g.get(beta)].map(|t| to_f64(t.unwrap()));
                (to_f64(&y), to_f64(bn.running_mean()), to_f64(bn.running_var()), grads, kept)
            };
            let reference = run(false, false);
            let buffer = (n * c * h * w * dtype.size_in_bytes()) as u64;
            for hold in [false, true] {
                let got = run(true, hold);
                let case = format!("{dtype:?} {act:?} residual held elsewhere: {hold}");
                assert_eq!(got.0, reference.0, "{case}: y");
                assert_eq!((&got.1, &got.2), (&reference.1, &reference.2), "{case}: running statistics");
                for (i, name) in ["dx", "dsource", "dgamma", "dbeta"].iter().enumerate() {
                    assert_eq!(got.3[i], reference.3[i], "{case}: {name}");
                }
                let saved = if hold { 0 } else { buffer };
                assert_eq!(got.4 + saved, reference.4, "{case}: bytes kept");
            }
        }
    }
}

/// The training step's backward pass that hands activations back as it goes
/// (`tfkd_core::optim::backward`, candle-core patch 5) against candle's
/// plain one, on a small network of the zoo's ops (a biased conv, BatchNorm
/// with ReLU, a projection shortcut written in place, a convolution's sums
/// with a residual, a concatenation, pooling): the same gradients bit for
/// bit; the tensors the caller kept
/// (the loss, the logits) unchanged; and the graph refuses a second
/// backward pass with an error instead of reading released buffers.
#[test]
fn the_releasing_backward_pass_gives_the_same_gradients_once() {
    use tfkd_core::activation::Activation;
    use tfkd_core::conv::{cat_conv2d, conv2d, conv2d_accumulate, conv2d_add, conv2d_with_bias};
    let dev = Device::Cpu;
    let mut rng = SeededRng::new(35);
    let x = rng.normal_tensor((4, 3, 8, 8), 0.0, 1.0, DType::F32, &dev).unwrap();
    let r = rng.uniform_tensor((4, 10), -1.0, 1.0, DType::F32, &dev).unwrap();
    let run = |releasing: bool| {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
        let mut rng = SeededRng::new(36);
        let mut param = |name: &str, shape: &[usize]| {
            let t = rng.normal_tensor(shape, 0.0, 0.3, DType::F32, &dev).unwrap();
            vm.data().lock().unwrap().insert(name.to_string(), Var::from_tensor(&t).unwrap());
            vm.data().lock().unwrap()[name].as_tensor().clone()
        };
        let (w1, b1, w2, ws, w3) = (param("w1", &[6, 3, 3, 3]), param("b1", &[6]), param("w2", &[6, 6, 3, 3]), param("ws", &[6, 6, 1, 1]), param("w3", &[4, 6, 3, 3]));
        let (w4, w5, w6) = (param("w4", &[6, 6, 3, 3]), param("w5", &[6, 6, 3, 3]), param("w6", &[6, 6, 1, 1]));
        let fc = param("fc", &[10, 10]);
        let (bn1, bn2, bns) = (
            BatchNorm::new(6, 1e-5, 0.1, vb.pp("bn1")).unwrap(),
            BatchNorm::new(6, 1e-5, 0.1, vb.pp("bn2")).unwrap(),
            BatchNorm::new(6, 1e-5, 0.1, vb.pp("bns")).unwrap(),
        );
        let h = conv2d_with_bias(&x, &w1, &b1, 1, 1, 1).unwrap();
        let h = bn1.forward_act_t(&h, true, Some(Activation::Relu)).unwrap();
        let short = bns.forward_t(&conv2d(&h, &ws, 0, 2, 1).unwrap(), true).unwrap();
        let main = conv2d(&h, &w2, 1, 2, 1).unwrap();
        let h = bn2.forward_into_residual_act_t(&main, short, true, Some(Activation::Relu)).unwrap();
        // Pre-activation sums: into a convolution's output, and a 1x1
        // convolution accumulated into another's (its output never kept).
        let h = conv2d_add(&h, &w4, &h, 1, 1, 1).unwrap();
        let h = conv2d_accumulate(conv2d(&h, &w5, 1, 1, 1).unwrap(), &h, &w6, 0, 1, 1).unwrap();
        let h = cat_conv2d(&h, &h, &w3, 1, 1, 1).unwrap(); // (4, 10, 4, 4)
        let logits = h.mean((2, 3)).unwrap().matmul(&fc.t().unwrap()).unwrap();
        let loss = (&logits * &r).unwrap().sum_all().unwrap();
        let grads = if releasing { tfkd_core::optim::backward(&loss).unwrap() } else { loss.backward().unwrap() };
        let mut names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
        names.sort();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let got: Vec<(String, Vec<f32>)> = names
            .iter()
            // The running statistics are variables without a gradient.
            .filter_map(|n| grads.get(vm.data().lock().unwrap()[n].as_tensor()).map(|g| (n.clone(), flat(g))))
            .collect();
        assert_eq!(got.len(), 15, "every parameter has a gradient: {names:?}");
        let again = loss.backward().map(|_| ()).map_err(|e| e.to_string());
        (got, flat(&logits), loss.to_scalar::<f32>().unwrap(), again)
    };
    let (kept, releasing) = (run(false), run(true));
    assert_eq!(releasing.0, kept.0, "the gradients");
    assert_eq!((releasing.1.clone(), releasing.2), (kept.1.clone(), kept.2), "the logits and the loss the caller kept");
    assert!(kept.3.is_ok(), "a kept graph can be differentiated again");
    let err = releasing.3.expect_err("a released graph refuses a second backward pass");
    assert!(err.contains("released"), "{err}");
}
