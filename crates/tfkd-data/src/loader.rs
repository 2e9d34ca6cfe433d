//! The multi-threaded, prefetching, deterministic batch loader.
//!
//! Determinism: epoch `e` visits the samples in the order `SeededRng::derive(seed, &[e])
//! .permutation(n)` (or `0..n` without shuffling), and sample `i` is augmented with its own
//! stream `SeededRng::derive(seed, &[e, i])`. Batch `b` is built by worker `b % threads` and
//! handed out in batch order, so the batches of a seed are bit-identical whatever the thread
//! count.

use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use candle_core::{Device, Tensor};

use crate::dataset::Source;
use crate::error::{DataError, Result};
use crate::transforms::{Pipeline, Scratch};
use crate::SeededRng;

/// Loader settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Samples per batch.
    pub batch_size: usize,
    /// Reshuffle every epoch (train); `false` keeps the dataset order (eval).
    pub shuffle: bool,
    /// Drop the last incomplete batch (the original does not).
    pub drop_last: bool,
    /// Seed of the shuffle and of the augmentation streams.
    pub seed: u64,
    /// Worker threads; 0 builds batches on the calling thread.
    pub threads: usize,
    /// Batches each worker may have ready ahead of the consumer (at least 1).
    pub prefetch: usize,
}

impl LoaderConfig {
    /// Train settings: shuffled, last batch kept, 2 threads, prefetch 2.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderConfig { batch_size, shuffle: true, drop_last: false, seed, threads: 2, prefetch: 2 }
    }
    /// Eval settings: dataset order, last batch kept.
    pub fn eval(batch_size: usize) -> Self {
        LoaderConfig { batch_size, shuffle: false, drop_last: false, seed: 0, threads: 2, prefetch: 2 }
    }
    /// Sets the thread count.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }
    /// Sets `drop_last`.
    pub fn with_drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }
}

/// One batch: normalised f32 images `(B, C, H, W)` and u32 labels `(B,)` on the loader's
/// device, and the dataset indices of its samples.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(B, C, H, W)` f32.
    pub images: Tensor,
    /// `(B,)` u32.
    pub labels: Tensor,
    /// Dataset index of each sample.
    pub indices: Vec<usize>,
}

/// A batch before it becomes tensors (useful for tests and benchmarks).
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// `B * C * H * W` normalised values.
    pub images: Vec<f32>,
    /// `B` labels.
    pub labels: Vec<u32>,
    /// Dataset index of each sample.
    pub indices: Vec<usize>,
}

struct Shared {
    source: Arc<dyn Source>,
    pipeline: Pipeline,
    config: LoaderConfig,
    shape: (usize, usize, usize),
}

impl Shared {
    fn build(&self, epoch: u64, indices: &[usize], scratch: &mut Scratch) -> Result<HostBatch> {
        let (c, h, w) = self.shape;
        let per = c * h * w;
        let mut images = vec![0f32; per * indices.len()];
        let mut labels = Vec::with_capacity(indices.len());
        for (k, &i) in indices.iter().enumerate() {
            let img = self.source.image(i)?;
            let mut rng = SeededRng::derive(self.config.seed, &[epoch, i as u64]);
            self.pipeline.apply_into(&img, &mut rng, scratch, &mut images[k * per..(k + 1) * per], self.shape, i)?;
            labels.push(self.source.label(i)?);
        }
        Ok(HostBatch { images, labels, indices: indices.to_vec() })
    }
}

/// Feeds batches of a [`Source`] through a [`Pipeline`] to a device.
pub struct Loader {
    shared: Arc<Shared>,
    device: Device,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("len", &self.shared.source.len())
            .field("shape", &self.shared.shape)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Loader {
    /// A loader over `source`. The sample shape is the pipeline's output for sample 0 and
    /// every sample must produce it.
    pub fn new(source: Arc<dyn Source>, pipeline: Pipeline, config: LoaderConfig, device: Device) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(DataError::InvalidConfig { what: "batch size", message: "must be at least 1".into() });
        }
        if source.is_empty() {
            return Err(DataError::InvalidConfig { what: "dataset", message: "no samples".into() });
        }
        let first = source.image(0)?.shape();
        let shape = pipeline.output_shape(first);
        if pipeline.norm.channels() != shape.0 {
            return Err(DataError::InvalidConfig {
                what: "normalization",
                message: format!("{} channel constants for {}-channel images", pipeline.norm.channels(), shape.0),
            });
        }
        Ok(Loader { shared: Arc::new(Shared { source, pipeline, config, shape }), device })
    }

    /// The sample shape (C, H, W) of the batches.
    pub fn sample_shape(&self) -> (usize, usize, usize) {
        self.shared.shape
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.shared.source.len()
    }

    /// True when the source is empty (never: [`Loader::new`] refuses it).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, b) = (self.len(), self.shared.config.batch_size);
        if self.shared.config.drop_last {
            n / b
        } else {
            n.div_ceil(b)
        }
    }

    /// The sample order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        if self.shared.config.shuffle {
            SeededRng::derive(self.shared.config.seed, &[epoch]).permutation(self.len())
        } else {
            (0..self.len()).collect()
        }
    }

    fn batch_indices(&self, epoch: u64) -> Vec<Vec<usize>> {
        let order = self.order(epoch);
        let b = self.shared.config.batch_size;
        order.chunks(b).take(self.num_batches()).map(<[usize]>::to_vec).collect()
    }

    /// The batches of `epoch` as host buffers, built on the calling thread (reference path).
    pub fn host_batches(&self, epoch: u64) -> Result<Vec<HostBatch>> {
        let mut scratch = Scratch::default();
        self.batch_indices(epoch).iter().map(|ix| self.shared.build(epoch, ix, &mut scratch)).collect()
    }

    /// Iterates over the batches of `epoch`, built by the worker threads ahead of time.
    pub fn epoch(&self, epoch: u64) -> EpochIter {
        self.epoch_from(epoch, 0)
    }

    /// The batches of `epoch` from batch `first` on: exactly the batches
    /// `epoch(epoch).skip(first)` yields (a sample's augmentation depends on
    /// the seed, the epoch and the sample only), without building the
    /// skipped ones. What a run resumed in the middle of an epoch reads.
    pub fn epoch_from(&self, epoch: u64, first: usize) -> EpochIter {
        let mut all = self.batch_indices(epoch);
        all.drain(..first.min(all.len()));
        let batches = Arc::new(all);
        let nb = batches.len();
        let threads = self.shared.config.threads.min(nb);
        let mut receivers = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for w in 0..threads {
            let (tx, rx) = sync_channel::<Result<HostBatch>>(self.shared.config.prefetch.max(1));
            let shared = Arc::clone(&self.shared);
            let batches = Arc::clone(&batches);
            handles.push(std::thread::spawn(move || {
                let mut scratch = Scratch::default();
                for b in (w..batches.len()).step_by(threads) {
                    let r = shared.build(epoch, &batches[b], &mut scratch);
                    let failed = r.is_err();
                    if tx.send(r).is_err() || failed {
                        return;
                    }
                }
            }));
            receivers.push(rx);
        }
        EpochIter {
            shared: Arc::clone(&self.shared),
            device: self.device.clone(),
            epoch,
            batches,
            next: 0,
            receivers,
            handles,
            scratch: Scratch::default(),
            done: false,
        }
    }
}

/// The batches of one epoch, in order; yields `Err` once and stops on the first failure.
pub struct EpochIter {
    shared: Arc<Shared>,
    device: Device,
    epoch: u64,
    batches: Arc<Vec<Vec<usize>>>,
    next: usize,
    receivers: Vec<Receiver<Result<HostBatch>>>,
    handles: Vec<JoinHandle<()>>,
    scratch: Scratch,
    done: bool,
}

impl EpochIter {
    fn next_host(&mut self) -> Result<HostBatch> {
        let b = self.next;
        if self.receivers.is_empty() {
            return self.shared.build(self.epoch, &self.batches[b], &mut self.scratch);
        }
        let w = b % self.receivers.len();
        match self.receivers[w].recv() {
            Ok(r) => r,
            Err(_) => Err(DataError::WorkerPanicked(w)),
        }
    }

    /// The next batch as host buffers (no tensor is built).
    pub fn next_host_batch(&mut self) -> Option<Result<HostBatch>> {
        if self.done || self.next >= self.batches.len() {
            return None;
        }
        let r = self.next_host();
        self.next += 1;
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let hb = match self.next_host_batch()? {
            Ok(hb) => hb,
            Err(e) => return Some(Err(e)),
        };
        let (c, h, w) = self.shared.shape;
        let n = hb.labels.len();
        let r = (|| {
            let images = Tensor::from_vec(hb.images, (n, c, h, w), &self.device)?;
            let labels = Tensor::from_vec(hb.labels, n, &self.device)?;
            Ok(Batch { images, labels, indices: hb.indices })
        })();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.batches.len().saturating_sub(self.next);
        (0, Some(left))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Closing the channels makes every worker stop at its next send.
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
