//! Batch normalisation with a fused training pass on the CPU.
//!
//! candle-nn 0.11.1's `BatchNorm::forward_train` is a graph of about a dozen
//! ops (transpose, copy, two means, broadcast subtract / divide / multiply /
//! add, transpose back), each a pass over the activations, and as many more
//! in the backward pass, where candle also adds every node's gradient into a
//! fresh zero tensor. [`batch_norm_train`] is one custom op: per channel `c`
//! over the `M = N·H·W` values (any trailing dims),
//!
//! ```text
//! μ = (1/M) Σ x,   σ² = (1/M) Σ (x − μ)²   (biased, one pass of shifted sums)
//! y = (x − μ) · γ/√(σ² + ε) + β
//! ```
//!
//! and its backward gives, with `x̂ = (x − μ)/√(σ² + ε)` and the upstream
//! gradient `g`,
//!
//! ```text
//! ∂L/∂β = Σ g,   ∂L/∂γ = Σ g·x̂,
//! ∂L/∂x = γ/√(σ² + ε) · (g − (1/M) Σ g − x̂ · (1/M) Σ g·x̂)
//! ```
//!
//! The statistics are accumulated per channel in f64 (in eight lanes, shifted
//! by the channel's first value so that `Σ(x − K)² − (Σ(x − K))²/M` does not
//! cancel), the element-wise passes run in the element type; channels (for
//! the sums) and (sample, channel) planes (for the element-wise passes) are
//! split over rayon's pool, each result computed by one thread in a fixed
//! order. [`BatchNorm`] is `nn.BatchNorm2d` on top of it: its evaluation pass
//! and its running-statistics update are candle-nn's, unchanged.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, ModuleT, Result, Shape, Storage, Tensor, Var};
use candle_nn::{BatchNormConfig, VarBuilder};

#[cfg(feature = "cuda")]
mod cudnn;

use crate::activation::{clamp_to, Activation};
use crate::cpu::{avx2_dispatch, filled, for_each_chunk, ncs, slice, supported, Float};

/// The result of a training-mode batch normalisation.
#[derive(Debug, Clone)]
pub struct BatchNormOutput {
    /// The normalised, scaled and shifted input (same shape as the input).
    pub y: Tensor,
    /// The batch mean per channel, `(C,)`, detached, in the parameters'
    /// dtype (the input's, but for bf16 activations over f32 parameters).
    pub mean: Tensor,
    /// The biased batch variance per channel (divided by `M`), `(C,)`,
    /// detached, in the parameters' dtype.
    pub var: Tensor,
}

/// Training-mode batch normalisation of `x: (N, C, …)` over every dim but
/// dim 1, with the affine `weight` (γ) and `bias` (β), both `(C,)`: returns
/// `y = (x − μ)·γ/√(σ² + ε) + β` and the batch statistics (μ and the biased
/// σ²), which the caller uses to update running statistics.
///
/// On the CPU with f32/f64 operands this is one custom op with an analytic
/// backward (module docs); on CUDA with f32 operands, where cuDNN loads, one
/// cuDNN call each way (`norm/cudnn.rs`); elsewhere the same arithmetic as
/// candle-nn's `BatchNorm::forward_train` (composed ops, candle's autograd).
/// Activations in another dtype than the parameters (bf16 over f32) are
/// normalised by cuDNN as they are, elsewhere in the parameters' dtype
/// between two casts; the statistics are then in the parameters' dtype.
pub fn batch_norm_train(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> crate::Result<BatchNormOutput> {
    Ok(batch_norm_train_candle(x, weight, bias, eps, Tail::default())?)
}

/// [`batch_norm_train`] followed by `act`: `y = act(BN(x))` as the output
/// of the one op where tfkd's own BatchNorm runs (the CPU's f32/f64, cuDNN
/// with f32 activations), its backward masking the gradient by `y` before
/// BatchNorm's; the normalised tensor before the activation is never kept.
/// Elsewhere BatchNorm, then the activation as its own op.
pub fn batch_norm_act_train(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, act: Activation) -> crate::Result<BatchNormOutput> {
    Ok(batch_norm_train_candle(x, weight, bias, eps, Tail { residual: None, act: Some(act), into_residual: false })?)
}

/// [`batch_norm_train`] plus a residual connection, then `act`:
/// `y = act(BN(x) + residual)`, `residual` of `x`'s shape and dtype, as the
/// output of BatchNorm's one op where [`batch_norm_act_train`] fuses its
/// activation (the residual's gradient is the masked upstream gradient);
/// elsewhere the sum and the activation as ops of their own.
pub fn batch_norm_residual_train(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    residual: &Tensor,
    act: Option<Activation>,
) -> crate::Result<BatchNormOutput> {
    Ok(batch_norm_train_candle(x, weight, bias, eps, Tail { residual: Some(residual), act, into_residual: false })?)
}

/// What follows the normalisation inside BatchNorm's op: a residual sum,
/// then an activation.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Tail<'a> {
    pub residual: Option<&'a Tensor>,
    pub act: Option<Activation>,
    /// The caller gives the residual up, and the op that made it does not
    /// read its own output in its backward pass: the output may be written
    /// into the residual's buffer ([`BatchNorm::forward_into_residual_act_t`]).
    pub into_residual: bool,
}

impl Tail<'_> {
    /// `y + residual`, then `act`, as ops of their own.
    pub(crate) fn apply_after(&self, y: Tensor) -> Result<Tensor> {
        let y = match self.residual {
            Some(r) => (y + r)?,
            None => y,
        };
        match self.act {
            Some(act) => act.apply_candle(&y),
            None => Ok(y),
        }
    }
}

/// [`batch_norm_train`] (then `tail`) with candle's error, for use inside
/// candle's traits.
pub(crate) fn batch_norm_train_candle(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64, tail: Tail) -> Result<BatchNormOutput> {
    let dims = x.dims();
    if dims.len() < 2 {
        candle_core::bail!("batch_norm_train: the input must have at least two dims, got {:?}", x.shape())
    }
    let c = dims[1];
    if weight.dims() != [c] || bias.dims() != [c] {
        candle_core::bail!(
            "batch_norm_train: input {:?} has {c} channels, weight {:?} and bias {:?} must be ({c},)",
            x.shape(),
            weight.shape(),
            bias.shape()
        )
    }
    if eps.is_nan() || eps < 0.0 {
        candle_core::bail!("batch_norm_train: eps {eps} must be non-negative")
    }
    if let Some(r) = tail.residual {
        if r.dims() != x.dims() || r.dtype() != x.dtype() {
            candle_core::bail!(
                "batch_norm_train: the residual {:?} {:?} must match the input {:?} {:?}",
                r.shape(),
                r.dtype(),
                x.shape(),
                x.dtype()
            )
        }
    }
    let fast = matches!(x.device(), Device::Cpu)
        && supported(x.dtype())
        && weight.dtype() == x.dtype()
        && bias.dtype() == x.dtype();
    // On CUDA: one cuDNN call each way, where it loads (f32 parameters;
    // f32, bf16 or f16 activations).
    #[cfg(feature = "cuda")]
    if let Some(out) = cudnn::batch_norm_train(x, weight, bias, eps, tail)? {
        return Ok(out);
    }
    if weight.dtype() != x.dtype() && bias.dtype() == weight.dtype() {
        // Activations in another dtype than the parameters (bf16 over f32,
        // `precision = "bf16"`) off cuDNN: normalise in the parameters'
        // dtype between two casts.
        let residual = tail.residual.map(|r| r.to_dtype(weight.dtype())).transpose()?;
        let inner = Tail { residual: residual.as_ref(), ..tail };
        let out = batch_norm_train_candle(&x.to_dtype(weight.dtype())?, weight, bias, eps, inner)?;
        return Ok(BatchNormOutput { y: out.y.to_dtype(x.dtype())?, ..out });
    }
    if !fast {
        let out = composed(x, weight, bias, eps)?;
        return Ok(BatchNormOutput { y: tail.apply_after(out.y)?, ..out });
    }
    let x = x.contiguous()?;
    let stats = Arc::new(Mutex::new(None));
    let op = || FusedBatchNorm {
        eps,
        act: tail.act,
        residual: tail.residual.is_some(),
        stats: stats.clone(),
    };
    let y = match tail.residual {
        // The parameters travel packed, γ then β: an op has three operands.
        Some(r) => {
            let wb = Tensor::cat(&[weight, bias], 0)?;
            match into_residual(tail, r, &x, &wb, op)? {
                Some(y) => y,
                None => x.apply_op3(&r.contiguous()?, &wb, op())?,
            }
        }
        None => x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op())?,
    };
    let Some(st) = stats.lock().map_err(|_| poisoned())?.clone() else {
        candle_core::bail!("tfkd-batch-norm: the forward pass left no statistics")
    };
    let to_tensor = |v: &[f64]| Tensor::new(v, x.device())?.to_dtype(x.dtype());
    Ok(BatchNormOutput {
        y,
        mean: to_tensor(&st.mean)?,
        var: to_tensor(&st.var)?,
    })
}

/// candle-nn's `forward_train` arithmetic, returning the statistics too.
fn composed(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<BatchNormOutput> {
    let x_dtype = x.dtype();
    let internal = match x_dtype {
        DType::F16 | DType::BF16 => DType::F32,
        d => d,
    };
    let xt = x.to_dtype(internal)?.transpose(0, 1)?;
    let dims_t = xt.dims().to_vec();
    let xt = xt.flatten_from(1)?.contiguous()?;
    let mean = xt.mean_keepdim(1)?;
    let xc = xt.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(1)?;
    let y = xc
        .broadcast_div(&(&var + eps)?.sqrt()?)?
        .to_dtype(x_dtype)?
        .broadcast_mul(&weight.reshape(((), 1))?)?
        .broadcast_add(&bias.reshape(((), 1))?)?
        .reshape(dims_t)?
        .transpose(0, 1)?;
    Ok(BatchNormOutput {
        y,
        mean: mean.flatten_all()?.detach(),
        var: var.flatten_all()?.detach(),
    })
}

fn poisoned() -> candle_core::Error {
    candle_core::Error::Msg("tfkd-batch-norm: statistics lock poisoned".into())
}

/// Per-channel batch statistics, kept by the op for its backward pass.
#[derive(Debug, Clone)]
struct Stats {
    mean: Vec<f64>,
    /// Biased variance.
    var: Vec<f64>,
    /// `1/√(σ² + ε)`.
    inv_std: Vec<f64>,
}

/// Adds `(v − k)` and `(v − k)²` of every value of `xs` into eight f64 lanes.
#[inline(always)]
fn shifted_sums_impl<E: Float>(xs: &[E], k: f64, l1: &mut [f64; 8], l2: &mut [f64; 8]) {
    let mut chunks = xs.chunks_exact(8);
    for ch in &mut chunks {
        for l in 0..8 {
            let d = ch[l].to_f64() - k;
            l1[l] += d;
            l2[l] += d * d;
        }
    }
    for (l, v) in chunks.remainder().iter().enumerate() {
        let d = v.to_f64() - k;
        l1[l] += d;
        l2[l] += d * d;
    }
}

/// Adds `g` and `g·(x − μ)` over `gs`, `xs` into eight f64 lanes.
#[inline(always)]
fn grad_sums_impl<E: Float>(gs: &[E], xs: &[E], mean: f64, l1: &mut [f64; 8], l2: &mut [f64; 8]) {
    let mut gc = gs.chunks_exact(8);
    let mut xc = xs.chunks_exact(8);
    for (g, x) in (&mut gc).zip(&mut xc) {
        for l in 0..8 {
            let gv = g[l].to_f64();
            l1[l] += gv;
            l2[l] += gv * (x[l].to_f64() - mean);
        }
    }
    for (l, (g, x)) in gc.remainder().iter().zip(xc.remainder()).enumerate() {
        let gv = g.to_f64();
        l1[l] += gv;
        l2[l] += gv * (x.to_f64() - mean);
    }
}

/// `y = clamp((x − μ)·a + β)` over one plane.
#[inline(always)]
fn normalise_impl<E: Float>(xs: &[E], mean: E, a: E, beta: E, bounds: (E, E), ys: &mut [MaybeUninit<E>]) {
    for (y, &x) in ys.iter_mut().zip(xs) {
        y.write(clamp_to((x - mean) * a + beta, bounds));
    }
}

/// `y = clamp((x − μ)·a + β + r)` over one plane.
#[inline(always)]
fn normalise_add_impl<E: Float>(xs: &[E], rs: &[E], mean: E, a: E, beta: E, bounds: (E, E), ys: &mut [MaybeUninit<E>]) {
    for ((y, &x), &r) in ys.iter_mut().zip(xs).zip(rs) {
        y.write(clamp_to((x - mean) * a + beta + r, bounds));
    }
}

/// `r ← clamp((x − μ)·a + β + r)` over one plane.
#[inline(always)]
fn normalise_into_impl<E: Float>(xs: &[E], mean: E, a: E, beta: E, bounds: (E, E), rs: &mut [E]) {
    for (r, &x) in rs.iter_mut().zip(xs) {
        *r = clamp_to((x - mean) * a + beta + *r, bounds);
    }
}

/// `dx = g·A + (x − μ)·B + C` over one plane.
#[inline(always)]
fn input_grad_impl<E: Float>(gs: &[E], xs: &[E], mean: E, coef: [E; 3], dx: &mut [MaybeUninit<E>]) {
    let [a, b, c] = coef;
    for ((d, &g), &x) in dx.iter_mut().zip(gs).zip(xs) {
        d.write(g * a + (x - mean) * b + c);
    }
}

avx2_dispatch!(shifted_sums, shifted_sums_avx2, shifted_sums_impl, (xs: &[E], k: f64, l1: &mut [f64; 8], l2: &mut [f64; 8]));
avx2_dispatch!(grad_sums, grad_sums_avx2, grad_sums_impl, (gs: &[E], xs: &[E], mean: f64, l1: &mut [f64; 8], l2: &mut [f64; 8]));
avx2_dispatch!(normalise, normalise_avx2, normalise_impl, (xs: &[E], mean: E, a: E, beta: E, bounds: (E, E), ys: &mut [MaybeUninit<E>]));
avx2_dispatch!(normalise_add, normalise_add_avx2, normalise_add_impl, (xs: &[E], rs: &[E], mean: E, a: E, beta: E, bounds: (E, E), ys: &mut [MaybeUninit<E>]));
avx2_dispatch!(normalise_into, normalise_into_avx2, normalise_into_impl, (xs: &[E], mean: E, a: E, beta: E, bounds: (E, E), rs: &mut [E]));
avx2_dispatch!(input_grad, input_grad_avx2, input_grad_impl, (gs: &[E], xs: &[E], mean: E, coef: [E; 3], dx: &mut [MaybeUninit<E>]));

fn lane_total(l: &[f64; 8]) -> f64 {
    l.iter().sum()
}

/// Batch statistics of every channel.
fn statistics<E: Float>(x: &[E], (n, c, s): (usize, usize, usize), eps: f64) -> Stats {
    let mut mv = vec![(0.0f64, 0.0f64); c];
    for_each_chunk(&mut mv, 1, n * s, |_: &mut (), ci, out| {
        let k = if s > 0 && n > 0 { x[ci * s].to_f64() } else { 0.0 };
        let (mut l1, mut l2) = ([0.0; 8], [0.0; 8]);
        for ni in 0..n {
            shifted_sums(&x[(ni * c + ci) * s..][..s], k, &mut l1, &mut l2);
        }
        let m = (n * s) as f64;
        let d = lane_total(&l1) / m;
        out[0] = (k + d, (lane_total(&l2) / m - d * d).max(0.0));
    });
    let mean: Vec<f64> = mv.iter().map(|p| p.0).collect();
    let var: Vec<f64> = mv.iter().map(|p| p.1).collect();
    let inv_std = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    Stats { mean, var, inv_std }
}

/// What follows the normalisation inside the op's one pass: the residual
/// added, then the activation's clamp. The rounding is that of separate ops
/// (`y`, then `y + r`, then the clamp), so the fused pass gives the same
/// bits as the passes it replaces.
#[derive(Clone, Copy)]
struct Finish<'a, E> {
    residual: Option<&'a [E]>,
    act: Option<Activation>,
}

/// The statistics, and per channel `(μ, a = γ/√(σ² + ε), β)` in `E`.
fn coefficients<E: Float>(x: &[E], gamma: &[E], beta: &[E], dims: (usize, usize, usize), eps: f64) -> (Vec<(E, E, E)>, Stats) {
    let st = statistics(x, dims, eps);
    let per_channel = (0..dims.1)
        .map(|ci| {
            let a = gamma[ci].to_f64() * st.inv_std[ci];
            (E::from_f64(st.mean[ci]), E::from_f64(a), beta[ci])
        })
        .collect();
    (per_channel, st)
}

/// `finish(BN(x))` into a new buffer, in one pass after the statistics.
fn forward<E: Float>(x: &[E], gamma: &[E], beta: &[E], dims: (usize, usize, usize), eps: f64, finish: Finish<'_, E>) -> (Vec<E>, Stats) {
    let (_, c, s) = dims;
    let (per_channel, st) = coefficients(x, gamma, beta, dims, eps);
    let bounds = Activation::bounds(finish.act);
    // Every plane is written by `normalise` / `normalise_add` (s elements each).
    let y = filled(x.len(), |y| {
        for_each_chunk(y, s.max(1), s, |_: &mut (), idx, ys| {
            let (mean, a, b) = per_channel[idx % c];
            let xs = &x[idx * s..][..s];
            match finish.residual {
                Some(r) => normalise_add(xs, &r[idx * s..][..s], mean, a, b, bounds, ys),
                None => normalise(xs, mean, a, b, bounds, ys),
            }
        })
    });
    (y, st)
}

/// `r ← act(BN(x) + r)`, in one pass after the statistics.
fn forward_into<E: Float>(x: &[E], gamma: &[E], beta: &[E], dims: (usize, usize, usize), eps: f64, act: Option<Activation>, r: &mut [E]) -> Stats {
    let (_, c, s) = dims;
    let (per_channel, st) = coefficients(x, gamma, beta, dims, eps);
    let bounds = Activation::bounds(act);
    for_each_chunk(r, s.max(1), s, |_: &mut (), idx, rs| {
        let (mean, a, b) = per_channel[idx % c];
        normalise_into(&x[idx * s..][..s], mean, a, b, bounds, rs);
    });
    st
}

/// `(∂L/∂x if wanted, ∂L/∂γ, ∂L/∂β)`.
fn backward<E: Float>(
    x: &[E],
    gamma: &[E],
    g: &[E],
    (n, c, s): (usize, usize, usize),
    st: &Stats,
    want_dx: bool,
) -> (Option<Vec<E>>, Vec<E>, Vec<E>) {
    let mut sums = vec![(0.0f64, 0.0f64); c];
    for_each_chunk(&mut sums, 1, n * s, |_: &mut (), ci, out| {
        let (mut l1, mut l2) = ([0.0; 8], [0.0; 8]);
        for ni in 0..n {
            let at = (ni * c + ci) * s;
            grad_sums(&g[at..][..s], &x[at..][..s], st.mean[ci], &mut l1, &mut l2);
        }
        out[0] = (lane_total(&l1), lane_total(&l2));
    });
    let dgamma = (0..c).map(|ci| E::from_f64(sums[ci].1 * st.inv_std[ci])).collect();
    let dbeta = sums.iter().map(|p| E::from_f64(p.0)).collect();
    let dx = want_dx.then(|| {
        let m = (n * s) as f64;
        let coef: Vec<(E, [E; 3])> = (0..c)
            .map(|ci| {
                let (sg, sgx) = sums[ci];
                let gi = gamma[ci].to_f64() * st.inv_std[ci];
                let a = gi;
                let b = -gi * st.inv_std[ci] * st.inv_std[ci] * sgx / m;
                let cc = -gi * sg / m;
                (E::from_f64(st.mean[ci]), [E::from_f64(a), E::from_f64(b), E::from_f64(cc)])
            })
            .collect();
        filled(x.len(), |dx| {
            for_each_chunk(dx, s.max(1), s, |_: &mut (), idx, out| {
                let (mean, k) = coef[idx % c];
                input_grad(&g[idx * s..][..s], &x[idx * s..][..s], mean, k, out);
            })
        })
    });
    (dx, dgamma, dbeta)
}

/// The fused training op: `(x, γ, β) → y`, or with a residual
/// `(x, r, [γ; β]) → y + r`, then `act` of it, in place; the statistics of
/// the forward pass are shared with the caller and kept for the backward
/// pass.
struct FusedBatchNorm {
    eps: f64,
    act: Option<Activation>,
    residual: bool,
    stats: Arc<Mutex<Option<Stats>>>,
}

impl FusedBatchNorm {
    /// Keeps the statistics for the backward pass.
    fn keep(&self, st: Stats) -> Result<()> {
        *self.stats.lock().map_err(|_| poisoned())? = Some(st);
        Ok(())
    }
}

/// The residual form of BatchNorm's op computed into the residual's buffer
/// (`r ← act(BN(x) + r)`): the op's operands `(x, r, [γ; β])` become
/// `(r, x, [γ; β])`, the first being written, and its backward pass is the
/// op's own, its gradients handed back in this order.
struct IntoResidual<O>(O);

/// BatchNorm ops that can write their residual form into the residual.
pub(crate) trait ResidualInPlace: CustomOp3 {
    /// `r ← act(BN(x) + r)` on the CPU.
    fn cpu_into(&self, r: (&mut CpuStorage, &Layout), x: (&CpuStorage, &Layout), wb: (&CpuStorage, &Layout)) -> Result<()> {
        let _ = (r, x, wb);
        candle_core::bail!("{}: no CPU implementation", self.name())
    }

    /// `r ← act(BN(x) + r)` on CUDA.
    fn cuda_into(
        &self,
        r: (&mut candle_core::CudaStorage, &Layout),
        x: (&candle_core::CudaStorage, &Layout),
        wb: (&candle_core::CudaStorage, &Layout),
    ) -> Result<()> {
        let _ = (r, x, wb);
        candle_core::bail!("{}: no CUDA implementation", self.name())
    }
}

/// Runs `op()` into the residual `r` where `tail` allows it and nothing
/// else holds `r` (`Tensor::apply_op3_in_place`); `None`: run it as usual.
pub(crate) fn into_residual<O, F>(tail: Tail, r: &Tensor, x: &Tensor, wb: &Tensor, op: F) -> Result<Option<Tensor>>
where
    O: ResidualInPlace + Send + Sync + 'static,
    F: FnOnce() -> O,
{
    if !tail.into_residual || !r.is_contiguous() || r.dtype() != x.dtype() || r.dims() != x.dims() {
        return Ok(None);
    }
    r.apply_op3_in_place(x, wb, IntoResidual(op()))
}

impl<O: ResidualInPlace> candle_core::InplaceOp3 for IntoResidual<O> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, r: &mut CpuStorage, rl: &Layout, x: &CpuStorage, xl: &Layout, wb: &CpuStorage, wbl: &Layout) -> Result<()> {
        self.0.cpu_into((r, rl), (x, xl), (wb, wbl))
    }

    fn cuda_fwd(
        &self,
        r: &mut candle_core::CudaStorage,
        rl: &Layout,
        x: &candle_core::CudaStorage,
        xl: &Layout,
        wb: &candle_core::CudaStorage,
        wbl: &Layout,
    ) -> Result<()> {
        self.0.cuda_into((r, rl), (x, xl), (wb, wbl))
    }
}

impl<O: ResidualInPlace> CustomOp3 for IntoResidual<O> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("{}: the residual form runs in place only", self.name())
    }

    fn bwd(&self, r: &Tensor, x: &Tensor, wb: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dr, dwb) = self.0.bwd(x, r, wb, res, grad)?;
        Ok((dr, dx, dwb))
    }
}

impl ResidualInPlace for FusedBatchNorm {
    fn cpu_into(&self, (rs, rl): (&mut CpuStorage, &Layout), (xs, xl): (&CpuStorage, &Layout), (ws, wl): (&CpuStorage, &Layout)) -> Result<()> {
        let dims = ncs(xl.shape(), "tfkd-batch-norm")?;
        let Some((start, end)) = rl.contiguous_offsets() else {
            candle_core::bail!("tfkd-batch-norm: the residual must be contiguous")
        };
        fn run<E: Float>(op: &FusedBatchNorm, r: &mut [E], (xs, xl): (&CpuStorage, &Layout), (ws, wl): (&CpuStorage, &Layout), dims: (usize, usize, usize)) -> Result<()> {
            let (x, wb) = (slice::<E>(xs, xl, "the input")?, slice::<E>(ws, wl, "the weight and bias")?);
            let c = dims.1;
            if wb.len() != 2 * c || r.len() != x.len() {
                candle_core::bail!("tfkd-batch-norm: {c} channels, {} packed parameters, a residual of {} for {} values", wb.len(), r.len(), x.len())
            }
            op.keep(forward_into(x, &wb[..c], &wb[c..], dims, op.eps, op.act, r))
        }
        match rs {
            CpuStorage::F32(r) => run::<f32>(self, &mut r[start..end], (xs, xl), (ws, wl), dims),
            CpuStorage::F64(r) => run::<f64>(self, &mut r[start..end], (xs, xl), (ws, wl), dims),
            other => candle_core::bail!("tfkd-batch-norm: unsupported dtype {:?}", other.dtype()),
        }
    }
}

impl CustomOp3 for FusedBatchNorm {
    fn name(&self) -> &'static str {
        "tfkd-batch-norm"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = ncs(xl.shape(), "tfkd-batch-norm")?;
        fn run<E: Float>(
            op: &FusedBatchNorm,
            dims: (usize, usize, usize),
            (xs, xl): (&CpuStorage, &Layout),
            (ws, wl): (&CpuStorage, &Layout),
            (bs, bl): (&CpuStorage, &Layout),
        ) -> Result<CpuStorage> {
            let x = slice::<E>(xs, xl, "the input")?;
            let c = dims.1;
            let (w, b, residual) = if op.residual {
                // (ws, bs) are (the residual, [γ; β]).
                let wb = slice::<E>(bs, bl, "the weight and bias")?;
                if wb.len() != 2 * c {
                    candle_core::bail!("tfkd-batch-norm: {c} channels, {} packed parameters", wb.len())
                }
                (&wb[..c], &wb[c..], Some(slice::<E>(ws, wl, "the residual")?))
            } else {
                (slice::<E>(ws, wl, "the weight")?, slice::<E>(bs, bl, "the bias")?, None)
            };
            if w.len() != c || b.len() != c || residual.is_some_and(|r| r.len() != x.len()) {
                candle_core::bail!("tfkd-batch-norm: {c} channels, weight {} and bias {}", w.len(), b.len())
            }
            let (y, st) = forward(x, w, b, dims, op.eps, Finish { residual, act: op.act });
            op.keep(st)?;
            Ok(E::to_cpu_storage_owned(y))
        }
        let args = ((xs, xl), (ws, wl), (bs, bl));
        let out = match xs.dtype() {
            DType::F32 => run::<f32>(self, dims, args.0, args.1, args.2)?,
            DType::F64 => run::<f64>(self, dims, args.0, args.1, args.2)?,
            other => candle_core::bail!("tfkd-batch-norm: unsupported dtype {other:?}"),
        };
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        arg2: &Tensor,
        arg3: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(st) = self.stats.lock().map_err(|_| poisoned())?.clone() else {
            candle_core::bail!("tfkd-batch-norm: backward before forward")
        };
        let grad = match self.act {
            Some(act) => act.grad_from_output(grad, res)?,
            None => grad.contiguous()?,
        };
        let dims = ncs(x.shape(), "tfkd-batch-norm")?;
        let gamma = &gamma_operand(self.residual, arg2, arg3, dims.1)?;
        let want_dx = x.track_op();
        let (dx, dgamma, dbeta) = {
            let (xg, xl) = x.storage_and_layout();
            let (wg, wl) = gamma.storage_and_layout();
            let (gg, gl) = grad.storage_and_layout();
            let (Storage::Cpu(xs), Storage::Cpu(ws), Storage::Cpu(gs)) = (&*xg, &*wg, &*gg) else {
                candle_core::bail!("tfkd-batch-norm: the backward pass runs on the CPU only")
            };
            fn run<E: Float>(
                (xs, xl): (&CpuStorage, &Layout),
                (ws, wl): (&CpuStorage, &Layout),
                (gs, gl): (&CpuStorage, &Layout),
                dims: (usize, usize, usize),
                st: &Stats,
                want_dx: bool,
            ) -> Result<(Option<CpuStorage>, CpuStorage, CpuStorage)> {
                let (x, w, g) = (slice::<E>(xs, xl, "the input")?, slice::<E>(ws, wl, "the weight")?, slice::<E>(gs, gl, "the gradient")?);
                let (dx, dw, db) = backward(x, w, g, dims, st, want_dx);
                Ok((dx.map(E::to_cpu_storage_owned), E::to_cpu_storage_owned(dw), E::to_cpu_storage_owned(db)))
            }
            let args = ((xs, xl), (ws, wl), (gs, gl));
            match xs.dtype() {
                DType::F32 => run::<f32>(args.0, args.1, args.2, dims, &st, want_dx)?,
                DType::F64 => run::<f64>(args.0, args.1, args.2, dims, &st, want_dx)?,
                other => candle_core::bail!("tfkd-batch-norm: unsupported dtype {other:?}"),
            }
        };
        let dev = x.device();
        let tensor = |s: CpuStorage, shape: Shape| -> Result<Tensor> {
            match s {
                CpuStorage::F32(v) => Tensor::from_vec(v, shape, dev),
                CpuStorage::F64(v) => Tensor::from_vec(v, shape, dev),
                _ => candle_core::bail!("tfkd-batch-norm: unexpected gradient dtype"),
            }
        };
        let c = dims.1;
        let dx = dx.map(|s| tensor(s, x.shape().clone())).transpose()?;
        let (d2, d3) = operand_grads(
            self.residual,
            (arg2, arg3),
            &grad,
            || tensor(dgamma, Shape::from(c)),
            || tensor(dbeta, Shape::from(c)),
        )?;
        Ok((dx, d2, d3))
    }
}

/// γ among a BatchNorm op's operands `(x, arg2, arg3)`: `arg2`, or with a
/// residual (`(x, r, [γ; β])`) the first half of `arg3`.
pub(crate) fn gamma_operand(residual: bool, arg2: &Tensor, arg3: &Tensor, c: usize) -> Result<Tensor> {
    if residual {
        arg3.narrow(0, 0, c)
    } else {
        Ok(arg2.clone())
    }
}

/// The gradients of a BatchNorm op's second and third operands, for those
/// that track: γ's and β's (made by `dgamma`, `dbeta`), or with a residual
/// the residual's (`grad`, the op's masked upstream gradient) and `[γ; β]`'s
/// (the two packed).
pub(crate) fn operand_grads(
    residual: bool,
    (arg2, arg3): (&Tensor, &Tensor),
    grad: &Tensor,
    dgamma: impl FnOnce() -> Result<Tensor>,
    dbeta: impl FnOnce() -> Result<Tensor>,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    if residual {
        let dr = arg2.track_op().then(|| grad.clone());
        let dwb = if arg3.track_op() { Some(Tensor::cat(&[dgamma()?, dbeta()?], 0)?) } else { None };
        return Ok((dr, dwb));
    }
    let dg = if arg2.track_op() { Some(dgamma()?) } else { None };
    let db = if arg3.track_op() { Some(dbeta()?) } else { None };
    Ok((dg, db))
}

/// `nn.BatchNorm2d(c, eps, momentum)` (also `BatchNorm1d`: any input
/// `(N, C, …)`): parameters `weight`, `bias`, buffers `running_mean`,
/// `running_var`, created through `vb` exactly as `candle_nn::batch_norm`
/// creates them (it is built by it).
///
/// Training mode normalises with [`batch_norm_train`] (the fused op on the
/// CPU, cuDNN on CUDA) and updates the running statistics:
/// `r_μ ← (1 − m)·r_μ + m·μ`, `r_σ² ← (1 − m)·r_σ² + m·M/(M − 1)·σ²` (the
/// unbiased variance, as PyTorch), rounded as candle-nn's ops, in place;
/// on cuDNN, cuDNN averages them inside its one call, as PyTorch on a GPU
/// has it do. Evaluation mode, and training on Metal and in other dtypes,
/// are candle-nn's `BatchNorm` unchanged.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    inner: candle_nn::BatchNorm,
    running_mean: Var,
    running_var: Var,
    weight: Tensor,
    bias: Tensor,
}

impl BatchNorm {
    /// A BatchNorm over `num_features` channels with PyTorch's semantics
    /// (affine, mean removed, running statistics updated with `momentum`).
    pub fn new(num_features: usize, eps: f64, momentum: f64, vb: VarBuilder) -> crate::Result<Self> {
        let inner = candle_nn::batch_norm(
            num_features,
            BatchNormConfig {
                eps,
                remove_mean: true,
                affine: true,
                momentum,
            },
            vb,
        )?;
        let Some((weight, bias)) = inner.weight_and_bias().map(|(w, b)| (w.clone(), b.clone())) else {
            return Err(candle_core::Error::Msg("BatchNorm: candle-nn built no affine parameters".into()).into());
        };
        // The running statistics are `Var`s of `inner` (candle-nn makes them
        // so); these handles share their storage.
        let running_mean = Var::from_tensor(inner.running_mean())?;
        let running_var = Var::from_tensor(inner.running_var())?;
        Ok(Self {
            inner,
            running_mean,
            running_var,
            weight,
            bias,
        })
    }

    /// The candle-nn module that runs evaluation (and non-CPU training).
    pub fn inner(&self) -> &candle_nn::BatchNorm {
        &self.inner
    }

    /// `running_mean`, `(C,)`.
    pub fn running_mean(&self) -> &Tensor {
        self.running_mean.as_tensor()
    }

    /// `running_var`, `(C,)`.
    pub fn running_var(&self) -> &Tensor {
        self.running_var.as_tensor()
    }

    /// γ and β.
    pub fn weight_and_bias(&self) -> (&Tensor, &Tensor) {
        (&self.weight, &self.bias)
    }

    /// bf16 activations (`precision = "bf16"`) with f32 parameters and
    /// statistics ([`batch_norm_train`] takes them).
    fn mixed(&self, x: &Tensor) -> bool {
        x.dtype() != self.weight.dtype()
    }

    /// `act(BN(x))` in train (`train`) or evaluation mode; with an
    /// activation, training runs it inside BatchNorm's op where
    /// [`batch_norm_act_train`] can.
    pub fn forward_act_t(&self, x: &Tensor, train: bool, act: Option<Activation>) -> Result<Tensor> {
        self.forward_tail_t(x, train, Tail { residual: None, act, into_residual: false })
    }

    /// `act(BN(x) + residual)` in train (`train`) or evaluation mode
    /// (`residual` of `x`'s shape); training runs the sum and the
    /// activation inside BatchNorm's op where [`batch_norm_residual_train`]
    /// can, so the normalised tensor and the sum are never kept.
    pub fn forward_residual_act_t(&self, x: &Tensor, residual: &Tensor, train: bool, act: Option<Activation>) -> Result<Tensor> {
        self.forward_tail_t(x, train, Tail { residual: Some(residual), act, into_residual: false })
    }

    /// [`BatchNorm::forward_residual_act_t`] for a residual the caller gives
    /// up and whose making op does not read its own output in its backward
    /// pass (a convolution, or BatchNorm without activation: a projection
    /// shortcut). Where the fused op runs and nothing else holds the
    /// residual, the result is written into the residual's buffer, so the
    /// graph keeps one buffer for the shortcut and the sum, as PyTorch's
    /// `out += shortcut` does; otherwise it is `forward_residual_act_t`.
    pub fn forward_into_residual_act_t(&self, x: &Tensor, residual: Tensor, train: bool, act: Option<Activation>) -> Result<Tensor> {
        self.forward_tail_t(x, train, Tail { residual: Some(&residual), act, into_residual: true })
    }

    fn forward_tail_t(&self, x: &Tensor, train: bool, tail: Tail) -> Result<Tensor> {
        let y = if train {
            match self.forward_train(x, tail)? {
                (y, true) => return Ok(y),
                (y, false) => y,
            }
        } else if self.mixed(x) {
            self.inner.forward_t(&x.to_dtype(self.weight.dtype())?, false)?.to_dtype(x.dtype())?
        } else {
            self.inner.forward_t(x, false)?
        };
        tail.apply_after(y)
    }

    /// The training forward, and whether `tail` was applied.
    fn forward_train(&self, x: &Tensor, tail: Tail) -> Result<(Tensor, bool)> {
        let c = self.running_mean.as_tensor().dim(0)?;
        let fused = (self.mixed(x) || x.device().is_cuda() || (matches!(x.device(), Device::Cpu) && supported(x.dtype())))
            && x.rank() >= 2
            && x.dim(1)? == c;
        if !fused {
            return Ok((self.inner.forward_t(x, true)?, false));
        }
        // On cuDNN, the running statistics are averaged inside its call.
        #[cfg(feature = "cuda")]
        if let Some(y) = cudnn::batch_norm_train_updating(
            x,
            &self.weight,
            &self.bias,
            self.inner.eps(),
            [self.running_mean.as_tensor(), self.running_var.as_tensor()],
            self.inner.momentum(),
            tail,
        )? {
            return Ok((y, true));
        }
        let out = batch_norm_train_candle(x, &self.weight, &self.bias, self.inner.eps(), tail)?;
        self.update_running(x, &out)?;
        Ok((out.y, true))
    }

    /// The update of the running statistics: `r ← (1 − m)·r + m·s`, with
    /// `s` the batch mean, or the biased variance times `M/(M − 1)`.
    fn update_running(&self, x: &Tensor, out: &BatchNormOutput) -> Result<()> {
        let c = self.running_mean.as_tensor().dim(0)?;
        let momentum = self.inner.momentum();
        let m = (x.elem_count() / c) as f64;
        running_average(&self.running_mean, &out.mean, 1.0 - momentum, momentum)?;
        running_average(&self.running_var, &out.var, 1.0 - momentum, momentum * m / (m - 1.0))
    }
}

/// `r ← keep·r + gain·s`, rounded as candle-nn's update (two scalings and
/// an addition, each rounded to the element type): in place, one pass, where
/// tfkd's own kernels run (the CPU's f32/f64, CUDA's f32: one launch instead
/// of four ops with three allocations); elsewhere candle-nn's ops.
fn running_average(r: &Var, s: &Tensor, keep: f64, gain: f64) -> Result<()> {
    let r_t = r.as_tensor();
    if crate::own_kernels(r_t) && s.dtype() == r_t.dtype() && s.dims() == r_t.dims() && r_t.is_contiguous() {
        return r_t.inplace_op2(&s.contiguous()?, &RunningAverage { keep, gain });
    }
    r.set(&((r_t * keep)? + (s * gain)?)?)
}

/// The in-place op of [`running_average`] (`(r, s)`).
struct RunningAverage {
    keep: f64,
    gain: f64,
}

impl RunningAverage {
    fn blend<E: Float>(&self, r: &mut [E], s: &[E]) {
        let (keep, gain) = (E::from_f64(self.keep), E::from_f64(self.gain));
        for (r, &s) in r.iter_mut().zip(s) {
            *r = *r * keep + s * gain;
        }
    }
}

impl candle_core::InplaceOp2 for RunningAverage {
    fn name(&self) -> &'static str {
        "tfkd-running-average"
    }

    fn cpu_fwd(&self, r: &mut CpuStorage, rl: &Layout, s: &CpuStorage, sl: &Layout) -> Result<()> {
        let Some((start, end)) = rl.contiguous_offsets() else {
            candle_core::bail!("{}: the running statistic must be contiguous", self.name())
        };
        match r {
            CpuStorage::F32(r) => self.blend(&mut r[start..end], slice::<f32>(s, sl, "the batch statistic")?),
            CpuStorage::F64(r) => self.blend(&mut r[start..end], slice::<f64>(s, sl, "the batch statistic")?),
            other => candle_core::bail!("{}: unsupported dtype {:?}", self.name(), other.dtype()),
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        r: &mut candle_core::cuda_backend::CudaStorage,
        rl: &Layout,
        s: &candle_core::cuda_backend::CudaStorage,
        sl: &Layout,
    ) -> Result<()> {
        crate::cuda::running_average((r, rl), (s, sl), self.keep as f32, self.gain as f32)
    }
}

impl ModuleT for BatchNorm {
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act_t(x, train, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-place update gives candle-nn's composed update bit for bit
    /// (f32, f64: the op; f16: the composed fallback itself).
    #[test]
    fn the_running_average_in_place_is_candle_nns_update() {
        let dev = Device::Cpu;
        let mut rng = crate::rng::SeededRng::new(3);
        for dtype in [DType::F32, DType::F64, DType::F16] {
            let r0 = rng.normal_tensor(37, 0.0, 2.0, DType::F32, &dev).unwrap().to_dtype(dtype).unwrap();
            let s = rng.normal_tensor(37, 1.0, 3.0, DType::F32, &dev).unwrap().to_dtype(dtype).unwrap();
            let (keep, gain) = (1.0 - 0.1, 0.1 * 50.0 / 49.0);
            let want = ((&r0 * keep).unwrap() + (&s * gain).unwrap()).unwrap();
            let r = Var::from_tensor(&r0).unwrap();
            let shared = r.as_tensor().clone();
            running_average(&r, &s, keep, gain).unwrap();
            let bits = |t: &Tensor| t.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            assert_eq!(bits(r.as_tensor()), bits(&want), "{dtype:?}");
            // In place: every handle on the storage sees the update.
            assert_eq!(bits(&shared), bits(&want), "{dtype:?}");
        }
    }
}
