//! ShuffleNetV2's unit output, "concatenate two branches along the channels,
//! then shuffle the channels in two groups", as one op each way.
//!
//! Composed from candle ops, `channel_shuffle(cat([a, b], 1), 2)` copies the
//! data twice forward (the concatenation, then the transposed view made
//! contiguous) and, backward, splits the gradient through a transposed view
//! that each consumer copies again with strided reads. The shuffle only
//! interleaves the two branches' channels, so [`cat_shuffle`] writes each
//! output plane once from its source plane, and its backward writes each
//! branch's gradient once, plane by plane.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};

use crate::cpu::{filled, for_each_chunk, slice, supported, write_copy};

/// `channel_shuffle(cat([a, b], 1), 2)`: with `a`, `b` of shape
/// `(N, C, H, W)`, `y: (N, 2C, H, W)` with
/// `y[n, 2i] = a[n, i]` and `y[n, 2i + 1] = b[n, i]`; the gradient of `a`
/// is `∂L/∂y[:, 0::2]`, that of `b` is `∂L/∂y[:, 1::2]`.
///
/// On the CPU with f32/f64 operands this is one op each way, and `a`, `b`
/// may be channel slices of a larger tensor (`narrow` along dim 1: each
/// plane contiguous) without a copy; elsewhere the composition of
/// `Tensor::cat` and a transposed reshape.
///
/// # Errors
/// `a` and `b` of different shapes, dtypes or devices, or not 4-D.
pub fn cat_shuffle(a: &Tensor, b: &Tensor) -> crate::Result<Tensor> {
    Ok(cat_shuffle_candle(a, b)?)
}

fn cat_shuffle_candle(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = a.dims4()?;
    if b.dims() != a.dims() || b.dtype() != a.dtype() || !b.device().same_device(a.device()) {
        candle_core::bail!(
            "cat_shuffle: branches of shape {:?} ({:?}) and {:?} ({:?}) on the same device wanted alike",
            a.dims(),
            a.dtype(),
            b.dims(),
            b.dtype()
        )
    }
    if !matches!(a.device(), Device::Cpu) || !supported(a.dtype()) {
        return Tensor::cat(&[a, b], 1)?
            .reshape((n, 2, c, h, w))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((n, 2 * c, h, w));
    }
    planes_contiguous(a)?.apply_op2(&planes_contiguous(b)?, CatShuffle)
}

/// `t` itself when each of its `(n, c)` planes is contiguous (a channel
/// slice of a contiguous tensor is), else a contiguous copy.
fn planes_contiguous(t: &Tensor) -> Result<Tensor> {
    let (_, _, _, w) = t.dims4()?;
    let stride = t.stride();
    if stride[3] == 1 && stride[2] == w {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

/// The element offset of plane `(n, c)` of a 4-D layout whose planes are
/// contiguous.
fn plane_at(l: &Layout, n: usize, c: usize) -> usize {
    l.start_offset() + n * l.stride()[0] + c * l.stride()[1]
}

/// The forward op.
struct CatShuffle;

impl CustomOp2 for CatShuffle {
    fn name(&self) -> &'static str {
        "tfkd-cat-shuffle"
    }

    fn cpu_fwd(&self, sa: &CpuStorage, la: &Layout, sb: &CpuStorage, lb: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = la.shape().dims4()?;
        fn run<E: candle_core::WithDType>(
            a: &[E],
            la: &Layout,
            b: &[E],
            lb: &Layout,
            (n, c, hw): (usize, usize, usize),
        ) -> Vec<E> {
            filled(n * 2 * c * hw, |y| {
                for_each_chunk(y, hw, hw, |_: &mut (), plane, out| {
                    let (ni, co) = (plane / (2 * c), plane % (2 * c));
                    let (src, l) = if co % 2 == 0 { (a, la) } else { (b, lb) };
                    write_copy(out, &src[plane_at(l, ni, co / 2)..][..hw]);
                })
            })
        }
        let dims = (n, c, h * w);
        let out = match (sa, sb) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(run(a, la, b, lb, dims)),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(run(a, la, b, lb, dims)),
            _ => candle_core::bail!("tfkd-cat-shuffle: unsupported dtypes {:?}, {:?}", sa.dtype(), sb.dtype()),
        };
        Ok((out, Shape::from((n, 2 * c, h, w))))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let take = |t: &Tensor, parity: usize| -> Result<Option<Tensor>> {
            if t.track_op() {
                Ok(Some(grad.apply_op1_no_bwd(&EveryOtherChannel { parity })?))
            } else {
                Ok(None)
            }
        };
        Ok((take(a, 0)?, take(b, 1)?))
    }
}

/// `g[:, parity::2]` of a contiguous `(N, 2C, H, W)` gradient, contiguous.
struct EveryOtherChannel {
    parity: usize,
}

impl CustomOp1 for EveryOtherChannel {
    fn name(&self) -> &'static str {
        "tfkd-cat-shuffle-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c2, h, w) = l.shape().dims4()?;
        if c2 % 2 != 0 {
            candle_core::bail!("tfkd-cat-shuffle: gradient with an odd number of channels ({c2})")
        }
        let (c, hw, parity) = (c2 / 2, h * w, self.parity);
        fn run<E: candle_core::WithDType>(g: &[E], (n, c, hw, parity): (usize, usize, usize, usize)) -> Vec<E> {
            filled(n * c * hw, |out| {
                for_each_chunk(out, hw, hw, |_: &mut (), plane, dst| {
                    let (ni, ci) = (plane / c, plane % c);
                    write_copy(dst, &g[(ni * 2 * c + 2 * ci + parity) * hw..][..hw]);
                })
            })
        }
        let dims = (n, c, hw, parity);
        let out = match s.dtype() {
            DType::F32 => CpuStorage::F32(run(slice::<f32>(s, l, "the gradient")?, dims)),
            DType::F64 => CpuStorage::F64(run(slice::<f64>(s, l, "the gradient")?, dims)),
            other => candle_core::bail!("tfkd-cat-shuffle: unsupported dtype {other:?}"),
        };
        Ok((out, Shape::from((n, c, h, w))))
    }
}
