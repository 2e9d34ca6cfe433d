//! Data parallelism: replicas that each train on a share of every batch and
//! sum their gradients before each step train as one process on the whole
//! batch (for a network without BatchNorm, whose statistics are per
//! replica), and a data-parallel run resumes exactly.

mod common;

use candle_core::Device;
use common::{assert_same_run, config, read_checkpoint};
use std::collections::HashMap;
use tfkd_runner::run_dir::LAST;
use tfkd_runner::{run_experiment, ExperimentConfig, RunOptions, Silent};

/// The weights of a run's `last.safetensors` (optimizer state aside).
fn weights(c: &ExperimentConfig) -> HashMap<String, Vec<f32>> {
    let loaded = tfkd_runner::checkpoint::load_tensors(&c.run_dir().join(LAST), &Device::Cpu).unwrap();
    loaded.model.into_iter().map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())).collect()
}

/// AlexNet (no BatchNorm, no dropout), SGD with momentum and weight decay,
/// 200 digits in batches of 32 (the last one 8: uneven shares for 3
/// replicas). 2 and 3 replicas end with the weights of one process up to
/// float rounding (the sums are taken in another order). Without the
/// all-reduce each replica would step on its share alone and this fails.
#[test]
fn replicas_of_a_network_without_batch_norm_train_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |replicas: usize| {
        let mut c = config(&tmp.path().join(format!("r{replicas}")), "method = \"lsr\"\nepsilon = 0.1", 2);
        c.model.name = "alexnet".into();
        c.data.train_subset = 200;
        c.optim.weight_decay = 5e-4;
        c.replicas = replicas;
        let outcome = run_experiment(&c, &RunOptions::default(), &mut Silent).unwrap();
        (weights(&c), outcome.summary.unwrap())
    };
    let (one, one_summary) = run(1);
    for replicas in [2, 3] {
        let (many, summary) = run(replicas);
        assert_eq!(one.len(), many.len());
        for (name, a) in &one {
            let b = &many[name];
            let scale = a.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
            let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-4 * scale, "{replicas} replicas: {name} differs by {worst} (scale {scale})");
        }
        let (x, y) = (one_summary.last.train_loss, summary.last.train_loss);
        assert!((x - y).abs() <= 1e-4 * x.abs(), "{replicas} replicas: train loss {y} vs {x}");
        assert_eq!(one_summary.last.test_top1, summary.last.test_top1, "{replicas} replicas");
    }
}

/// A data-parallel run of a network with BatchNorm and dropout (the CNN),
/// stopped after an epoch and resumed, ends as an uninterrupted one, bit
/// for bit: replica 0 checkpoints, and every replica restarts from it.
#[test]
fn a_data_parallel_run_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let make = |dir: &str| {
        let mut c = config(&tmp.path().join(dir), "method = \"baseline\"", 3);
        c.replicas = 2;
        c
    };
    let (straight, resumed) = (make("straight"), make("resumed"));
    run_experiment(&straight, &RunOptions::default(), &mut Silent).unwrap();
    let first = RunOptions { stop_after: Some(1), ..Default::default() };
    assert!(run_experiment(&resumed, &first, &mut Silent).unwrap().summary.is_none());
    run_experiment(&resumed, &RunOptions { resume: true, ..Default::default() }, &mut Silent).unwrap();
    assert_same_run(&straight.run_dir(), &resumed.run_dir());
    // Every step's learning rate follows the schedule (warm-up in epoch 1):
    // each record holds the rate of its epoch's last iteration.
    let batches = 512 / 32;
    let schedule = straight.lr_schedule(batches);
    for r in tfkd_runner::run_dir::read_metrics(&straight.run_dir()).unwrap() {
        assert_eq!(r.lr, schedule.lr(r.epoch - 1, batches - 1), "epoch {}", r.epoch);
    }
    // Per-replica BatchNorm statistics make it another run than one process.
    let mut single = config(&tmp.path().join("single"), "method = \"baseline\"", 3);
    single.replicas = 1;
    run_experiment(&single, &RunOptions::default(), &mut Silent).unwrap();
    assert_ne!(read_checkpoint(&single.run_dir().join(LAST)), read_checkpoint(&straight.run_dir().join(LAST)));
}

/// Too many replicas for the batches is a named error before training.
#[test]
fn replicas_without_images_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path(), "method = \"baseline\"", 1);
    c.replicas = 40;
    let err = run_experiment(&c, &RunOptions::default(), &mut Silent).unwrap_err().to_string();
    assert!(err.contains("optim.batch_size") && err.contains("40 replicas"), "{err}");
    c.replicas = 17; // batches of 32: 1 image for some replicas, which BatchNorm cannot normalise
    let err = run_experiment(&c, &RunOptions::default(), &mut Silent).unwrap_err().to_string();
    assert!(err.contains("replicas") && err.contains("BatchNorm"), "{err}");
}
