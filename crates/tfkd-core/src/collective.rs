//! Data-parallel training's one collective operation, behind a small trait:
//! the all-reduce (sum) of the gradients before every optimizer step.
//!
//! N replicas each run the forward and backward pass on their shard of the
//! global batch. Every loss of this crate is a mean over the batch, so the
//! global batch's gradient is `Σ_r (n_r / n) · g_r`, where replica r holds
//! `n_r` of the batch's `n` images and computed `g_r` on them
//! ([`all_reduce_gradients`] weights, sums and writes it back). Every replica
//! then takes the same step from the same weights and stays identical to the
//! others; BatchNorm statistics stay per replica, as under PyTorch's
//! `DataParallel`.
//!
//! Implementations:
//!
//! - [`Solo`]: one process, no communication (world size 1);
//! - [`ThreadGroup`]: N replicas as threads of one process (CPU; also what
//!   tests the logic). The sum is taken in rank order by every replica, so
//!   all replicas get bit-identical results whatever the scheduling.
//!
//! A multi-GPU implementation over NCCL plugs into the same trait.

use crate::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::sync::{Arc, Condvar, Mutex};

/// A group of replicas that sum tensors together.
pub trait Collective: Send + Sync {
    /// This replica's rank, `0..world_size()`.
    fn rank(&self) -> usize;
    /// The number of replicas.
    fn world_size(&self) -> usize;
    /// The element-wise sum of `tensor` over all replicas (same shape on
    /// every replica), the same on every replica. Every replica must call it
    /// the same number of times, in the same order.
    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor>;
    /// Marks the group as failed: replicas waiting in, or later calling,
    /// [`Collective::all_reduce_sum`] get an error instead of waiting forever
    /// for a replica that stopped.
    fn abort(&self, reason: &str);
}

/// The collective of a single process: the sum is the tensor itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        Ok(tensor.clone())
    }
    fn abort(&self, _reason: &str) {}
}

/// Where the replicas of a [`ThreadGroup`] meet.
#[derive(Default)]
struct Meeting {
    /// Each rank's contribution to the current round.
    slots: Vec<Option<Tensor>>,
    /// Ranks that read the current round's result.
    read: usize,
    /// Completed rounds.
    round: u64,
    /// Set by [`Collective::abort`].
    aborted: Option<String>,
}

/// The replicas of one process, one per thread: [`ThreadGroup::new`] gives
/// one handle per rank; move each into its replica's thread.
pub struct ThreadGroup {
    rank: usize,
    world: usize,
    shared: Arc<(Mutex<Meeting>, Condvar)>,
}

impl ThreadGroup {
    /// Handles for `world` replicas, rank `i` at index `i`.
    pub fn new(world: usize) -> Result<Vec<ThreadGroup>> {
        if world == 0 {
            return Err(Error::InvalidParameter { name: "replicas", value: 0.0, expected: "must be >= 1".into() });
        }
        let meeting = Meeting { slots: vec![None; world], ..Default::default() };
        let shared = Arc::new((Mutex::new(meeting), Condvar::new()));
        Ok((0..world).map(|rank| ThreadGroup { rank, world, shared: Arc::clone(&shared) }).collect())
    }
}

fn aborted(reason: &str) -> Error {
    Error::State(format!("another replica stopped ({reason}); this replica stops too"))
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        if self.world == 1 {
            return Ok(tensor.clone());
        }
        let (lock, changed) = &*self.shared;
        let mut m = lock.lock().unwrap_or_else(|e| e.into_inner());
        // Wait until the previous round's result has been read by everyone.
        while m.slots[self.rank].is_some() && m.aborted.is_none() {
            m = changed.wait(m).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(reason) = &m.aborted {
            return Err(aborted(reason));
        }
        let round = m.round;
        m.slots[self.rank] = Some(tensor.clone());
        changed.notify_all();
        while m.slots.iter().any(Option::is_none) && m.round == round && m.aborted.is_none() {
            m = changed.wait(m).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(reason) = &m.aborted {
            return Err(aborted(reason));
        }
        // Every slot is full: sum in rank order (the same on every replica).
        let mut sum = m.slots[0].clone().ok_or_else(|| Error::State("empty all-reduce slot".into()))?;
        for slot in &m.slots[1..] {
            let t = slot.as_ref().ok_or_else(|| Error::State("empty all-reduce slot".into()))?;
            if t.dims() != sum.dims() {
                let detail = format!("replicas contribute shapes {:?} and {:?}", sum.dims(), t.dims());
                return Err(Error::Shape { what: "all-reduce", detail });
            }
            sum = (sum + t)?;
        }
        m.read += 1;
        if m.read == self.world {
            // The last reader opens the next round.
            m.read = 0;
            m.round += 1;
            m.slots.iter_mut().for_each(|s| *s = None);
            changed.notify_all();
        }
        Ok(sum)
    }

    fn abort(&self, reason: &str) {
        let (lock, changed) = &*self.shared;
        let mut m = lock.lock().unwrap_or_else(|e| e.into_inner());
        if m.aborted.is_none() {
            m.aborted = Some(reason.to_string());
        }
        changed.notify_all();
    }
}

/// Replaces each parameter's gradient in `grads` by the global batch's:
/// `Σ_r weight_r · g_r` over the replicas, with `weight = n_r / n` (this
/// replica's share of the global batch). One all-reduce of all gradients
/// flattened into one f32 buffer, plus `extra` appended (values every
/// replica should learn the sum of in the same round, such as a stop
/// flag); returns the sums of `extra`. A parameter without a gradient
/// contributes zeros.
pub fn all_reduce_gradients(
    grads: &mut GradStore,
    params: &[(String, Var)],
    weight: f64,
    extra: &[f32],
    collective: &dyn Collective,
) -> Result<Vec<f32>> {
    let mut flat = Vec::with_capacity(params.len() + 1);
    for (_, var) in params {
        let g = match grads.get(var.as_tensor()) {
            Some(g) => (g.detach().to_dtype(DType::F32)? * weight)?.flatten_all()?,
            None => Tensor::zeros(var.elem_count(), DType::F32, var.device())?,
        };
        flat.push(g);
    }
    let device = params.first().map(|(_, v)| v.device().clone()).unwrap_or(candle_core::Device::Cpu);
    flat.push(Tensor::from_slice(extra, extra.len(), &device)?);
    let summed = collective.all_reduce_sum(&Tensor::cat(&flat, 0)?)?;
    let mut offset = 0;
    for (_, var) in params {
        let n = var.elem_count();
        let g = summed.narrow(0, offset, n)?.reshape(var.dims())?.to_dtype(var.dtype())?;
        grads.insert(var.as_tensor(), g);
        offset += n;
    }
    Ok(summed.narrow(0, offset, extra.len())?.to_vec1::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn replicas_get_the_same_sum_in_every_round() {
        let group = ThreadGroup::new(3).unwrap();
        let results: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
            let handles: Vec<_> = group
                .iter()
                .map(|g| {
                    s.spawn(move || {
                        (0..20)
                            .map(|round| {
                                let t = Tensor::new(&[g.rank() as f32, round as f32], &Device::Cpu).unwrap();
                                g.all_reduce_sum(&t).unwrap().to_vec1::<f32>().unwrap()
                            })
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            for (round, sum) in r.iter().enumerate() {
                assert_eq!(sum, &[3.0, 3.0 * round as f32]);
            }
        }
    }

    #[test]
    fn an_aborted_group_fails_instead_of_hanging() {
        let group = ThreadGroup::new(2).unwrap();
        let err = std::thread::scope(|s| {
            let waiting = s.spawn(|| group[0].all_reduce_sum(&Tensor::new(&[1f32], &Device::Cpu).unwrap()));
            std::thread::sleep(std::time::Duration::from_millis(20));
            group[1].abort("rank 1 diverged");
            waiting.join().unwrap()
        })
        .unwrap_err();
        assert!(err.to_string().contains("rank 1 diverged"), "{err}");
        assert!(ThreadGroup::new(0).is_err());
    }
}
