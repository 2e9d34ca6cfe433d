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

/// Replicas that are threads share one GPU: `tfkd train --nproc N` on a GPU
/// says so (also with `--show-config`, which opens no device) and names
/// the one-process-per-GPU launch; on the CPU it does not.
#[test]
fn thread_replicas_on_a_gpu_are_said_to_share_it() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path(), "method = \"baseline\"", 1);
    let path = tmp.path().join("exp.toml");
    std::fs::write(&path, c.to_toml()).unwrap();
    let train = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tfkd"))
            .args(["train", "--nproc", "2", "-c"])
            .arg(&path)
            .args(extra)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let on_gpu = train(&["--show-config", "--set", "device=\"cuda:1\""]);
    assert!(on_gpu.contains("2 replicas are threads of this process and share one GPU (cuda:1)"), "{on_gpu}");
    assert!(on_gpu.contains("torchrun --nproc-per-node 2 --no-python tfkd train"), "{on_gpu}");
    let on_cpu = train(&["--show-config"]);
    assert!(!on_cpu.contains("share"), "{on_cpu}");
}

/// Starts `tfkd train` as `world` processes of one run, as srun or torchrun
/// would (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), and waits for
/// them; returns their exit codes and stderr.
fn launch(config: &std::path::Path, world: usize) -> Vec<(Option<i32>, String)> {
    launch_and_stop(config, world, None)
}

/// [`launch`], sending SIGTERM to every process (as srun forwards Slurm's)
/// `stop_after` into the run.
fn launch_and_stop(config: &std::path::Path, world: usize, stop_after: Option<std::time::Duration>) -> Vec<(Option<i32>, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            common::tfkd()
                .args(["-q", "train", "--auto-resume", "-c"])
                .arg(config)
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    if let Some(delay) = stop_after {
        // Rank 0 takes the lock once every process has joined (a finished
        // run ends without it).
        let c = ExperimentConfig::from_toml(&std::fs::read_to_string(config).unwrap()).unwrap();
        let lock = tfkd_runner::run_dir::lock_path(&c.run_dir());
        let start = std::time::Instant::now();
        while !lock.is_file() && start.elapsed() < std::time::Duration::from_secs(120) {
            if tfkd_runner::run_dir::is_finished(&c.run_dir()) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(delay);
        for c in &children {
            // SAFETY: sends SIGTERM to our own child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
        })
        .collect()
}

/// Two processes that meet over TCP train the CNN (BatchNorm and dropout
/// per replica) bit for bit as two replicas in one process: the same shares,
/// the same sums in the same order, the same checkpoints; only rank 0 writes.
#[cfg(unix)]
#[test]
fn processes_launched_like_srun_train_as_replicas_in_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let strategy = "method = \"tf-kd-reg\"\nalpha = 0.1\ntemperature = 20.0\nmultiplier = 10.0";
    let mut threads = config(&tmp.path().join("threads"), strategy, 3);
    threads.replicas = 2;
    run_experiment(&threads, &RunOptions::default(), &mut Silent).unwrap();

    let processes = config(&tmp.path().join("processes"), strategy, 3);
    let path = common::write_config(&tmp.path().join("processes"), &processes);
    for (rank, (code, err)) in launch(&path, 2).into_iter().enumerate() {
        assert_eq!(code, Some(0), "rank {rank}: {err}");
    }
    let mut as_launched = processes.clone();
    as_launched.replicas = 2;
    assert_eq!(as_launched.run_name(), threads.run_name());
    assert_same_run(&threads.run_dir(), &as_launched.run_dir());
    // Launched again, the finished run is skipped by every process.
    for (rank, (code, err)) in launch(&path, 2).into_iter().enumerate() {
        assert_eq!(code, Some(0), "rank {rank}: {err}");
    }

    // Stopped by SIGTERM (each process at its own moment: they agree on the
    // step), relaunched until done: still the same run.
    let stopped = config(&tmp.path().join("stopped"), strategy, 3);
    let path = common::write_config(&tmp.path().join("stopped"), &stopped);
    let epoch = tfkd_runner::run_dir::read_metrics(&threads.run_dir()).unwrap()[1].seconds;
    let mut stops = 0;
    for attempt in 0..12 {
        let delay = (attempt < 4).then(|| std::time::Duration::from_secs_f64(0.3 + epoch * 0.4 * attempt as f64));
        let codes = launch_and_stop(&path, 2, delay);
        if codes.iter().all(|(c, _)| *c == Some(0)) {
            break;
        }
        for (rank, (code, err)) in codes.iter().enumerate() {
            assert_eq!(*code, Some(i32::from(tfkd_runner::run_dir::EXIT_INTERRUPTED)), "rank {rank}: {err}");
        }
        stops += 1;
        assert!(attempt < 11, "never finished");
    }
    eprintln!("{stops} stops");
    let mut as_launched = stopped.clone();
    as_launched.replicas = 2;
    assert_same_run(&threads.run_dir(), &as_launched.run_dir());
}
