//! The fused CPU losses against the composed candle graphs they replace.
//!
//! Every loss is computed twice on the same inputs — once by the fused custom
//! op (what `forward` runs on the CPU) and once by the composed graph (the
//! hidden `*_composed` entry points, the path every other device takes) — and
//! the values of `total`, `hard` and `soft` and the gradient w.r.t. the student
//! logits are compared. Gradients are taken of `2.5·total − 0.75·hard +
//! 0.5·soft` (upstream gradients that are not 1 and differ per output: the op
//! recomputes the gradient) and of `−1.5·total` (the op scales the gradient it
//! cached in the forward pass), each on a fresh forward pass. Shapes include K = 2, odd N and a batch large enough to be split
//! over threads; logits include ±1e4.

// The checks read `!(err <= tol)` on purpose: a NaN error must fail them.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tfkd_core::loss::{
    cross_entropy, cross_entropy_composed, KdLoss, KlReduction, LabelSmoothing, LossTerms, SmoothingForm,
    VirtualTeacherLoss,
};

const SHAPES: [(usize, usize); 7] = [(1, 2), (3, 2), (7, 5), (33, 100), (65, 10), (129, 200), (17, 1000)];
const REDUCTIONS: [KlReduction; 3] = [KlReduction::ElementwiseMean, KlReduction::BatchMean, KlReduction::Sum];

/// Random logits of shape (n, k): normal·spread, and with `extreme` about a
/// third of the entries replaced by ±1e4.
fn logits(rng: &mut ChaCha8Rng, n: usize, k: usize, spread: f64, extreme: bool) -> Vec<f64> {
    (0..n * k)
        .map(|_| {
            let x: f64 = rng.random::<f64>() * 2.0 - 1.0;
            match rng.random_range(0..6) {
                0 if extreme => 1e4,
                1 if extreme => -1e4,
                _ => x * spread,
            }
        })
        .collect()
}

struct Case {
    student: Var,
    teacher: Tensor,
    labels: Tensor,
}

fn case(rng: &mut ChaCha8Rng, n: usize, k: usize, dtype: DType, extreme: bool) -> Case {
    let dev = Device::Cpu;
    let s = Tensor::from_vec(logits(rng, n, k, 4.0, extreme), (n, k), &dev).unwrap().to_dtype(dtype).unwrap();
    let t = Tensor::from_vec(logits(rng, n, k, 6.0, extreme), (n, k), &dev).unwrap().to_dtype(dtype).unwrap();
    let labels: Vec<u32> = (0..n).map(|_| rng.random_range(0..k as u32)).collect();
    Case { student: Var::from_tensor(&s).unwrap(), teacher: t, labels: Tensor::new(labels, &dev).unwrap() }
}

fn scalar(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

/// The gradient of `2.5·total − 0.75·hard + 0.5·soft` (`mixed`) or of
/// `−1.5·total` w.r.t. the student.
fn gradient(terms: &LossTerms, student: &Var, mixed: bool) -> Tensor {
    let mut objective = (&terms.total * if mixed { 2.5 } else { -1.5 }).unwrap();
    if mixed {
        objective = (objective - (&terms.hard * 0.75).unwrap()).unwrap();
        if let Some(soft) = &terms.soft {
            objective = (objective + (soft * 0.5).unwrap()).unwrap();
        }
    }
    objective.backward().unwrap().get(student).expect("the student gets a gradient").clone()
}

/// Compares values and gradients; returns a description of each mismatch.
/// `forward` computes the loss on the fused (`true`) or composed path.
fn compare(name: &str, forward: &dyn Fn(bool) -> LossTerms, student: &Var, tol: f64) -> Vec<String> {
    let mut errors = Vec::new();
    for mixed in [true, false] {
        let (fused, composed) = (forward(true), forward(false));
        if mixed {
            errors.extend(compare_values(name, &fused, &composed, tol));
        }
        let (gf, gc) = (gradient(&fused, student, mixed), gradient(&composed, student, mixed));
        let scale = max_abs(&gc);
        let err = max_abs(&(&gf - &gc).unwrap().to_dtype(DType::F64).unwrap());
        let values = gf.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
        if !(err <= tol * scale.max(1e-30)) || !values.iter().all(|x| x.is_finite()) {
            errors.push(format!("{name}: gradient (mixed = {mixed}) error {err:e} vs max |grad| {scale:e}"));
        }
    }
    errors
}

fn compare_values(name: &str, fused: &LossTerms, composed: &LossTerms, tol: f64) -> Vec<String> {
    let mut errors = Vec::new();
    let pairs = [
        ("total", Some(&fused.total), Some(&composed.total)),
        ("hard", Some(&fused.hard), Some(&composed.hard)),
        ("soft", fused.soft.as_ref(), composed.soft.as_ref()),
    ];
    for (what, a, b) in pairs {
        match (a, b) {
            (Some(a), Some(b)) => {
                let (a, b) = (scalar(a), scalar(b));
                if !((a - b).abs() <= tol * b.abs().max(1.0)) {
                    errors.push(format!("{name}: {what} fused {a} vs composed {b}"));
                }
            }
            (None, None) => {}
            _ => errors.push(format!("{name}: {what} present on one path only")),
        }
    }
    errors
}

fn run_all(dtype: DType, tol: f64) {
    let mut rng = ChaCha8Rng::seed_from_u64(20200613);
    let mut errors = Vec::new();
    let mut count = 0;
    for extreme in [false, true] {
        for (n, k) in SHAPES {
            let c = case(&mut rng, n, k, dtype, extreme);
            let (s, t, y) = (&c.student, &c.teacher, &c.labels);
            let tag = |loss: &str| format!("{loss} N={n} K={k} {dtype:?} extreme={extreme}");
            let mut check = |name: String, forward: &dyn Fn(bool) -> LossTerms| {
                count += 1;
                errors.extend(compare(&name, forward, s, tol));
            };
            let as_terms = |l: Tensor| LossTerms { hard: l.clone(), total: l, soft: None };
            check(tag("cross_entropy"), &|fused| {
                as_terms(if fused { cross_entropy(s, y) } else { cross_entropy_composed(s, y) }.unwrap())
            });
            for form in [SmoothingForm::Official, SmoothingForm::Uniform] {
                let l = LabelSmoothing { epsilon: 0.1, form };
                check(tag(&format!("{l:?}")), &|fused| {
                    if fused { l.forward(s, y) } else { l.forward_composed(s, y) }.unwrap()
                });
            }
            for reduction in REDUCTIONS {
                for l in [
                    KdLoss::official(0.95, 20.0),
                    KdLoss::self_training(0.9, 6.0, 50.0),
                    KdLoss { temperature_squared: false, ..KdLoss::official(0.3, 1.0) },
                ] {
                    let l = l.with_reduction(reduction);
                    check(tag(&format!("{l:?}")), &|fused| {
                        if fused { l.forward(s, t, y) } else { l.forward_composed(s, t, y) }.unwrap()
                    });
                }
                for l in [
                    VirtualTeacherLoss::as_coded(0.95, 20.0, 100.0),
                    VirtualTeacherLoss::paper_eq9(0.5, 4.0, 1.0, true),
                    VirtualTeacherLoss::paper_eq9(0.1, 1.5, 10.0, false),
                ] {
                    let l = l.with_reduction(reduction);
                    check(tag(&format!("{l:?}")), &|fused| {
                        if fused { l.forward(s, y) } else { l.forward_composed(s, y) }.unwrap()
                    });
                }
            }
        }
    }
    assert!(count >= 290, "only {count} comparisons");
    assert!(errors.is_empty(), "{} of {count} comparisons differ:\n{}", errors.len(), errors.join("\n"));
}

#[test]
fn fused_matches_composed_in_f64() {
    run_all(DType::F64, 1e-9);
}

#[test]
fn fused_matches_composed_in_f32() {
    run_all(DType::F32, 1e-5);
}

/// Rows are split over rayon's threads, but partial sums are combined in a
/// fixed order: the same batch gives bit-identical values and gradients run
/// after run.
#[test]
fn fused_is_deterministic() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let c = case(&mut rng, 301, 300, DType::F32, false);
    let l = KdLoss::self_training(0.9, 20.0, 100.0);
    let run = || {
        let terms = l.forward(&c.student, &c.teacher, &c.labels).unwrap();
        let g = gradient(&terms, &c.student, true).flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (terms.total.to_scalar::<f32>().unwrap(), g)
    };
    let first = run();
    for _ in 0..5 {
        assert_eq!(run(), first);
    }
}

/// A transposed (non-contiguous) view of a variable: the fused op copies it
/// to a contiguous layout and the gradient still reaches the variable.
#[test]
fn non_contiguous_student_logits() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let (n, k) = (9, 13);
    let c = case(&mut rng, k, n, DType::F32, false);
    let student = c.student.as_tensor().t().unwrap();
    assert!(!student.is_contiguous());
    let teacher = c.teacher.t().unwrap();
    let labels = Tensor::new((0..n as u32).map(|i| i % k as u32).collect::<Vec<_>>(), &Device::Cpu).unwrap();
    let l = KdLoss::self_training(0.7, 3.0, 2.0);
    let fused = l.forward(&student, &teacher, &labels).unwrap();
    let composed = l.forward_composed(&student, &teacher, &labels).unwrap();
    assert!(compare_values("transposed", &fused, &composed, 1e-5).is_empty());
    let gf = fused.total.backward().unwrap().get(&c.student).unwrap().clone();
    let gc = composed.total.backward().unwrap().get(&c.student).unwrap().clone();
    assert_eq!(gf.dims(), &[k, n]);
    assert!(max_abs(&(&gf - &gc).unwrap()) <= 1e-5 * max_abs(&gc));
}
