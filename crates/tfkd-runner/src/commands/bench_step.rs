//! `tfkd bench-step`: times whole training steps (forward, cross-entropy,
//! backward, SGD with momentum and weight decay, and reading the loss back to
//! the host, as `tfkd train` does every step) on random data, per model.
//!
//! `scripts/bench_steps_torch.py` times the same step in PyTorch on the same
//! architectures; `cargo xtask bench` runs both and prints the ratio table.

use tfkd_runner::device::DeviceSpec;
use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use std::time::Instant;
use tfkd_core::init::SeededVarMap;
use tfkd_core::loss::cross_entropy;
use tfkd_core::optim::{Sgd, SgdConfig};
use tfkd_core::rng::SeededRng;
use tfkd_zoo::{InputSize, ModelOptions};

/// What to time.
pub struct BenchStepArgs<'a> {
    /// Registry names.
    pub models: &'a [String],
    /// Images per step.
    pub batch: usize,
    /// Number of classes.
    pub classes: usize,
    /// Input side: 32, 64 or 224.
    pub side: usize,
    /// Channel divisor for every model.
    pub width_divisor: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// The device.
    pub device: DeviceSpec,
    /// GPU arithmetic.
    pub precision: tfkd_core::precision::Precision,
    /// Where to append one JSON line per model.
    pub json: Option<&'a Path>,
}

/// One model's result.
#[derive(Debug, serde::Serialize)]
struct StepTiming {
    framework: &'static str,
    model: String,
    device: String,
    /// `tf32` or `f32` (GPU arithmetic).
    precision: String,
    /// What ran the convolutions (`tfkd_core::conv::backend`).
    conv: String,
    batch: usize,
    classes: usize,
    side: usize,
    width_divisor: usize,
    threads: usize,
    median_s: f64,
    min_s: f64,
    images_per_s: f64,
    /// The process's peak resident memory so far (Linux `VmHWM`), CPU only.
    peak_rss_mb: Option<f64>,
    /// On CUDA: the memory pool's high-water mark of bytes in use over the
    /// warm-up and timed steps (PyTorch's `max_memory_allocated`).
    peak_mb: Option<f64>,
    /// On CUDA: of bytes the pool held (PyTorch's `max_memory_reserved`).
    peak_reserved_mb: Option<f64>,
    /// The activation memory the step's graph keeps for the backward pass,
    /// parameters excluded (`tfkd_core::graph::kept_by_graph` on the loss;
    /// PyTorch's side counts its saved tensors): the same on every device.
    graph_mb: f64,
    /// The graph's nodes (every op of the forward pass and the loss, views
    /// and in-place nodes included; PyTorch's side: its autograd nodes): a
    /// proxy for the launches a step makes on a GPU.
    graph_nodes: usize,
}

pub fn run(args: &BenchStepArgs) -> anyhow::Result<()> {
    if args.steps == 0 || args.batch == 0 {
        bail!("--steps and --batch must be positive");
    }
    let input = InputSize::from_side(args.side)
        .with_context(|| format!("--side {} is not one of 32, 64, 224", args.side))?;
    if let Some(why) = args.precision.cpu_refusal().filter(|_| args.device.is_cpu()) {
        bail!("--precision {}: {why}", args.precision);
    }
    let device = tfkd_runner::device::open_device(args.device)?;
    args.precision.apply();
    if !device.is_cpu() {
        println!("convolutions: {} ({})", tfkd_core::conv::backend(&device), args.precision);
    }
    println!(
        "{:<16} {:>6} {:>12} {:>12} {:>10} {:>10} {:>10}",
        "model", "batch", "median s", "min s", "img/s", "peak MB", "graph MB"
    );
    for name in args.models {
        let timing = time_model(name, input, &device, args)?;
        println!(
            "{:<16} {:>6} {:>12.4} {:>12.4} {:>10.1} {:>10} {:>10.0}",
            timing.model,
            timing.batch,
            timing.median_s,
            timing.min_s,
            timing.images_per_s,
            timing.peak_rss_mb.or(timing.peak_mb).map_or("-".into(), |m| format!("{m:.0}")),
            timing.graph_mb
        );
        if let Some(path) = args.json {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            writeln!(file, "{}", serde_json::to_string(&timing)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
    Ok(())
}

fn time_model(name: &str, input: InputSize, device: &Device, args: &BenchStepArgs) -> anyhow::Result<StepTiming> {
    let options = ModelOptions::new(args.classes, input).with_width_divisor(args.width_divisor);
    let varmap = SeededVarMap::new(0);
    let model = tfkd_zoo::build_with(name, &options, varmap.var_builder(DType::F32, device))?;
    let model = tfkd_zoo::with_activation_dtype(model, args.precision.activation_dtype());
    let mut sgd = Sgd::new(tfkd_zoo::trainable_vars(&varmap), SgdConfig { lr: 0.01, ..SgdConfig::default() })?;

    let mut rng = SeededRng::new(1);
    let side = input.side();
    let pixels: Vec<f32> = (0..args.batch * 3 * side * side).map(|_| rng.normal(0.0, 1.0) as f32).collect();
    let images = Tensor::from_vec(pixels, (args.batch, 3, side, side), device)?;
    let labels: Vec<u32> = (0..args.batch).map(|_| rng.below(args.classes) as u32).collect();
    let labels = Tensor::from_vec(labels, args.batch, device)?;

    let mut graph = None;
    let mut step = || -> anyhow::Result<f64> {
        let started = Instant::now();
        let logits = model.forward_t(&images, true)?;
        let loss = cross_entropy(&logits, &labels)?;
        // Counted once, at the first step: a walk over the graph, no device work.
        graph.get_or_insert_with(|| {
            let kept = tfkd_core::graph::kept_by_graph(&loss);
            if tracing::enabled!(tracing::Level::DEBUG) {
                log_kept_buffers(name, &loss);
                // Each node is an op of the forward pass (views included):
                // a count to hold against PyTorch's autograd nodes.
                tracing::debug!("{name}: the graph has {} nodes over {} buffers", kept.nodes, kept.buffers);
            }
            kept
        });
        sgd.backward_step(&loss)?;
        let loss = loss.to_scalar::<f32>()?;
        device.synchronize()?;
        if !loss.is_finite() {
            bail!("{name}: the loss became {loss}");
        }
        Ok(started.elapsed().as_secs_f64())
    };
    #[cfg(feature = "cuda")]
    tfkd_core::gpu_memory::reset_pool_peaks(device)?;
    for _ in 0..args.warmup {
        step()?;
    }
    let mut times = (0..args.steps).map(|_| step()).collect::<anyhow::Result<Vec<f64>>>()?;
    let graph = graph.expect("at least one step ran");
    times.sort_by(f64::total_cmp);
    let median_s = if times.len() % 2 == 1 {
        times[times.len() / 2]
    } else {
        0.5 * (times[times.len() / 2 - 1] + times[times.len() / 2])
    };
    let peaks = gpu_peaks(device)?;
    Ok(StepTiming {
        framework: "tfkd",
        model: name.to_string(),
        device: args.device.to_string(),
        precision: args.precision.to_string(),
        conv: tfkd_core::conv::backend(device),
        batch: args.batch,
        classes: args.classes,
        side,
        width_divisor: args.width_divisor,
        threads: candle_core::utils::get_num_threads(),
        median_s,
        min_s: times[0],
        images_per_s: args.batch as f64 / median_s,
        peak_rss_mb: if device.is_cpu() { peak_rss_mb() } else { None },
        peak_mb: peaks.map(|p| p.0),
        peak_reserved_mb: peaks.map(|p| p.1),
        graph_mb: graph.mib(),
        graph_nodes: graph.nodes,
    })
}

/// `-v`: what the graph keeps, by shape, largest total first.
fn log_kept_buffers(name: &str, loss: &Tensor) {
    let mut by_shape: Vec<(Vec<usize>, candle_core::DType, usize, u64)> = Vec::new();
    for b in tfkd_core::graph::kept_buffers(loss) {
        match by_shape.iter_mut().find(|(d, t, _, _)| *d == b.dims && *t == b.dtype) {
            Some(entry) => {
                entry.2 += 1;
                entry.3 += b.bytes;
            }
            None => by_shape.push((b.dims, b.dtype, 1, b.bytes)),
        }
    }
    by_shape.sort_by_key(|entry| std::cmp::Reverse(entry.3));
    for (dims, dtype, count, bytes) in by_shape {
        tracing::debug!("{name}: the graph keeps {count} × {dims:?} {dtype:?} ({:.1} MiB)", bytes as f64 / (1u64 << 20) as f64);
    }
}

/// The GPU memory pool's peaks (in use, held) in MB, on CUDA.
fn gpu_peaks(device: &Device) -> anyhow::Result<Option<(f64, f64)>> {
    #[cfg(feature = "cuda")]
    if let Some(u) = tfkd_core::gpu_memory::pool_usage(device)? {
        let mb = |b: u64| b as f64 / (1u64 << 20) as f64;
        return Ok(Some((mb(u.used_high), mb(u.reserved_high))));
    }
    let _ = device;
    Ok(None)
}

/// Linux's high-water mark of resident memory, in MB.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
