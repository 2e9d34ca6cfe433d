//! Throughput of the CIFAR train pipeline (RandomCrop(32, 4) → flip → RandomRotation(15) →
//! normalise), in images/s, through the threaded loader, for 1 and 2 threads.
//!
//! `cargo bench -p tfkd-data --bench cifar_pipeline` prints a markdown table. It uses
//! `$TFKD_DATA_DIR/cifar10-mini` when there (real images, repeated to 50,000), else
//! synthetic u8 images; pixel content does not change the cost.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use tfkd_data::{ImageDataset, Loader, LoaderConfig, Normalization, Pipeline, Split};

fn dataset() -> (ImageDataset, &'static str) {
    if let Some(d) = std::env::var_os("TFKD_DATA_DIR") {
        let dir = std::path::Path::new(&d).join("cifar10-mini");
        if let Ok(mini) = ImageDataset::cifar10_mini(&dir, Split::Train) {
            let reps = 50_000 / mini.len();
            let images = mini.images().repeat(reps);
            let labels = mini.labels().repeat(reps);
            return (ImageDataset::new(images, labels, (3, 32, 32), 10).expect("dataset"), "cifar10-mini x10");
        }
    }
    let n = 50_000;
    let images: Vec<u8> = (0..n * 3072).map(|i: usize| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let labels = (0..n).map(|i| (i % 10) as u32).collect();
    (ImageDataset::new(images, labels, (3, 32, 32), 10).expect("dataset"), "synthetic")
}

fn main() {
    let (ds, what) = dataset();
    let ds = Arc::new(ds);
    let n = ds.len();
    println!("CIFAR train pipeline, {n} images ({what}), batch 128, {} CPUs", std::thread::available_parallelism().map(|p| p.get()).unwrap_or(1));
    println!();
    println!("| threads | output | epoch time (s) | images/s |");
    println!("| --- | --- | --- | --- |");
    for threads in [1usize, 2] {
        for tensors in [false, true] {
            let cfg = LoaderConfig::train(128, 1).with_threads(threads);
            let l = Loader::new(ds.clone(), Pipeline::cifar_train(Normalization::cifar100()), cfg, Device::Cpu).expect("loader");
            // Warm-up epoch, then the best of 3 timed epochs.
            let mut best = f64::MAX;
            for epoch in 0..4u64 {
                let t = Instant::now();
                let mut count = 0;
                let mut it = l.epoch(epoch);
                if tensors {
                    for b in it.by_ref() {
                        count += b.expect("batch").indices.len();
                    }
                } else {
                    while let Some(b) = it.next_host_batch() {
                        count += b.expect("batch").indices.len();
                    }
                }
                assert_eq!(count, n);
                if epoch > 0 {
                    best = best.min(t.elapsed().as_secs_f64());
                }
            }
            let out = if tensors { "candle Tensor (CPU)" } else { "host f32 buffers" };
            println!("| {threads} | {out} | {best:.3} | {:.0} |", n as f64 / best);
        }
    }
}
