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
//!   all replicas get bit-identical results whatever the scheduling. On
//!   CUDA the threads share one GPU, each on its own stream; the group
//!   synchronises a thread's stream before another thread reads its tensor.
//! - [`TcpGroup`]: N processes (`srun`, torchrun-style launchers) that meet
//!   over TCP; the same sums as [`ThreadGroup`], in the same order.
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
    Error::PeerStopped(reason.to_string())
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
        // On CUDA every thread has its own stream (candle's per-thread
        // default stream), and streams do not wait for each other: the
        // tensor must be computed before another thread reads it.
        tensor.device().synchronize()?;
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
        // The others' tensors are read before this replica says so: the last
        // reader frees them, in its own stream's order.
        sum.device().synchronize()?;
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

/// Replicas in separate processes, on one machine or several, connected over
/// TCP (for CPU clusters, and what tests multi-process runs without GPUs):
/// rank 0 listens, the others connect to it; every round, rank 0 receives
/// each replica's buffer, sums in rank order (the same additions as
/// [`ThreadGroup`]) and sends the sum back. A replica that disconnects
/// (exited, killed) makes the others' next all-reduce an error, not a hang.
pub struct TcpGroup {
    rank: usize,
    world: usize,
    /// Rank 0: one stream per other rank, in rank order; other ranks: the
    /// stream to rank 0.
    streams: Mutex<Vec<std::net::TcpStream>>,
}

impl TcpGroup {
    /// Joins the group of `world` replicas as `rank`, meeting at `address`
    /// (`host:port`, where rank 0 listens). Waits up to `timeout` for the
    /// others (rank 0) or for rank 0 to listen (the others).
    pub fn join(rank: usize, world: usize, address: &str, timeout: std::time::Duration) -> Result<TcpGroup> {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        if rank >= world {
            return Err(Error::State(format!("rank {rank} is outside a group of {world}")));
        }
        let io = |what: String| move |e: std::io::Error| Error::State(format!("{what}: {e}"));
        let deadline = std::time::Instant::now() + timeout;
        let streams = if rank == 0 {
            let listener = TcpListener::bind(address).map_err(io(format!("rank 0 cannot listen on {address}")))?;
            listener.set_nonblocking(true).map_err(io("listener".into()))?;
            let mut by_rank: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
            while by_rank[1..].iter().any(Option::is_none) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).map_err(io("stream".into()))?;
                        let mut id = [0u8; 8];
                        stream.read_exact(&mut id).map_err(io("a replica's hello".into()))?;
                        let r = u64::from_le_bytes(id) as usize;
                        if r == 0 || r >= world || by_rank[r].is_some() {
                            return Err(Error::State(format!("a replica introduced itself as rank {r} in a group of {world}")));
                        }
                        stream.set_nodelay(true).map_err(io("stream".into()))?;
                        by_rank[r] = Some(stream);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if std::time::Instant::now() > deadline {
                            let missing: Vec<_> = (1..world).filter(|&r| by_rank[r].is_none()).collect();
                            return Err(Error::State(format!(
                                "rank 0 waited {timeout:?} on {address} for ranks {missing:?}, which never connected"
                            )));
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => return Err(io(format!("accepting on {address}"))(e)),
                }
            }
            by_rank.into_iter().flatten().collect()
        } else {
            let mut stream = loop {
                match TcpStream::connect(address) {
                    Ok(s) => break s,
                    Err(e) if std::time::Instant::now() > deadline => {
                        return Err(io(format!("rank {rank} cannot reach rank 0 at {address} within {timeout:?}"))(e))
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            };
            stream.set_nodelay(true).map_err(io("stream".into()))?;
            stream.write_all(&(rank as u64).to_le_bytes()).map_err(io("hello to rank 0".into()))?;
            vec![stream]
        };
        Ok(TcpGroup { rank, world, streams: Mutex::new(streams) })
    }
}

fn send_f32(stream: &mut std::net::TcpStream, values: &[f32]) -> std::io::Result<()> {
    use std::io::Write;
    let mut bytes = Vec::with_capacity(8 + 4 * values.len());
    bytes.extend_from_slice(&(values.len() as u64).to_le_bytes());
    values.iter().for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
    stream.write_all(&bytes)
}

fn recv_f32(stream: &mut std::net::TcpStream) -> std::io::Result<Vec<f32>> {
    use std::io::Read;
    let mut len = [0u8; 8];
    stream.read_exact(&mut len)?;
    let mut bytes = vec![0u8; 4 * u64::from_le_bytes(len) as usize];
    stream.read_exact(&mut bytes)?;
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

impl Collective for TcpGroup {
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
        let mine = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let lost = |r: usize| move |e: std::io::Error| Error::PeerStopped(format!("replica {r} is gone: {e}"));
        let sum = if self.rank == 0 {
            let mut sum = mine;
            for (i, stream) in streams.iter_mut().enumerate() {
                let theirs = recv_f32(stream).map_err(lost(i + 1))?;
                if theirs.len() != sum.len() {
                    let detail = format!("replica {} contributes {} values, replica 0 {}", i + 1, theirs.len(), sum.len());
                    return Err(Error::Shape { what: "all-reduce", detail });
                }
                sum.iter_mut().zip(&theirs).for_each(|(s, t)| *s += t);
            }
            for (i, stream) in streams.iter_mut().enumerate() {
                send_f32(stream, &sum).map_err(lost(i + 1))?;
            }
            sum
        } else {
            send_f32(&mut streams[0], &mine).map_err(lost(0))?;
            recv_f32(&mut streams[0]).map_err(lost(0))?
        };
        Ok(Tensor::from_vec(sum, tensor.shape(), tensor.device())?.to_dtype(tensor.dtype())?)
    }

    fn abort(&self, _reason: &str) {
        // Closing the connections wakes every replica waiting on them.
        for stream in self.streams.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Replicas on CUDA GPUs, one process each, summing over NCCL (feature
/// `nccl`). The processes first meet over TCP ([`TcpGroup::join`]) to share
/// rank 0's NCCL id; after that every all-reduce runs on the GPUs. NCCL's
/// ring sums in its own order: replicas get the same sum as each other, but
/// not bit for bit the sum of [`ThreadGroup`].
#[cfg(feature = "nccl")]
pub struct NcclGroup {
    rank: usize,
    world: usize,
    device: candle_core::Device,
    comm: Mutex<nccl::SendComm>,
}

#[cfg(feature = "nccl")]
mod nccl {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, ReduceOp};
    use candle_core::{CpuStorage, CudaStorage, Layout, Shape};
    use std::sync::Mutex;

    /// The NCCL communicator, used by one thread at a time (behind a mutex).
    pub struct SendComm(pub Comm);
    // SAFETY: an NCCL communicator may be used from any thread as long as
    // calls do not overlap, which the mutex around it guarantees.
    unsafe impl Send for SendComm {}

    /// The all-reduce (sum) of an f32 tensor as a candle op.
    pub struct AllReduce<'a>(pub &'a Mutex<SendComm>);

    impl candle_core::CustomOp1 for AllReduce<'_> {
        fn name(&self) -> &'static str {
            "nccl-all-reduce"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("the NCCL all-reduce needs CUDA tensors")
        }

        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
            let Some((start, end)) = l.contiguous_offsets() else {
                candle_core::bail!("the NCCL all-reduce needs a contiguous tensor")
            };
            let dev = s.device().clone();
            let src = s.as_cuda_slice::<f32>()?.slice(start..end);
            // SAFETY: the all-reduce writes every element.
            let mut dst = unsafe { dev.alloc::<f32>(end - start) }?;
            let comm = self.0.lock().unwrap_or_else(|e| e.into_inner());
            comm.0.all_reduce(&src, &mut dst, &ReduceOp::Sum).map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
            Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
        }
    }
}

#[cfg(feature = "nccl")]
impl NcclGroup {
    /// Joins the group of `world` processes as `rank` on the CUDA `device`,
    /// meeting first at `address` (`host:port`, where rank 0 listens) to
    /// share NCCL's id.
    pub fn join(
        rank: usize,
        world: usize,
        device: &candle_core::Device,
        address: &str,
        timeout: std::time::Duration,
    ) -> Result<NcclGroup> {
        use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id};
        let candle_core::Device::Cuda(cuda) = device else {
            return Err(Error::State(format!("NCCL needs a CUDA device, not {device:?}")));
        };
        let nccl_err = |what: &str| {
            let what = what.to_string();
            move |e| Error::State(format!("NCCL {what}: {e:?} (is libnccl installed? see the README)"))
        };
        // Rank 0's id reaches the others as one TCP all-reduce, 128 bytes
        // as exact small floats to which the others add zeros.
        let tcp = TcpGroup::join(rank, world, address, timeout)?;
        let mut bytes = vec![0f32; 128];
        if rank == 0 {
            let id = Id::new().map_err(nccl_err("id"))?;
            for (b, c) in bytes.iter_mut().zip(id.internal()) {
                *b = f32::from(*c as u8);
            }
        }
        let shared = tcp.all_reduce_sum(&Tensor::from_vec(bytes, 128, &candle_core::Device::Cpu)?)?.to_vec1::<f32>()?;
        let internal: [std::ffi::c_char; 128] = std::array::from_fn(|i| shared[i] as u8 as std::ffi::c_char);
        // NCCL puts the rank on the calling thread's current GPU: `device`'s,
        // even on a thread that has not used it yet.
        cuda.cuda_stream()
            .context()
            .bind_to_thread()
            .map_err(|e| Error::State(format!("NCCL: cannot make {:?} this thread's GPU: {e:?}", device.location())))?;
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world, Id::uninit(internal)).map_err(nccl_err("init"))?;
        Ok(NcclGroup { rank, world, device: device.clone(), comm: Mutex::new(nccl::SendComm(comm)) })
    }
}

#[cfg(feature = "nccl")]
impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, tensor: &Tensor) -> Result<Tensor> {
        let t = tensor.to_dtype(DType::F32)?.contiguous()?;
        // Flags and counts come as CPU tensors: they go to the GPU and back.
        let on_cpu = t.device().is_cpu();
        let t = if on_cpu { t.to_device(&self.device)? } else { t };
        let sum = t.apply_op1_no_bwd(&nccl::AllReduce(&self.comm))?;
        let sum = if on_cpu { sum.to_device(&candle_core::Device::Cpu)? } else { sum };
        Ok(sum.to_dtype(tensor.dtype())?)
    }

    fn abort(&self, _reason: &str) {
        // NCCL has no wake-up for peers here; a replica that stops ends its
        // process, and NCCL reports the lost peer to the others.
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
    fn processes_over_tcp_sum_as_threads_do() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        drop(listener);
        let values = |rank: usize, round: usize| {
            Tensor::new(&[[0.1f32 * rank as f32 + round as f32, 1e-7], [3.0, -(rank as f32)]], &Device::Cpu).unwrap()
        };
        let tcp: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|rank| {
                    let address = address.clone();
                    s.spawn(move || {
                        let g = TcpGroup::join(rank, 3, &address, std::time::Duration::from_secs(30)).unwrap();
                        (0..5)
                            .map(|round| g.all_reduce_sum(&values(rank, round)).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                            .collect()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let threads = ThreadGroup::new(3).unwrap();
        let reference: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = threads
                .iter()
                .map(|g| {
                    s.spawn(move || {
                        (0..5)
                            .map(|round| {
                                g.all_reduce_sum(&values(g.rank(), round)).unwrap().flatten_all().unwrap().to_vec1().unwrap()
                            })
                            .collect::<Vec<Vec<f32>>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).next().unwrap()
        });
        for r in &tcp {
            assert_eq!(r, &reference);
        }
        // A replica that leaves makes the others fail, not hang.
        let err = std::thread::scope(|s| {
            let zero_address = address.clone();
            let zero = s.spawn(move || {
                let g = TcpGroup::join(0, 2, &zero_address, std::time::Duration::from_secs(30)).unwrap();
                g.all_reduce_sum(&values(0, 0))
            });
            let one = TcpGroup::join(1, 2, &address, std::time::Duration::from_secs(30)).unwrap();
            drop(one);
            zero.join().unwrap()
        })
        .unwrap_err();
        assert!(err.to_string().contains("replica 1 is gone"), "{err}");
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
