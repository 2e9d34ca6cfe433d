//! End-to-end training on real data (scikit-learn's digits, committed under
//! `fixtures/digits/`): every strategy trains and clearly beats chance (10 %),
//! Tf-KD_self trains its own baseline first, De-KD distils from an epoch
//! checkpoint, and a run killed with SIGKILL resumes to the same weights and
//! metrics as an uninterrupted one.

mod common;

use common::{config, read_checkpoint};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tfkd_runner::{run_experiment, ExperimentConfig, RunOptions, Silent, Summary};

fn train(config: &ExperimentConfig) -> Summary {
    let outcome = run_experiment(config, &RunOptions::default(), &mut Silent)
        .unwrap_or_else(|e| panic!("{}: {e}", config.run_name()));
    outcome.summary.expect("finished")
}

#[test]
fn every_strategy_trains_and_beats_chance() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path();
    // Tf-KD_self first: its baseline does not exist yet, so it is trained as stage one.
    let self_kd = config(out, "method = \"tf-kd-self\"\nalpha = 0.9\ntemperature = 6.0\nmultiplier = 5.0", 3);
    let summary = train(&self_kd);
    let baseline_dir = out.join("digits-cnn-baseline-s3");
    assert!(baseline_dir.join("summary.json").is_file(), "stage one trained the baseline");
    assert!(summary.teacher_top1.unwrap() > 50.0);
    let mut results = vec![("tf-kd-self", summary)];

    let teacher = baseline_dir.join("best.safetensors");
    for (name, strategy) in [
        ("baseline", "method = \"baseline\"".to_string()),
        ("lsr", "method = \"lsr\"".to_string()),
        ("kd", "method = \"kd\"\nalpha = 0.9\ntemperature = 4.0\nteacher = { model = \"cnn\" }".to_string()),
        (
            "re-kd",
            format!(
                "method = \"re-kd\"\nalpha = 0.6\ntemperature = 4.0\nteacher = {{ source = {{ checkpoint = \"{}\" }} }}",
                teacher.display()
            ),
        ),
        ("tf-kd-reg", "method = \"tf-kd-reg\"\nalpha = 0.1\ntemperature = 20.0\nmultiplier = 10.0".to_string()),
    ] {
        let summary = train(&config(out, &strategy, 3));
        assert_eq!(summary.method, name);
        results.push((name, summary));
    }

    // De-KD in a fresh directory: its baseline is trained keeping epoch 1.
    let de_out = out.join("de-kd");
    let de = config(&de_out, "method = \"de-kd\"\nalpha = 0.9\ntemperature = 4.0\nteacher = { source = { baseline-epoch = 1 } }", 3);
    let summary = train(&de);
    assert!(de_out.join("digits-cnn-baseline-s3/epoch-1.safetensors").is_file());
    results.push(("de-kd", summary));

    for (name, s) in &results {
        assert!(s.best.test_top1 > 40.0, "{name} reached only {:.1}% (chance is 10%)", s.best.test_top1);
        assert!(s.best.test_top1 >= s.last.test_top1);
        let metrics = std::fs::read_to_string(out.join(&s.run).join("metrics.jsonl"))
            .or_else(|_| std::fs::read_to_string(de_out.join(&s.run).join("metrics.jsonl")))
            .unwrap();
        assert_eq!(metrics.lines().count(), 3, "{name}: one metrics line per epoch");
    }
    // A finished run is skipped, not retrained or overwritten.
    let again = train(&self_kd);
    assert_eq!(again, results[0].1);
}

#[test]
fn a_run_killed_mid_epoch_resumes_to_identical_results() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |dir: &Path| -> PathBuf {
        let c = config(dir, "method = \"lsr\"", 3);
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("exp.toml");
        std::fs::write(&path, c.to_toml()).unwrap();
        path
    };
    let straight = write(&tmp.path().join("straight"));
    let killed = write(&tmp.path().join("killed"));
    let tfkd = env!("CARGO_BIN_EXE_tfkd");
    let status = Command::new(tfkd).args(["-q", "train", "-c"]).arg(&straight).status().unwrap();
    assert!(status.success());

    let mut child = Command::new(tfkd).args(["-q", "train", "-c"]).arg(&killed).spawn().unwrap();
    let metrics = tmp.path().join("killed/digits-cnn-lsr-s3/metrics.jsonl");
    let start = Instant::now();
    // Wait for epoch 1 to finish, then kill during epoch 2.
    while std::fs::read_to_string(&metrics).map(|m| m.lines().count()).unwrap_or(0) < 1 {
        assert!(start.elapsed() < Duration::from_secs(600), "epoch 1 never finished");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done = std::fs::read_to_string(&metrics).unwrap().lines().count();
    assert!(done < 3, "killed too late to test resuming ({done} epochs done)");

    // Without --resume the started run is protected.
    let out = Command::new(tfkd).args(["-q", "train", "-c"]).arg(&killed).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));
    let status = Command::new(tfkd).args(["-q", "train", "--resume", "-c"]).arg(&killed).status().unwrap();
    assert!(status.success());

    let a = tmp.path().join("straight/digits-cnn-lsr-s3");
    let b = tmp.path().join("killed/digits-cnn-lsr-s3");
    common::assert_same_run(&a, &b);
}

#[test]
fn divergence_stops_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, err) = common::diverged_start(tmp.path(), 2);
    assert!(err.contains("diverged at epoch 1"), "{err}");
    assert!(err.contains("NaN or infinite"), "{err}");
}

/// A teacher narrowed differently from its student (the quick profile's
/// per-network widths): its baseline trains at its own width and loads.
#[test]
fn a_teacher_keeps_its_own_width() {
    let tmp = tempfile::tempdir().unwrap();
    let kd = config(
        tmp.path(),
        "method = \"kd\"\nalpha = 0.9\ntemperature = 4.0\nteacher = { model = \"cnn\", width_divisor = 2 }",
        2,
    );
    let summary = train(&kd);
    let teacher_config = std::fs::read_to_string(tmp.path().join("digits-cnn-baseline-s3/config.toml")).unwrap();
    assert!(teacher_config.contains("width_divisor = 2"), "{teacher_config}");
    assert!(summary.teacher_top1.unwrap() > 40.0, "{summary:?}");
    let student_config = std::fs::read_to_string(tmp.path().join("digits-cnn-kd-s3/config.toml")).unwrap();
    assert!(student_config.contains("width_divisor = 4"), "{student_config}");
}

/// `optim.kind = "adam"` (the official CNN's optimizer): the CNN learns the
/// digits, and a run stopped after epoch 1 and resumed ends with the same
/// tensors (moments and step counts included) as an uninterrupted one.
#[test]
fn adam_trains_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let adam = |out: &Path| {
        let mut c = config(out, "method = \"baseline\"", 3);
        c.optim.kind = tfkd_runner::config::OptimizerKind::Adam;
        c.optim.lr = 0.002;
        c.optim.weight_decay = 0.0;
        c
    };
    let straight = adam(&tmp.path().join("straight"));
    let summary = train(&straight);
    assert!(summary.best.test_top1 > 40.0, "Adam reached only {:.1}%", summary.best.test_top1);
    let stored = std::fs::read_to_string(straight.run_dir().join("config.toml")).unwrap();
    assert!(stored.contains("kind = \"adam\""), "{stored}");

    let resumed = adam(&tmp.path().join("resumed"));
    run_experiment(&resumed, &RunOptions { stop_after: Some(1), ..Default::default() }, &mut Silent).unwrap();
    let state = read_checkpoint(&resumed.run_dir().join("last.safetensors"));
    assert!(state.iter().any(|(name, _)| name.ends_with(".exp_avg_sq")), "Adam's moments are checkpointed");
    run_experiment(&resumed, &RunOptions { resume: true, ..Default::default() }, &mut Silent).unwrap();
    assert_eq!(
        read_checkpoint(&straight.run_dir().join("last.safetensors")),
        read_checkpoint(&resumed.run_dir().join("last.safetensors"))
    );
}
