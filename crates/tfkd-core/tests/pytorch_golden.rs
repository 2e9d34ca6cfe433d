//! Losses, gradients, SGD steps and schedules against PyTorch.
//!
//! The references were computed by `scripts/gen_core_fixtures.py` (PyTorch CPU,
//! float64, the official repository's loss code) and committed under
//! `fixtures/core/`. Here the same float32 inputs go through tfkd-core in
//! float32; values and gradients must agree to 1e-5 relative.

// The checks read `!(err <= tol)` on purpose: a NaN error must fail them.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use tfkd_core::loss::{
    cross_entropy, kl_div, KdLoss, KlReduction, LabelSmoothing, SmoothingForm, VirtualTeacherLoss,
};
use tfkd_core::optim::{Adam, AdamConfig, Optimizer, OptimizerConfig, SgdConfig};
use tfkd_core::schedule::{Decay, LrSchedule};

const REL_TOL: f64 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/core").join(name)
}

fn load_json(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name)).expect("committed fixture");
    serde_json::from_str(&text).expect("valid fixture json")
}

fn load_tensors(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name), &Device::Cpu).expect("committed fixture")
}

fn reduction(params: &Value) -> KlReduction {
    match params.get("reduction").and_then(Value::as_str) {
        None | Some("mean") => KlReduction::ElementwiseMean,
        Some("batchmean") => KlReduction::BatchMean,
        Some("sum") => KlReduction::Sum,
        Some(other) => panic!("unknown reduction {other}"),
    }
}

fn f(params: &Value, key: &str) -> f64 {
    params[key].as_f64().unwrap_or_else(|| panic!("param {key}"))
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

#[test]
fn losses_and_gradients_match_pytorch() {
    let meta = load_json("losses.json");
    let tensors = load_tensors("losses.safetensors");
    let cases = meta["cases"].as_array().unwrap();
    assert!(cases.len() >= 150, "fixture has {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let (i, g) = (case["index"].as_u64().unwrap(), case["group"].as_u64().unwrap());
        let name = case["name"].as_str().unwrap();
        let get = |key: &str| tensors[&format!("g{g}.{key}")].clone();
        let student = Var::from_tensor(&get("student")).unwrap();
        let (labels, teacher, target) = (get("labels"), get("teacher"), get("target"));
        let p = &case["params"];
        let loss = match case["kind"].as_str().unwrap() {
            "cross_entropy" => cross_entropy(&student, &labels),
            "label_smoothing" => {
                let form = match p["form"].as_str().unwrap() {
                    "official" => SmoothingForm::Official,
                    _ => SmoothingForm::Uniform,
                };
                LabelSmoothing { epsilon: f(p, "epsilon"), form }.forward(&student, &labels).map(|t| t.total)
            }
            "kd" => KdLoss::official(f(p, "alpha"), f(p, "temperature"))
                .forward(&student, &teacher, &labels)
                .map(|t| t.total),
            "kd_self" => KdLoss::self_training(f(p, "alpha"), f(p, "temperature"), f(p, "multiplier"))
                .with_reduction(reduction(p))
                .forward(&student, &teacher, &labels)
                .map(|t| t.total),
            "reg" => {
                let mut loss = VirtualTeacherLoss::as_coded(f(p, "alpha"), f(p, "temperature"), f(p, "multiplier"))
                    .with_reduction(reduction(p));
                loss.correct_prob = f(p, "correct_prob");
                loss.forward(&student, &labels).map(|t| t.total)
            }
            "reg_eq9" => VirtualTeacherLoss::paper_eq9(
                f(p, "alpha"),
                f(p, "temperature"),
                f(p, "multiplier"),
                p["temperature_squared"].as_bool().unwrap(),
            )
            .forward(&student, &labels)
            .map(|t| t.total),
            "kl_div" => {
                let log_p = candle_nn::ops::log_softmax(&student, 1).unwrap();
                kl_div(&log_p, &target, reduction(p))
            }
            other => panic!("unknown kind {other}"),
        };
        let loss = match loss {
            Ok(l) => l,
            Err(e) => {
                failures.push(format!("{name}: error {e}"));
                continue;
            }
        };
        let ours: f64 = loss.to_dtype(DType::F64).unwrap().to_scalar().unwrap();
        let reference = case["loss"].as_f64().unwrap();
        if !((ours - reference).abs() <= REL_TOL * reference.abs().max(1e-30)) {
            failures.push(format!("{name}: loss {ours} vs {reference}"));
        }
        let grads = loss.backward().unwrap();
        let grad = grads.get(&student).expect("gradient reaches the student logits");
        let expected = &tensors[&format!("{i}.grad")];
        let scale = max_abs(expected);
        let err = max_abs(&(grad - expected).unwrap());
        if !(err <= REL_TOL * scale.max(1e-30)) || !grad.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|x| x.is_finite()) {
            failures.push(format!("{name}: gradient error {err:e} vs max |grad| {scale:e}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ from PyTorch:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Replays the optimizer runs of `<stem>.json` / `<stem>.safetensors`
/// (recorded from `torch.optim`, a least-squares loss, the lr changed before
/// every step) and checks every parameter after every step. At step
/// `resume_at` the optimizer is rebuilt from its saved state: the
/// trajectory must not change. A variable without gradient must not move.
fn replay_torch_optimizer(stem: &str, resume_at: usize, config: impl Fn(Value) -> OptimizerConfig) -> tfkd_core::Result<()> {
    let meta = load_json(&format!("{stem}.json"));
    let t = load_tensors(&format!("{stem}.safetensors"));
    for run in meta["runs"].as_array().unwrap() {
        let r = run["index"].as_u64().unwrap();
        let config = config(run["config"].clone());
        let lrs: Vec<f64> = serde_json::from_value(run["lrs"].clone()).unwrap();
        let w = Var::from_tensor(&t["w0"])?;
        let b = Var::from_tensor(&t["b0"])?;
        let frozen = Var::from_tensor(&t["frozen0"])?;
        let params = vec![("w".into(), w.clone()), ("b".into(), b.clone()), ("frozen".into(), frozen.clone())];
        let mut opt = Optimizer::new(params.clone(), config)?;
        for (step, &lr) in lrs.iter().enumerate() {
            if step == resume_at {
                let state = opt.state().into_iter().collect();
                opt = Optimizer::new(params.clone(), config)?;
                opt.load_state(state)?;
            }
            opt.set_learning_rate(lr)?;
            let pred = t["x"].matmul(&w.t()?)?.broadcast_add(&b)?;
            let loss = (pred - &t["y"])?.sqr()?.mean_all()?;
            opt.backward_step(&loss)?;
            for (name, var) in [("w", &w), ("b", &b)] {
                let expected = &t[&format!("{r}.{name}{}", step + 1)];
                let err = max_abs(&(var.as_tensor() - expected)?);
                assert!(err <= REL_TOL * max_abs(expected), "{stem} run {r} step {} {name}: error {err:e}", step + 1);
            }
        }
        let unchanged = (frozen.as_tensor() - &t["frozen0"])?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(unchanged, 0.0, "{stem}: a variable without gradient was moved");
    }
    Ok(())
}

#[test]
fn sgd_steps_match_torch_optim_sgd() -> tfkd_core::Result<()> {
    replay_torch_optimizer("sgd", 2, |c| OptimizerConfig::Sgd(serde_json::from_value::<SgdConfig>(c).unwrap()))
}

#[test]
fn adam_steps_match_torch_optim_adam() -> tfkd_core::Result<()> {
    replay_torch_optimizer("adam", 3, |c| OptimizerConfig::Adam(serde_json::from_value::<AdamConfig>(c).unwrap()))
}

#[test]
fn adam_state_errors_name_the_parameter() -> tfkd_core::Result<()> {
    let dev = candle_core::Device::Cpu;
    let w = Var::from_tensor(&candle_core::Tensor::ones((2, 2), candle_core::DType::F32, &dev)?)?;
    let mut opt = Adam::new(vec![("w".into(), w.clone())], AdamConfig::default())?;
    let loss = w.as_tensor().sqr()?.sum_all()?;
    opt.backward_step(&loss)?;
    let mut state: std::collections::HashMap<_, _> = opt.state().into_iter().collect();
    assert_eq!(state.len(), 3);
    state.remove("w.step");
    let err = opt.load_state(state).unwrap_err().to_string();
    assert!(err.contains("w") && err.contains("incomplete"), "{err}");
    assert!(AdamConfig { beta1: 1.0, ..AdamConfig::default() }.validate().unwrap_err().to_string().contains("beta1"));
    Ok(())
}

#[test]
fn schedules_match_the_official_training_loop() {
    let meta = load_json("schedules.json");
    for run in meta["runs"].as_array().unwrap() {
        let decay: Decay = serde_json::from_value(run["decay"].clone()).unwrap();
        let schedule = LrSchedule {
            base_lr: run["base_lr"].as_f64().unwrap(),
            warmup_epochs: run["warmup_epochs"].as_u64().unwrap() as usize,
            iters_per_epoch: run["iters_per_epoch"].as_u64().unwrap() as usize,
            decay,
        };
        schedule.validate().unwrap();
        let rows = run["lrs"].as_array().unwrap();
        assert!(rows.len() >= 100);
        for row in rows {
            let (epoch, iter, lr) =
                (row[0].as_u64().unwrap() as usize, row[1].as_u64().unwrap() as usize, row[2].as_f64().unwrap());
            let ours = schedule.lr(epoch, iter);
            assert!(
                (ours - lr).abs() <= 1e-12 * lr.abs().max(1e-12),
                "{}: epoch {epoch} iteration {iter}: {ours} vs PyTorch {lr}",
                run["name"]
            );
        }
    }
}
