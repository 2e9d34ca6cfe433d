//! Faults a scheduler or a shared results folder produces: two processes on
//! one run directory, failed starts retried with a corrected config, runs
//! killed at random points, a last batch of one image, `--resume` with
//! nothing to resume, damaged run files, and error messages that must name
//! what they are about.

mod common;

use common::{assert_same_run, config, config_text, tfkd, tfkd_output, write_config};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tfkd_runner::run_dir::{lock_path, LAST, SUMMARY};
use tfkd_runner::{run_experiment, ExperimentConfig, RunError, RunOptions, Silent};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Two processes on one run directory: the second gets the lock error that
/// names the first, whatever its config, with or without `--resume`; the
/// first is not disturbed, and the directory ends consistent.
#[test]
fn a_second_process_on_a_run_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    // Long enough to outlive the refused starts below on a loaded machine;
    // the test checks that it did.
    let first = config(tmp.path(), "method = \"lsr\"", 20);
    let mut other = first.clone();
    other.optim.lr = 0.02; // same name, another lr
    let first_path = write_config(&tmp.path().join("a"), &first);
    let other_path = write_config(&tmp.path().join("b"), &other);
    let dir = first.run_dir();

    let mut child = tfkd().args(["-q", "train", "-c"]).arg(&first_path).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("the first run taking its lock", Duration::from_secs(120), || lock_path(&dir).is_file());
    for (args, path) in [
        (&["train"][..], &first_path),
        (&["train"][..], &other_path),
        (&["train", "--resume"][..], &first_path),
        (&["train", "--resume"][..], &other_path),
    ] {
        let out = tfkd_output(args, path);
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?} was accepted while the run is being trained");
        assert!(
            err.contains(&format!("is being trained by pid {}", child.id())) && err.contains("on host"),
            "{args:?}: {err}"
        );
    }
    assert!(child.try_wait().unwrap().is_none(), "the first run ended before the refusals were all checked");
    let status = child.wait().unwrap();
    assert!(status.success(), "the first run was disturbed");
    assert!(!lock_path(&dir).exists(), "the lock is released at the end");

    // The directory is the first config's: its config, three epochs, a summary.
    let stored = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    let stored: ExperimentConfig = toml::from_str(&stored).unwrap();
    assert_eq!(stored.identity(), first.identity());
    let summary = tfkd_runner::run_dir::read_summary(&dir).unwrap().expect("finished");
    assert_eq!(summary.epochs, 20);
    assert_eq!(tfkd_runner::run_dir::read_metrics(&dir).unwrap().len(), 20);
    // And a later start with the other config is told so, not given the first's result.
    let out = tfkd_output(&["train"], &other_path);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("different config"), "{}", stderr(&out));
}

/// Divergence in epoch 1: the message says there is no checkpoint yet, and
/// the corrected config then starts, moving the failed start aside.
#[test]
fn a_failed_start_does_not_block_the_corrected_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (bad, err) = common::diverged_start(tmp.path(), 2);
    assert!(err.contains("diverged at epoch 1"), "{err}");
    assert!(err.contains("no checkpoint"), "{err}");
    assert!(!err.contains("last good checkpoint is kept"), "{err}");
    let dir = bad.run_dir();
    assert!(dir.join("config.toml").is_file() && !dir.join(LAST).exists());

    // The corrected lr, with and without --resume: both start.
    let good = config(tmp.path(), "method = \"baseline\"", 2);
    let mut stages = Vec::new();
    struct Stages<'a>(&'a mut Vec<String>);
    impl tfkd_runner::Reporter for Stages<'_> {
        fn stage(&mut self, m: &str) {
            self.0.push(m.to_string());
        }
    }
    let outcome = run_experiment(&good, &RunOptions::default(), &mut Stages(&mut stages)).unwrap();
    assert!(outcome.summary.is_some());
    assert!(stages.iter().any(|m| m.contains("moved it aside")), "{stages:?}");
    let aside = tmp.path().join(format!("{}.failed-start", good.run_name()));
    let kept: ExperimentConfig = toml::from_str(&std::fs::read_to_string(aside.join("config.toml")).unwrap()).unwrap();
    assert_eq!(kept.optim.lr, 1e30, "the failed start is kept aside");

    // A data error leaves only config.toml too; --resume with a fixed root starts.
    let mut no_data = config(&tmp.path().join("other"), "method = \"lsr\"", 1);
    let empty = tmp.path().join("empty-digits");
    std::fs::create_dir_all(&empty).unwrap();
    no_data.data.root = empty;
    assert!(run_experiment(&no_data, &RunOptions::default(), &mut Silent).is_err());
    let fixed = config(&tmp.path().join("other"), "method = \"lsr\"", 1);
    let resumed = RunOptions { resume: true, ..Default::default() };
    assert!(run_experiment(&fixed, &resumed, &mut Silent).unwrap().summary.is_some());

    // The same through the CLI's --resume, which refuses only a run that
    // does not exist at all.
    let mut bad_cli = config(&tmp.path().join("cli"), "method = \"baseline\"", 1);
    bad_cli.optim.lr = 1e30;
    let out = tfkd_output(&["train"], &write_config(&tmp.path().join("cli-bad"), &bad_cli));
    assert!(stderr(&out).contains("no checkpoint"), "{}", stderr(&out));
    let good_cli = config(&tmp.path().join("cli"), "method = \"baseline\"", 1);
    let out = tfkd_output(&["train", "--resume"], &write_config(&tmp.path().join("cli-good"), &good_cli));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tmp.path().join(format!("cli/{}.failed-start", good_cli.run_name())).is_dir());
}

/// A training set of 1 mod batch size: a named error before training that
/// says what to change, and `data.drop_last` trains it.
#[test]
fn a_last_batch_of_one_image_is_a_named_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = config(tmp.path(), "method = \"baseline\"", 1);
    c.data.train_subset = 65; // batches of 32, 32, 1
    let err = run_experiment(&c, &RunOptions::default(), &mut Silent).unwrap_err();
    assert!(matches!(err, RunError::SingleImageBatch { images: 65, batch_size: 32, .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("drop_last") && text.contains("optim.batch_size") && text.contains("65"), "{text}");

    c.data.drop_last = true;
    let summary = run_experiment(&c, &RunOptions::default(), &mut Silent).unwrap().summary.unwrap();
    assert!(summary.last.test_top1.is_finite());
    // drop_last changes the batches: it is part of the stored config.
    let stored = std::fs::read_to_string(c.run_dir().join("config.toml")).unwrap();
    assert!(stored.contains("drop_last = true"), "{stored}");
}

/// `--resume` that resumes nothing (here: `--set seed=1` renames the run)
/// refuses and lists the runs that could be meant.
#[test]
fn resume_with_nothing_to_resume_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path(), "method = \"baseline\"", 2);
    let path = write_config(&tmp.path().join("cfg"), &c);
    run_experiment(&c, &RunOptions { stop_after: Some(1), ..Default::default() }, &mut Silent).unwrap();
    for set in ["seed=1", "strategy.method=\"lsr\""] {
        let out = tfkd().args(["-q", "train", "--resume", "--set", set, "-c"]).arg(&path).output().unwrap();
        let err = stderr(&out);
        assert!(!out.status.success(), "--resume --set {set} started a new run");
        assert!(err.contains("no checkpoint to resume") && err.contains(&c.run_name()), "{set}: {err}");
        assert_eq!(err.matches("error:").count(), 1, "{err}");
    }
    let started: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    let renamed = |n: &std::ffi::OsString| n.to_string_lossy().contains("-s1") || n.to_string_lossy().contains("-lsr-");
    assert!(!started.iter().any(renamed), "nothing was started: {started:?}");
    // The run itself resumes.
    let out = tfkd_output(&["train", "--resume"], &path);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// An empty or damaged `summary.json` does not mark a run finished: the run
/// counts as unfinished and resuming writes the summary again.
#[test]
fn a_damaged_summary_is_written_again() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path(), "method = \"baseline\"", 1);
    let first = run_experiment(&c, &RunOptions::default(), &mut Silent).unwrap().summary.unwrap();
    let path = c.run_dir().join(SUMMARY);
    for damaged in ["", "{\"run\": "] {
        std::fs::write(&path, damaged).unwrap();
        assert!(!tfkd_runner::run_dir::is_finished(&c.run_dir()));
        let again = run_experiment(&c, &RunOptions { resume: true, ..Default::default() }, &mut Silent).unwrap();
        assert_eq!(again.summary.as_ref(), Some(&first));
        assert_eq!(tfkd_runner::run_dir::read_summary(&c.run_dir()).unwrap().as_ref(), Some(&first));
    }
}

/// Messages that must name their file or folder, and say an OS error once.
#[test]
fn messages_name_what_they_are_about() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path(), "method = \"baseline\"", 1);
    let path = write_config(&tmp.path().join("cfg"), &c);

    // --checkpoint <directory>
    let out = tfkd().args(["-q", "eval", "--checkpoint"]).arg(tmp.path()).arg("-c").arg(&path).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("is a directory"), "{err}");

    // download --root <regular file>
    let file = tmp.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let out = tfkd().args(["-q", "download", "cifar10", "--root"]).arg(&file).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains(&file.display().to_string()) && err.contains("not a directory"), "{err}");
    // An unknown dataset lists the choices.
    let out = tfkd().args(["-q", "download", "cifar1000"]).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("cifar100") && err.contains("tiny-imagenet"), "{err}");

    // --show-config needs no data; training names the missing folder.
    let mut no_data = c.clone();
    no_data.data.root = tmp.path().join("no-such-data");
    let no_data_path = write_config(&tmp.path().join("no-data"), &no_data);
    let out = tfkd_output(&["train", "--show-config"], &no_data_path);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no-such-data"), "{}", stderr(&out));
    let out = tfkd_output(&["train"], &no_data_path);
    assert!(!out.status.success() && stderr(&out).contains("data.root") && stderr(&out).contains("no-such-data"));

    // An OS error appears once in the printed chain.
    let unreadable = tmp.path().join("no-such-config.toml");
    let out = tfkd_output(&["train"], &unreadable);
    let err = stderr(&out);
    assert!(err.contains("no-such-config.toml"), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// A chaos run: killed with SIGKILL at seeded random points, resumed each
/// time, it ends bit-identical to an uninterrupted run (tensors, metrics
/// without timings). Each kill lands a seeded fraction of an epoch after
/// zero or one more finished epoch: before the first checkpoint, during
/// start-up, mid-epoch, while a checkpoint is written; the dead process's
/// lock is taken over each time. The points follow the run's progress, not
/// the clock, so a loaded machine changes where they land, not how many.
#[test]
fn a_run_killed_at_random_points_ends_as_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let epochs = 8;
    let strategy = "method = \"tf-kd-reg\"\nalpha = 0.1\ntemperature = 20.0\nmultiplier = 10.0";
    let straight = config(&tmp.path().join("straight"), strategy, epochs);
    let chaos = config(&tmp.path().join("chaos"), strategy, epochs);
    let straight_path = write_config(&tmp.path().join("straight"), &straight);
    let chaos_path = write_config(&tmp.path().join("chaos"), &chaos);

    let out = tfkd_output(&["train"], &straight_path);
    assert!(out.status.success(), "{}", stderr(&out));
    let epoch_seconds = tfkd_runner::run_dir::read_metrics(&straight.run_dir())
        .unwrap()
        .iter()
        .map(|r| r.seconds)
        .fold(f64::INFINITY, f64::min);

    // xorshift64*, seeded.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let dir = chaos.run_dir();
    let finished_epochs = || tfkd_runner::run_dir::read_metrics(&dir).map(|m| m.len()).unwrap_or(0);
    let (mut kills, mut points) = (0, Vec::new());
    for attempt in 0..40 {
        let mut cmd = tfkd();
        cmd.args(["-q", "train"]);
        if dir.join(LAST).is_file() {
            cmd.arg("--resume");
        }
        let before = finished_epochs();
        let mut child = cmd.arg("-c").arg(&chaos_path).stderr(Stdio::piped()).spawn().unwrap();
        // Five kills, then the run goes to its end.
        let point = (kills < 5).then(|| ((next() % 2) as usize, epoch_seconds * (next() % 1000) as f64 / 1000.0 * 0.9));
        let mut reached: Option<Instant> = None;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if let Some((more, delay)) = point {
                if reached.is_none() && finished_epochs() >= before + more {
                    reached = Some(Instant::now());
                }
                if reached.is_some_and(|t| t.elapsed().as_secs_f64() >= delay) {
                    child.kill().unwrap(); // SIGKILL
                    child.wait().unwrap();
                    points.push((before + more, delay));
                    kills += 1;
                    break None;
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        if let Some(status) = status {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(status.success(), "attempt {attempt}: {err}");
            break;
        }
        assert!(attempt < 39, "the chaos run never finished");
    }
    eprintln!("{kills} kills at (finished epochs, seconds after): {points:?}");
    assert!(kills >= 3, "only {kills} kills: {points:?}");
    assert!(dir.join(SUMMARY).is_file());
    assert!(!lock_path(&dir).exists());
    assert_same_run(&straight.run_dir(), &dir);
}

/// A config writes back to the same config (random and damaged texts are
/// `readers_fuzz.rs`'s).
#[test]
fn the_config_writes_back_to_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(tmp.path(), "method = \"kd\"\nalpha = 0.9\ntemperature = 4.0\nteacher = { model = \"cnn\" }", 2);
    let c = ExperimentConfig::from_toml(&text).unwrap();
    assert_eq!(ExperimentConfig::from_toml(&c.try_to_toml().unwrap()).unwrap(), c);
}

/// SIGTERM (what Slurm sends before a time limit or preemption) lets the
/// run finish its step, write a resume checkpoint (mid-epoch: batches done,
/// running sums, dropout state), release its lock and exit with 75; resumed
/// each time with `--auto-resume`, the run ends bit-identical to an
/// uninterrupted one (tensors, metrics without timings). The signals land at
/// several points of an epoch of a network with dropout; at least two must
/// land mid-epoch (retried until they do).
#[cfg(unix)]
#[test]
fn a_run_stopped_by_sigterm_checkpoints_mid_epoch_and_resumes_bit_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let epochs = 6;
    let strategy = "method = \"tf-kd-reg\"\nalpha = 0.1\ntemperature = 20.0\nmultiplier = 10.0";
    let straight = config(&tmp.path().join("straight"), strategy, epochs);
    let stopped = config(&tmp.path().join("stopped"), strategy, epochs);
    let straight_path = write_config(&tmp.path().join("straight"), &straight);
    let stopped_path = write_config(&tmp.path().join("stopped"), &stopped);
    let out = tfkd_output(&["train"], &straight_path);
    assert!(out.status.success(), "{}", stderr(&out));
    let epoch_seconds = tfkd_runner::run_dir::read_metrics(&straight.run_dir())
        .unwrap()
        .iter()
        .map(|r| r.seconds)
        .fold(f64::INFINITY, f64::min);

    let dir = stopped.run_dir();
    let (mut mid_epoch, mut stops) = (Vec::new(), 0);
    for attempt in 0..30 {
        let mut child =
            tfkd().args(["-q", "train", "--auto-resume", "-c"]).arg(&stopped_path).stderr(Stdio::piped()).spawn().unwrap();
        if mid_epoch.len() < 2 && stops < 25 {
            wait_for("the run taking its lock", Duration::from_secs(120), || {
                lock_path(&dir).is_file() || child.try_wait().unwrap().is_some()
            });
            // 0.2 to 1.4 epochs after the start, so the signals land in
            // training, in evaluation and during checkpoints.
            std::thread::sleep(Duration::from_secs_f64(epoch_seconds * (0.2 + 0.3 * (attempt % 5) as f64)));
            // SAFETY: sends SIGTERM to our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let status = child.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        if status.success() {
            break;
        }
        assert_eq!(status.code(), Some(i32::from(tfkd_runner::run_dir::EXIT_INTERRUPTED)), "attempt {attempt}: {err}");
        assert!(err.contains("stopped by signal 15 in epoch"), "{err}");
        assert!(!lock_path(&dir).exists(), "the lock was released");
        stops += 1;
        if dir.join(LAST).is_file() {
            let meta = tfkd_runner::checkpoint::load_tensors(&dir.join(LAST), &candle_core::Device::Cpu)
                .unwrap()
                .meta
                .unwrap();
            if let Some(p) = meta.partial {
                if !mid_epoch.contains(&(meta.epochs_done, p.batches_done)) {
                    mid_epoch.push((meta.epochs_done, p.batches_done));
                }
            }
        }
        assert!(attempt < 29, "the stopped run never finished");
    }
    eprintln!("{stops} stops; mid-epoch ones at (epochs done, batches done): {mid_epoch:?}");
    assert!(mid_epoch.len() >= 2, "only {mid_epoch:?} landed mid-epoch in {stops} stops");
    assert!(tfkd_runner::run_dir::is_finished(&dir));
    assert_same_run(&straight.run_dir(), &dir);
}

/// A second signal stops at once (exit 128 + the signal) and still releases
/// the lock; the run resumes from its last checkpoint.
#[cfg(unix)]
#[test]
fn a_second_signal_stops_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let c = config(tmp.path(), "method = \"baseline\"", 200);
    let path = write_config(&tmp.path().join("cfg"), &c);
    let dir = c.run_dir();
    let mut child = tfkd().args(["-q", "train", "--auto-resume", "-c"]).arg(&path).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("the first epoch", Duration::from_secs(300), || dir.join(LAST).is_file());
    // SAFETY: sends signals to our own child. The first asks for a
    // checkpoint, the second ends the process at once, unless
    // the run had already stopped with its checkpoint: both are valid stops.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        libc::kill(child.id() as libc::pid_t, libc::SIGUSR1);
    }
    let status = child.wait().unwrap();
    let code = status.code().unwrap();
    // Pending signals are taken lowest number first: whichever of the two
    // came second ends the process.
    let at_once = [128 + libc::SIGUSR1, 128 + libc::SIGTERM];
    assert!(at_once.contains(&code) || code == i32::from(tfkd_runner::run_dir::EXIT_INTERRUPTED), "{status:?}");
    assert!(!lock_path(&dir).exists(), "the lock was released");
    // Whichever signal won, the resume checkpoint on disk is whole.
    let meta = tfkd_runner::checkpoint::load_tensors(&dir.join(LAST), &candle_core::Device::Cpu).unwrap().meta.unwrap();
    assert!(meta.epochs_done >= 1);
}
