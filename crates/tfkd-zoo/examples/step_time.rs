//! Times whole CPU training steps (forward in train mode, cross-entropy,
//! backward, SGD with momentum) of zoo models on random data, and prints one
//! line per model: median and minimum seconds per step.
//!
//! ```sh
//! cargo run --release -p tfkd-zoo --example step_time -- \
//!     mobilenet_v2,shufflenet_v2,resnet18 32 1 3
//! ```
//!
//! Arguments (all optional): comma-separated model names, batch size, width
//! divisor, timed steps (one untimed warm-up step runs first). Inputs are
//! 32×32, 100 classes. `tfkd bench-step` in the runner is the full tool;
//! this example needs only tfkd-core and tfkd-zoo.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use tfkd_core::init::SeededVarMap;
use tfkd_core::loss::cross_entropy;
use tfkd_core::optim::{Sgd, SgdConfig};
use tfkd_core::rng::SeededRng;
use tfkd_zoo::{InputSize, ModelOptions};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let models = args
        .first()
        .map_or("mobilenet_v2,shufflenet_v2,resnet18,cnn", |s| s.as_str());
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        Ok(args.get(i).map(|s| s.parse()).transpose()?.unwrap_or(default))
    };
    let (batch, divisor, steps) = (arg(1, 32)?, arg(2, 1)?, arg(3, 3)?.max(1));
    let dev = Device::Cpu;
    println!(
        "threads {}, batch {batch}, width divisor {divisor}, {steps} timed steps",
        candle_core::utils::get_num_threads()
    );
    println!("{:<16} {:>10} {:>10}", "model", "median s", "min s");
    for name in models.split(',') {
        let opts = ModelOptions::new(100, InputSize::Cifar).with_width_divisor(divisor);
        let varmap = SeededVarMap::new(0);
        let model = tfkd_zoo::build_with(name, &opts, varmap.var_builder(DType::F32, &dev))?;
        let params = varmap
            .named_vars()
            .into_iter()
            .filter(|(n, _)| !tfkd_zoo::is_buffer(n))
            .collect();
        let mut sgd = Sgd::new(params, SgdConfig { lr: 0.01, ..SgdConfig::default() })?;
        let mut rng = SeededRng::new(1);
        let images = rng.uniform_tensor((batch, 3, 32, 32), -1.0, 1.0, DType::F32, &dev)?;
        let labels: Vec<u32> = (0..batch).map(|i| (i * 37 % 100) as u32).collect();
        let labels = Tensor::from_vec(labels, batch, &dev)?;
        let mut step = || -> anyhow::Result<f64> {
            let t = Instant::now();
            let logits = model.forward_t(&images, true)?;
            let loss = cross_entropy(&logits, &labels)?;
            sgd.backward_step(&loss)?;
            let loss = loss.to_scalar::<f32>()?;
            anyhow::ensure!(loss.is_finite(), "{name}: loss {loss}");
            Ok(t.elapsed().as_secs_f64())
        };
        step()?;
        let mut times = (0..steps).map(|_| step()).collect::<anyhow::Result<Vec<_>>>()?;
        times.sort_by(f64::total_cmp);
        println!("{name:<16} {:>10.3} {:>10.3}", times[times.len() / 2], times[0]);
    }
    Ok(())
}
