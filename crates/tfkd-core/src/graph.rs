//! What a training graph keeps alive: the activation memory of a step,
//! counted the same way on every device.
//!
//! candle's graph holds every op's inputs until the graph is dropped, so
//! after the forward pass (and the loss) the tensors reachable from the loss
//! are the activations the backward pass will read, plus whatever candle
//! keeps that the backward pass does not need. PyTorch's counterpart is the
//! set of tensors its autograd nodes save (`saved_tensors_hooks`;
//! `scripts/bench_steps_torch.py` counts them). The two counts compare the
//! frameworks' activation memory without a GPU, and without either
//! allocator's rounding and caching: the part of a step's peak memory that
//! depends on what the graph keeps.

use candle_core::Tensor;
use std::collections::{HashMap, HashSet};

/// The memory the graph behind a tensor holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphMemory {
    /// Bytes of the distinct buffers held, parameters excluded.
    pub bytes: u64,
    /// How many distinct buffers that is.
    pub buffers: usize,
    /// How many graph nodes (tensors) hold them: views share a buffer.
    pub nodes: usize,
}

impl GraphMemory {
    /// [`GraphMemory::bytes`] in MiB.
    pub fn mib(&self) -> f64 {
        self.bytes as f64 / (1u64 << 20) as f64
    }
}

/// One buffer the graph holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeptBuffer {
    /// The shape of the first (in graph order, from the root) tensor that
    /// reaches the buffer's full extent.
    pub dims: Vec<usize>,
    /// Its element type.
    pub dtype: candle_core::DType,
    /// Its size.
    pub bytes: u64,
}

/// Counts the buffers held by the graph that leads from the variables to
/// `root` (typically a loss), `root` included: every float tensor that a
/// gradient flows through. Variables (the parameters), and views of them,
/// are not counted; neither are integer tensors (labels) nor what a custom
/// op keeps inside itself (tfkd's ops keep per-channel statistics or an
/// N×K gradient at most).
///
/// A buffer's size is the extent its tensors reach (offset plus the
/// farthest strided element), which is the allocation's size for every
/// buffer an op makes.
pub fn kept_by_graph(root: &Tensor) -> GraphMemory {
    let (buffers, nodes) = walk(root);
    GraphMemory { bytes: buffers.iter().map(|b| b.bytes).sum(), buffers: buffers.len(), nodes }
}

/// The buffers [`kept_by_graph`] counts, largest first: what to look at
/// when a graph keeps more than expected.
pub fn kept_buffers(root: &Tensor) -> Vec<KeptBuffer> {
    let mut buffers = walk(root).0;
    buffers.sort_by_key(|b| std::cmp::Reverse(b.bytes));
    buffers
}

/// The distinct buffers in graph order, and how many nodes hold them.
fn walk(root: &Tensor) -> (Vec<KeptBuffer>, usize) {
    let nodes = root.sorted_nodes();
    let key = |t: &Tensor| {
        let (storage, _) = t.storage_and_layout();
        &*storage as *const candle_core::Storage as usize
    };
    let parameters: HashSet<usize> = nodes.iter().filter(|t| t.is_variable()).map(|t| key(t)).collect();
    let mut index: HashMap<usize, usize> = HashMap::new();
    let mut buffers: Vec<KeptBuffer> = Vec::new();
    let mut counted = 0;
    for t in nodes.iter().filter(|t| !t.is_variable()) {
        let k = key(t);
        if parameters.contains(&k) {
            continue;
        }
        counted += 1;
        let layout = t.layout();
        let farthest: usize = layout
            .dims()
            .iter()
            .zip(layout.stride())
            .map(|(&d, &s)| d.saturating_sub(1) * s)
            .sum();
        let elements = if t.elem_count() == 0 { 0 } else { layout.start_offset() + farthest + 1 };
        let buffer = KeptBuffer { dims: t.dims().to_vec(), dtype: t.dtype(), bytes: (elements * t.dtype().size_in_bytes()) as u64 };
        match index.get(&k) {
            Some(&i) if buffers[i].bytes >= buffer.bytes => {}
            Some(&i) => buffers[i] = buffer,
            None => {
                index.insert(k, buffers.len());
                buffers.push(buffer);
            }
        }
    }
    (buffers, counted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn counts_each_buffer_once_and_leaves_out_the_parameters() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        let w = Var::ones((4, 8), candle_core::DType::F32, &dev)?; // 128 bytes, a parameter
        let x = Tensor::ones((2, 4), candle_core::DType::F32, &dev)?; // an input: not tracked
        let h = x.matmul(w.as_tensor())?; // (2, 8): 64 bytes
        let view = h.narrow(1, 2, 4)?; // a view of h: no new buffer
        let wt = w.as_tensor().t()?; // a view of the parameter
        let g = view.matmul(&wt.narrow(0, 0, 4)?)?; // (2, 4): 32 bytes
        let loss = g.sum_all()?; // 4 bytes: a sum and a reshape of it
        let kept = kept_by_graph(&loss);
        assert_eq!(kept, GraphMemory { bytes: 64 + 32 + 4, buffers: 3, nodes: 5 });
        let sizes: Vec<(Vec<usize>, u64)> = kept_buffers(&loss).into_iter().map(|b| (b.dims, b.bytes)).collect();
        assert_eq!(sizes, [(vec![2, 8], 64), (vec![2, 4], 32), (vec![], 4)]);
        // Nothing that tracks a gradient: nothing kept.
        assert_eq!(kept_by_graph(&x.sum_all()?), GraphMemory::default());
        Ok(())
    }
}
