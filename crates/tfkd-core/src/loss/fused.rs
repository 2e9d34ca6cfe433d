//! Fused single-pass losses (CPU, and CUDA with `--features cuda`): one candle [`CustomOp1`] /
//! [`CustomOp2`] per loss, with an analytic backward.
//!
//! Every loss of this module is a sum of at most two weighted row terms of
//! the student logits `z` (N×K), written with `p̂ = softmax(z·σ)` at a student
//! scale σ = 1/τ:
//!
//! ```text
//! hard = w_h · Σₙ Hₙ,   Hₙ = −Σₖ sₙₖ · log softmax(zₙ)ₖ          (σ = 1)
//! soft = w_s · Σₙ Sₙ,   Sₙ = Σₖ tₙₖ · (log tₙₖ − log p̂ₙₖ)
//! total = hard + soft
//! ```
//!
//! * a *label target* `s` (or `t`) puts `on` on the true class and `off` on
//!   every other one: `on = 1, off = 0` is cross-entropy, `(1 − ε, ε/(K−1))`
//!   label smoothing, and `softmax(pᵈ/T)` the Tf-KD_reg virtual teacher;
//! * a *teacher target* is `t = softmax(zᵗ·ς)` of the teacher logits (KD).
//!
//! With `Σs = on + (K−1)·off`, `m = maxₖ zₖ` and `Λ = log Σₖ exp((zₖ − m)σ)`:
//!
//! ```text
//! −Σₖ sₖ log p̂ₖ = Σs·Λ − off·σ·Σₖ(zₖ − m) − (on − off)·σ·(z_y − m)
//! Σₖ tₖ (log tₖ − log p̂ₖ) = (Σₖ eᵗₖ·(ς(zᵗₖ − mᵗ) − σ(zₖ − m)))/Σeᵗ − log Σeᵗ + Λ
//! ∂/∂zₖ [−Σⱼ sⱼ log p̂ⱼ] = σ·(Σs·p̂ₖ − sₖ)
//! ```
//!
//! with `eᵗₖ = exp(ς(zᵗₖ − mᵗ))`. The gradient w.r.t. the student logits is
//! `(g_total + g_hard)·w_h·(Σs·p − s) + (g_total + g_soft)·w_s·σ·(Σt·p̂ − t)`
//! where `g_*` are the upstream gradients of the op's three outputs
//! `[total, hard, soft]`; the teacher and the targets get none.
//!
//! Each row is processed while it is in L1: its max, its exponentials and
//! their sums, the reduction and — when the student tracks gradients — the
//! gradient for back-propagating `total`, which the backward pass then returns
//! (scaled by its upstream gradient) instead of recomputing; any other upstream
//! gradient recomputes it from the inputs. Exponentials of f32 inputs use a
//! vectorisable Cephes-style `expf` (≤ 2 ulp); sums run in eight lanes of the
//! element type within blocks of 64 and are accumulated across blocks in f64,
//! in a fixed order. The row loops are compiled twice, for the baseline target
//! and for AVX2 (chosen at run time). Rows are split into chunks whose size
//! depends only on (N, K), processed on rayon's pool when there are several,
//! and the per-chunk partial sums are added in chunk order: results do not
//! depend on the number of threads.

use crate::Result;
use candle_core::{
    backend::BackendStorage, CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor,
    WithDType,
};
use crate::cpu::{self, avx2_dispatch, block_sum, Float};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Number of elements a chunk of rows must reach before rows are processed on
/// several threads (smaller work runs inline: rayon's hand-off costs more).
const PARALLEL_GRAIN: usize = 16 * 1024;

/// A label target: `on` on the true class, `off` on every other class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LabelTarget {
    /// The true class's mass.
    pub on: f64,
    /// Every other class's mass.
    pub off: f64,
}

/// The soft term's target distribution.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SoftTarget {
    /// `t = softmax(zᵗ·scale)` of the teacher logits (the op's second input).
    Teacher {
        /// ς = 1/T.
        scale: f64,
    },
    /// A label target with its (constant) negative entropy `Σₖ tₖ log tₖ`.
    Labels {
        /// Where the mass goes.
        target: LabelTarget,
        /// `Σₖ tₖ log tₖ` of one row.
        neg_entropy: f64,
    },
}

/// The weighted soft (KL) term.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SoftTerm {
    /// w_s: the weight of `Σₙ KLₙ` in the loss (reduction divisor included).
    pub weight: f64,
    /// σ: the student logits are multiplied by it before the softmax.
    pub student_scale: f64,
    /// The target distribution.
    pub target: SoftTarget,
}

/// The weighted hard (label-target cross-entropy at σ = 1) term.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HardTerm {
    /// w_h: the weight of `Σₙ Hₙ` in the loss.
    pub weight: f64,
    /// The label target `s`.
    pub target: LabelTarget,
}

/// The labels of a fused loss.
#[derive(Debug, Clone)]
pub(crate) enum Labels {
    /// Values checked to be `< K`, on the host (the CPU path; the CUDA path
    /// uploads them).
    Host(Arc<[u32]>),
    /// `(N,)` u32, contiguous, on the logits' GPU, values unchecked: the row
    /// kernel gives a label `≥ K` NaN terms and gradient
    /// (`loss::fused_labels`).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Device(Tensor),
}

/// A fused loss: the configuration of the op (see the module docs).
///
/// When the student logits track gradients, the forward pass also writes the
/// gradient for the upstream gradient `[1, 0, 0]` (back-propagating `total`,
/// the training case) while the rows are in cache, and the backward pass
/// returns it (scaled by `g_total`) instead of recomputing it. Any other
/// upstream gradient, or a second backward pass, recomputes it.
#[derive(Debug)]
pub(crate) struct FusedLoss {
    pub hard: Option<HardTerm>,
    pub soft: Option<SoftTerm>,
    labels: Labels,
    /// Whether the forward pass also computes the gradient.
    cache_gradient: bool,
    /// The gradient for `[1, 0, 0]`, from the forward pass, until used.
    cached: Mutex<Option<CpuStorage>>,
}

/// The scalars of a fused loss, each a 0-d tensor of the logits' dtype.
pub(crate) struct FusedTerms {
    pub total: Tensor,
    pub hard: Tensor,
    pub soft: Tensor,
}

/// Whether `t` can take the fused path: a CPU tensor of f32 or f64, or (with
/// `--features cuda`) an f32 tensor on a GPU, where the same formulas run as
/// two kernels forward (per-row terms, then their sum) and one backward
/// (`cuda/kernels.cu`).
pub(crate) fn supported(t: &Tensor) -> bool {
    crate::own_kernels(t)
}

impl FusedLoss {
    /// A loss over `labels` (see [`Labels`]).
    pub(crate) fn new(hard: Option<HardTerm>, soft: Option<SoftTerm>, labels: Labels) -> Self {
        Self { hard, soft, labels, cache_gradient: false, cached: Mutex::new(None) }
    }

    /// Applies the loss to validated (N, K) CPU logits of f32 / f64. `teacher`
    /// (same shape and dtype) is required by, and only by, a teacher target.
    pub(crate) fn apply(mut self, student: &Tensor, teacher: Option<&Tensor>) -> Result<FusedTerms> {
        let student = student.contiguous()?;
        self.cache_gradient = student.track_op();
        let out = match teacher {
            Some(teacher) => student.apply_op2(&teacher.detach().contiguous()?, self)?,
            None => student.apply_op1(self)?,
        };
        Ok(FusedTerms { total: out.get(0)?, hard: out.get(1)?, soft: out.get(2)? })
    }

    /// The configuration as the CUDA kernels read it.
    #[cfg(feature = "cuda")]
    fn cuda_params(&self) -> crate::cuda::LossParams {
        let mut p = crate::cuda::LossParams::default();
        if let Some(h) = self.hard {
            (p.has_hard, p.hard_weight, p.hard_on, p.hard_off) = (1, h.weight, h.target.on, h.target.off);
        }
        if let Some(soft) = self.soft {
            (p.soft_weight, p.sigma) = (soft.weight, soft.student_scale);
            match soft.target {
                SoftTarget::Labels { target, neg_entropy } => {
                    (p.soft_kind, p.soft_on, p.soft_off, p.neg_entropy) = (1, target.on, target.off, neg_entropy);
                }
                SoftTarget::Teacher { scale } => (p.soft_kind, p.teacher_scale) = (2, scale),
            }
        }
        p
    }

    fn has_teacher(&self) -> bool {
        matches!(self.soft, Some(SoftTerm { target: SoftTarget::Teacher { .. }, .. }))
    }

    /// Forward: `[total, hard, soft]` (and the cached gradient, see above).
    fn forward<E: Float>(&self, z: &[E], teacher: Option<&[E]>, n: usize, k: usize) -> candle_core::Result<Vec<E>> {
        let [h, s] = if self.cache_gradient {
            let mut grad = vec![E::from_f64(0.0); n * k];
            let sums = self.run(z, teacher, n, k, Some((&mut grad, self.coefficients([1.0, 0.0, 0.0]))))?;
            *self.cache() = Some(E::to_cpu_storage_owned(grad));
            sums
        } else {
            self.run(z, teacher, n, k, None)?
        };
        let hard = self.hard.map_or(0.0, |t| t.weight * h);
        let soft = self.soft.map_or(0.0, |t| t.weight * s);
        Ok([hard + soft, hard, soft].map(E::from_f64).to_vec())
    }

    /// Backward: the gradient (N·K) w.r.t. the student logits for upstream
    /// gradients `g = [g_total, g_hard, g_soft]`.
    fn gradient<E: Float>(&self, z: &[E], teacher: Option<&[E]>, n: usize, k: usize, g: [f64; 3]) -> candle_core::Result<Vec<E>> {
        if g[1] == 0.0 && g[2] == 0.0 {
            if let Some(cached) = self.cache().take() {
                let mut grad = E::cpu_storage_data(cached)?;
                if grad.len() == n * k {
                    if g[0] != 1.0 {
                        let scale = E::from_f64(g[0]);
                        grad.iter_mut().for_each(|x| *x *= scale);
                    }
                    return Ok(grad);
                }
            }
        }
        let mut grad = vec![E::from_f64(0.0); n * k];
        self.run(z, teacher, n, k, Some((&mut grad, self.coefficients(g))))?;
        Ok(grad)
    }

    /// `[w_h·(g_total + g_hard), w_s·(g_total + g_soft)]`: the weights of
    /// `∂H` and `∂S` in the gradient.
    fn coefficients(&self, g: [f64; 3]) -> [f64; 2] {
        [self.hard.map_or(0.0, |t| t.weight * (g[0] + g[1])), self.soft.map_or(0.0, |t| t.weight * (g[0] + g[2]))]
    }

    /// The cached gradient (a poisoned lock only means a panic elsewhere
    /// mid-write of an `Option`: the value is still usable).
    fn cache(&self) -> std::sync::MutexGuard<'_, Option<CpuStorage>> {
        self.cached.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs the row kernel over all rows; returns the unweighted `[Σ H, Σ S]`
    /// and, with `grad`, writes `coef[0]·∂H + coef[1]·∂S` into it.
    fn run<E: Float>(
        &self,
        z: &[E],
        teacher: Option<&[E]>,
        n: usize,
        k: usize,
        grad: Option<(&mut [E], [f64; 2])>,
    ) -> candle_core::Result<[f64; 2]> {
        let Labels::Host(labels) = &self.labels else {
            return Err(shape_error("the CPU path was given labels on a GPU"));
        };
        if z.len() != n * k || labels.len() != n || teacher.is_some_and(|t| t.len() != n * k) {
            return Err(shape_error("inputs do not match the labels"));
        }
        if labels.iter().any(|&y| y as usize >= k) {
            return Err(shape_error("a label is out of range"));
        }
        if self.has_teacher() != teacher.is_some() {
            return Err(shape_error("the teacher logits are required by, and only by, a teacher target"));
        }
        // Balanced chunks of at least PARALLEL_GRAIN elements (the last may
        // be shorter); the split depends on (N, K) only.
        let rows_per_chunk = n.div_ceil((n * k / PARALLEL_GRAIN).max(1));
        let chunks = n.div_ceil(rows_per_chunk);
        let chunk = |c: usize, g: Option<(&mut [E], [f64; 2])>| {
            let rows = c * rows_per_chunk..((c + 1) * rows_per_chunk).min(n);
            let span = rows.start * k..rows.end * k;
            let labels = &labels[rows];
            rows_dispatch(self, &z[span.clone()], teacher.map(|t| &t[span]), labels, k, g)
        };
        let partials: Vec<[f64; 2]> = match grad {
            Some((g, coef)) if chunks > 1 => g
                .par_chunks_mut(rows_per_chunk * k)
                .enumerate()
                .map(|(c, g)| chunk(c, Some((g, coef))))
                .collect(),
            Some(g) => vec![chunk(0, Some(g))],
            None if chunks > 1 => (0..chunks).into_par_iter().map(|c| chunk(c, None)).collect(),
            None => vec![chunk(0, None)],
        };
        Ok(partials.iter().fold([0.0, 0.0], |acc, p| [acc[0] + p[0], acc[1] + p[1]]))
    }
}

// Processes consecutive rows (`labels.len()` of them) with the widest vector
// instructions the CPU has: the same code, compiled for AVX2 where detected.
avx2_dispatch!(
    rows_dispatch,
    rows_avx2,
    rows,
    (loss: &FusedLoss, z: &[E], teacher: Option<&[E]>, labels: &[u32], k: usize, grad: Option<(&mut [E], [f64; 2])>)
        -> [f64; 2]
);

/// Runs the row kernel on consecutive rows; returns the sums of `[Hₙ, Sₙ]`.
#[inline(always)]
fn rows<E: Float>(
    loss: &FusedLoss,
    z: &[E],
    teacher: Option<&[E]>,
    labels: &[u32],
    k: usize,
    grad: Option<(&mut [E], [f64; 2])>,
) -> [f64; 2] {
    let mut kernel = RowKernel::new(loss, k);
    let mut sums = [0.0f64; 2];
    let (mut g, coef) = match grad {
        Some((g, coef)) => (Some(g), coef),
        None => (None, [0.0; 2]),
    };
    for (i, &y) in labels.iter().enumerate() {
        let at = i * k..(i + 1) * k;
        let tr = teacher.map(|t| &t[at.clone()]);
        let gr = g.as_deref_mut().map(|g| (&mut g[at.clone()], coef));
        let [h, s] = kernel.row(&z[at], tr, y as usize, gr);
        sums[0] += h;
        sums[1] += s;
    }
    sums
}

fn shape_error(detail: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("fused loss: {detail}"))
}

/// Scratch buffers and the per-row formulas, shared by forward and backward.
struct RowKernel<'a, E> {
    loss: &'a FusedLoss,
    /// `exp(zₖ − m)` (hard term, σ = 1).
    e_hard: Vec<E>,
    /// `exp(σ(zₖ − m))` for the soft term when σ ≠ 1 or there is no hard term.
    e_soft: Vec<E>,
    /// `exp(ς(zᵗₖ − mᵗ))` (teacher target).
    e_teacher: Vec<E>,
    /// Terms of a sum.
    tmp: Vec<E>,
}

impl<'a, E: Float> RowKernel<'a, E> {
    fn new(loss: &'a FusedLoss, k: usize) -> Self {
        let soft_own = loss.soft.is_some_and(|s| loss.hard.is_none() || s.student_scale != 1.0);
        Self {
            loss,
            e_hard: vec![E::from_f64(0.0); if loss.hard.is_some() { k } else { 0 }],
            e_soft: vec![E::from_f64(0.0); if soft_own { k } else { 0 }],
            e_teacher: vec![E::from_f64(0.0); if loss.has_teacher() { k } else { 0 }],
            tmp: vec![E::from_f64(0.0); k],
        }
    }

    /// One row: returns the unweighted `[Hₙ, Sₙ]`; with `grad`, writes
    /// `coef[0]·∂Hₙ/∂z + coef[1]·∂Sₙ/∂z` into it.
    #[inline(always)]
    fn row(&mut self, z: &[E], teacher: Option<&[E]>, y: usize, mut grad: Option<(&mut [E], [f64; 2])>) -> [f64; 2] {
        let k = z.len() as f64;
        let m = row_max(z);
        let zy = z[y].to_f64() - m;
        // Σₖ (zₖ − m), only needed by label targets with off ≠ 0.
        let needs_sum = self.loss.hard.is_some_and(|h| h.target.off != 0.0)
            || matches!(self.loss.soft, Some(SoftTerm { target: SoftTarget::Labels { target, .. }, .. }) if target.off != 0.0);
        let sum_diff = if needs_sum { sum_shifted(z, m, &mut self.tmp) } else { 0.0 };
        let label_ce = |t: LabelTarget, scale: f64, log_sum: f64| {
            (t.on + (k - 1.0) * t.off) * log_sum - t.off * scale * sum_diff - (t.on - t.off) * scale * zy
        };
        let mut out = [0.0; 2];
        let mut hard_sum = f64::NAN;
        if let Some(hard) = self.loss.hard {
            hard_sum = E::exp_sum(z, m, 1.0, &mut self.e_hard);
            out[0] = label_ce(hard.target, 1.0, hard_sum.ln());
            if let Some((g, coef)) = grad.as_mut() {
                label_gradient(g, &self.e_hard, hard_sum, hard.target, y, coef[0]);
            }
        }
        let Some(soft) = self.loss.soft else { return out };
        let sigma = soft.student_scale;
        let (e, sum) = if self.e_soft.is_empty() {
            (&self.e_hard, hard_sum)
        } else {
            let sum = E::exp_sum(z, m, sigma, &mut self.e_soft);
            (&self.e_soft, sum)
        };
        match (soft.target, teacher) {
            (SoftTarget::Labels { target, neg_entropy }, _) => {
                out[1] = neg_entropy + label_ce(target, sigma, sum.ln());
                if let Some((g, coef)) = grad.as_mut() {
                    label_gradient(g, e, sum, target, y, coef[1] * sigma);
                }
            }
            (SoftTarget::Teacher { scale }, Some(t)) => {
                let mt = row_max(t);
                let t_sum = E::exp_sum(t, mt, scale, &mut self.e_teacher);
                let cross = teacher_dot(&self.e_teacher, t, mt, scale, z, m, sigma, &mut self.tmp);
                out[1] = cross / t_sum - t_sum.ln() + sum.ln();
                if let Some((g, coef)) = grad.as_mut() {
                    // σ·(p̂ₖ − tₖ)
                    let a = E::from_f64(coef[1] * sigma / sum);
                    let b = E::from_f64(coef[1] * sigma / t_sum);
                    for ((g, &e), &et) in g.iter_mut().zip(e).zip(&self.e_teacher) {
                        *g += a * e - b * et;
                    }
                }
            }
            (SoftTarget::Teacher { .. }, None) => out[1] = f64::NAN,
        }
        out
    }
}

/// Adds `coef·(Σs·pₖ − sₖ)` to `g`, with `pₖ = eₖ/sum`.
#[inline(always)]
fn label_gradient<E: Float>(g: &mut [E], e: &[E], sum: f64, t: LabelTarget, y: usize, coef: f64) {
    let k = g.len() as f64;
    let a = E::from_f64(coef * (t.on + (k - 1.0) * t.off) / sum);
    let b = E::from_f64(coef * t.off);
    for (g, &e) in g.iter_mut().zip(e) {
        *g += a * e - b;
    }
    g[y] = E::from_f64(g[y].to_f64() - coef * (t.on - t.off));
}

/// `maxₖ xₖ` (as f64), ignoring NaN (a NaN then poisons the exponentials).
#[inline(always)]
fn row_max<E: Float>(xs: &[E]) -> f64 {
    E::row_max(xs)
}

/// `Σₖ (xₖ − shift)` (shift: an element of the row), via `tmp`.
#[inline(always)]
fn sum_shifted<E: WithDType>(xs: &[E], shift: f64, tmp: &mut [E]) -> f64 {
    let shift = E::from_f64(shift);
    for (o, &x) in tmp.iter_mut().zip(xs) {
        *o = x - shift;
    }
    block_sum(&tmp[..xs.len()])
}

/// `Σₖ eₖ·(ς(tₖ − mᵗ) − σ(zₖ − m))` (mᵗ, m: the rows' maxima), via `tmp`.
#[inline(always)]
// Two rows with their maxima and scales, and the scratch buffer: a hot inner
// kernel, kept flat so that it vectorises.
#[allow(clippy::too_many_arguments)]
fn teacher_dot<E: WithDType>(e: &[E], t: &[E], mt: f64, scale_t: f64, z: &[E], m: f64, scale: f64, tmp: &mut [E]) -> f64 {
    let (mt, scale_t, m, scale) = (E::from_f64(mt), E::from_f64(scale_t), E::from_f64(m), E::from_f64(scale));
    for (((o, &e), &t), &z) in tmp.iter_mut().zip(e).zip(t).zip(z) {
        *o = e * (scale_t * (t - mt) - scale * (z - m));
    }
    block_sum(&tmp[..z.len()])
}

/// A contiguous (N, K) slice of `storage` under `layout`.
fn matrix<'s, E: Float>(storage: &'s CpuStorage, layout: &Layout) -> candle_core::Result<(&'s [E], usize, usize)> {
    let (n, k) = layout.shape().dims2()?;
    Ok((cpu::slice(storage, layout, "fused loss: the logits")?, n, k))
}

fn forward_dispatch(
    op: &FusedLoss,
    s: &CpuStorage,
    l: &Layout,
    teacher: Option<(&CpuStorage, &Layout)>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    fn typed<E: Float>(
        op: &FusedLoss,
        s: &CpuStorage,
        l: &Layout,
        teacher: Option<(&CpuStorage, &Layout)>,
    ) -> candle_core::Result<Vec<E>> {
        let (z, n, k) = matrix::<E>(s, l)?;
        let t = teacher.map(|(s, l)| matrix::<E>(s, l).map(|m| m.0)).transpose()?;
        op.forward(z, t, n, k)
    }
    let out = match s.dtype() {
        DType::F32 => CpuStorage::F32(typed::<f32>(op, s, l, teacher)?),
        DType::F64 => CpuStorage::F64(typed::<f64>(op, s, l, teacher)?),
        other => return Err(shape_error(&format!("unsupported dtype {other:?}"))),
    };
    Ok((out, Shape::from(3)))
}

fn backward_dispatch(op: &FusedLoss, student: &Tensor, teacher: Option<&Tensor>, grad_res: &Tensor) -> candle_core::Result<Tensor> {
    if student.device().is_cuda() {
        // The upstream gradient stays on the GPU: the kernel reads it.
        let grad_op = FusedLossGradient(op);
        let g = grad_res.contiguous()?;
        return match teacher {
            Some(t) => student.apply_op3_no_bwd(t, &g, &grad_op),
            None => student.apply_op2_no_bwd(&g, &grad_op),
        };
    }
    let g: [f64; 3] = grad_res
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?
        .try_into()
        .map_err(|_| shape_error("the upstream gradient must have 3 elements"))?;
    let (s_guard, s_layout) = student.storage_and_layout();
    let Storage::Cpu(s) = &*s_guard else { return Err(shape_error("the fused loss runs on the CPU only")) };
    let t_guard = teacher.map(|t| t.storage_and_layout());
    let t = match &t_guard {
        Some((guard, layout)) => match &**guard {
            Storage::Cpu(t) => Some((t, *layout)),
            _ => return Err(shape_error("the fused loss runs on the CPU only")),
        },
        None => None,
    };
    fn typed<E: Float>(
        op: &FusedLoss,
        s: &CpuStorage,
        l: &Layout,
        teacher: Option<(&CpuStorage, &Layout)>,
        g: [f64; 3],
    ) -> candle_core::Result<Vec<E>> {
        let (z, n, k) = matrix::<E>(s, l)?;
        let t = teacher.map(|(s, l)| matrix::<E>(s, l).map(|m| m.0)).transpose()?;
        op.gradient(z, t, n, k, g)
    }
    let shape = s_layout.shape().clone();
    match s.dtype() {
        DType::F32 => Tensor::from_vec(typed::<f32>(op, s, s_layout, t, g)?, shape, student.device()),
        DType::F64 => Tensor::from_vec(typed::<f64>(op, s, s_layout, t, g)?, shape, student.device()),
        other => Err(shape_error(&format!("unsupported dtype {other:?}"))),
    }
}

impl CustomOp1 for FusedLoss {
    fn name(&self) -> &'static str {
        "tfkd-fused-loss"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        forward_dispatch(self, storage, layout, None)
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        return Ok((crate::cuda::fused_loss((s, l), None, &self.labels, self.cuda_params())?, Shape::from(3)));
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (s, l);
            Err(shape_error("built without CUDA"))
        }
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        backward_dispatch(self, arg, None, grad_res).map(Some)
    }
}

impl CustomOp2 for FusedLoss {
    fn name(&self) -> &'static str {
        "tfkd-fused-loss-with-teacher"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        forward_dispatch(self, s1, l1, Some((s2, l2)))
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        return Ok((crate::cuda::fused_loss((s1, l1), Some((s2, l2)), &self.labels, self.cuda_params())?, Shape::from(3)));
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (s1, l1, s2, l2);
            Err(shape_error("built without CUDA"))
        }
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(backward_dispatch(self, arg1, Some(arg2), grad_res)?), None))
    }
}

/// On a GPU: `(z, [zᵗ,] [g_total, g_hard, g_soft]) → ∂L/∂z` by the loss's
/// row kernel, the upstream gradients read on the device.
// Only read by the GPU path.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
struct FusedLossGradient<'a>(&'a FusedLoss);

impl FusedLossGradient<'_> {
    fn cpu_refused() -> candle_core::Result<(CpuStorage, Shape)> {
        Err(shape_error("the GPU gradient op was given CPU tensors"))
    }
}

impl CustomOp2 for FusedLossGradient<'_> {
    fn name(&self) -> &'static str {
        "tfkd-fused-loss-gradient"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::cpu_refused()
    }

    fn cuda_fwd(&self, zs: &CudaStorage, zl: &Layout, gs: &CudaStorage, gl: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        return Ok((
            crate::cuda::fused_loss_gradient((zs, zl), None, &self.0.labels, self.0.cuda_params(), (gs, gl))?,
            zl.shape().clone(),
        ));
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (zs, zl, gs, gl);
            Err(shape_error("built without CUDA"))
        }
    }
}

impl CustomOp3 for FusedLossGradient<'_> {
    fn name(&self) -> &'static str {
        "tfkd-fused-loss-gradient-with-teacher"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        Self::cpu_refused()
    }

    fn cuda_fwd(
        &self,
        zs: &CudaStorage,
        zl: &Layout,
        ts: &CudaStorage,
        tl: &Layout,
        gs: &CudaStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        #[cfg(feature = "cuda")]
        return Ok((
            crate::cuda::fused_loss_gradient((zs, zl), Some((ts, tl)), &self.0.labels, self.0.cuda_params(), (gs, gl))?,
            zl.shape().clone(),
        ));
        #[cfg(not(feature = "cuda"))]
        {
            let _ = (zs, zl, ts, tl, gs, gl);
            Err(shape_error("built without CUDA"))
        }
    }
}
