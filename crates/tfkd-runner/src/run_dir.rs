//! The run directory: its files, who may write them, and when a run counts
//! as finished.
//!
//! `<out_dir>/<name>/` holds `config.toml` (the resolved config),
//! `metrics.jsonl` (one line per epoch), `last.safetensors` (everything
//! needed to resume), `best.safetensors`, kept `epoch-E.safetensors` and
//! `summary.json`. Every file is written atomically (temporary file, fsync,
//! rename: [`crate::checkpoint::write_atomic`]).
//!
//! # Invariants
//!
//! - **One writer.** A process writes into a run directory only while it holds
//!   the run's lock, [`RunLock`]: the file `<out_dir>/<name>.lock` beside the
//!   directory, written in full to a private file and hard-linked to its name
//!   (`link` fails when the name exists: atomic on local filesystems and on
//!   NFS, where `O_EXCL` was not always, and `flock` is not relied upon; a
//!   lock is never seen half-written). It names the host,
//!   the pid, the process's start time and the time the lock was taken, and
//!   its holder touches it every [`HEARTBEAT`]. A lock is stale when its
//!   process is gone (same host: the pid is not running, or runs another
//!   process started at another time) or, from another host, when it was not
//!   touched for [`STALE_AFTER`]; a stale lock is taken over with a message,
//!   a live one refuses with the holder's pid and host. The holder checks
//!   that the lock is still its own before every checkpoint
//!   ([`RunLock::verify`]) and stops if it is not. A process asked to stop by
//!   SIGTERM, SIGUSR1, SIGINT or SIGHUP finishes its step, writes its resume
//!   checkpoint and releases its locks ([`release_locks_on_termination`]). The lock sits beside
//!   the directory so that it also covers creating the directory and moving
//!   a failed start aside.
//! - **Finished** means `summary.json` parses ([`read_summary`]). Its content
//!   is derived from `last.safetensors` and the config, so an unreadable
//!   summary makes the run unfinished, not lost: resuming writes it again.
//! - **Resume** continues from the last checkpoint, exactly: weights,
//!   BatchNorm statistics, optimizer state and the per-epoch history come
//!   from `last.safetensors`; batches and dropout masks of later epochs are
//!   functions of (seed, epoch) only. A checkpoint written on a stop signal
//!   is mid-epoch: it also holds the batches done, the epoch's running sums
//!   and the dropout generator's state, and a sample's augmentation is a
//!   function of (seed, epoch, sample), so the rest of the epoch is the same. A run resumed any number of times ends
//!   with the same tensors and metrics (timings aside) as an uninterrupted
//!   one.
//! - A directory without `last.safetensors` holds no finished epoch and
//!   nothing worth protecting: a start with another config moves it aside
//!   ([`move_aside`]) and starts afresh. One with a finished epoch is only
//!   ever continued with the config it was started with.

use crate::error::{io_err, Result, RunError};
use crate::train::{EpochRecord, Summary};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The resumable checkpoint of a run.
pub const LAST: &str = "last.safetensors";
/// The model with the best test top-1 so far.
pub const BEST: &str = "best.safetensors";
/// The run's final summary; when it parses, the run is finished.
pub const SUMMARY: &str = "summary.json";
/// One JSON object per epoch.
pub const METRICS: &str = "metrics.jsonl";
/// The resolved config the run was started with.
pub const CONFIG: &str = "config.toml";

/// How often the holder of a [`RunLock`] touches it.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// A lock of another host not touched for this long is stale.
pub const STALE_AFTER: Duration = Duration::from_secs(300);

/// The file name of the checkpoint kept after `epoch` (1-based).
pub fn epoch_file(epoch: usize) -> String {
    format!("epoch-{epoch}.safetensors")
}

/// The lock file of the run directory `dir`: `<dir>.lock`.
pub fn lock_path(dir: &Path) -> PathBuf {
    crate::checkpoint::with_name_suffix(dir, ".lock")
}

/// The summary of the run in `dir`; `None` while the run is not finished.
/// An unreadable summary is an error here; [`run_experiment`] treats it as
/// unfinished and writes it again.
///
/// [`run_experiment`]: crate::run_experiment
pub fn read_summary(dir: &Path) -> Result<Option<Summary>> {
    let path = dir.join(SUMMARY);
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| RunError::Checkpoint { path, reason: format!("unreadable summary: {e}") })
}

/// Whether the run in `dir` is finished: its summary parses.
pub fn is_finished(dir: &Path) -> bool {
    matches!(read_summary(dir), Ok(Some(_)))
}

/// The per-epoch records of the run in `dir` (`metrics.jsonl`; empty before
/// the first epoch ends).
pub fn read_metrics(dir: &Path) -> Result<Vec<EpochRecord>> {
    let path = dir.join(METRICS);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| RunError::Checkpoint {
                path: path.clone(),
                reason: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// Moves the directory `dir` aside to the first unused `<dir>.<suffix>`,
/// `<dir>.<suffix>-2`, …; nothing is deleted. Returns the new path.
pub fn move_aside(dir: &Path, suffix: &str) -> Result<PathBuf> {
    let base = format!("{}.{suffix}", dir.display());
    let aside = (1..)
        .map(|i| if i == 1 { PathBuf::from(&base) } else { PathBuf::from(format!("{base}-{i}")) })
        .find(|p| !p.exists())
        .unwrap_or_else(|| PathBuf::from(base));
    std::fs::rename(dir, &aside).map_err(|error| RunError::Io {
        path: dir.to_path_buf(),
        what: format!("cannot move it aside to {}", aside.display()),
        error,
    })?;
    Ok(aside)
}

/// What a lock file holds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LockInfo {
    /// The host of the holder.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// Its process start time as the OS counts it (Linux: clock ticks since
    /// boot, `/proc/<pid>/stat` field 22; 0 where unknown): tells a live
    /// holder from a later process that reuses its pid.
    pub process_start: u64,
    /// When the lock was taken, seconds since the Unix epoch.
    pub started_unix: u64,
    /// A random token: the holder's proof that the file is still its own.
    pub token: u64,
}

/// A held run lock; dropping it removes the lock file (when it is still this
/// holder's) and stops the heartbeat.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    run: String,
    token: u64,
    stop: Arc<AtomicBool>,
    lost: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

/// The locks this process holds, so that a termination signal can release
/// them ([`release_locks_on_termination`]).
static HELD: std::sync::Mutex<Vec<(PathBuf, u64)>> = std::sync::Mutex::new(Vec::new());

/// Why a lock file was judged stale.
fn stale_reason(info: &LockInfo, modified: Option<SystemTime>) -> Option<String> {
    if info.pid == 0 || info.pid > i32::MAX as u32 {
        return Some(format!("pid {} is not a process id", info.pid));
    }
    if info.host == hostname() {
        if !process_alive(info.pid) {
            return Some(format!("pid {} is no longer running", info.pid));
        }
        let start = process_start_time(info.pid);
        if info.process_start != 0 && start != 0 && start != info.process_start {
            return Some(format!("pid {} now belongs to another process", info.pid));
        }
        return None;
    }
    // Another host: only the heartbeat tells. Without a modification time,
    // the time the lock was taken stands in for it.
    let touched = modified.unwrap_or(UNIX_EPOCH + Duration::from_secs(info.started_unix));
    let age = SystemTime::now().duration_since(touched).ok()?;
    (age > STALE_AFTER).then(|| format!("not touched for {} s (stale after {} s)", age.as_secs(), STALE_AFTER.as_secs()))
}

fn read_lock(path: &Path) -> Option<(LockInfo, Option<SystemTime>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    serde_json::from_str(&text).ok().map(|info| (info, modified))
}

/// Creates `path` holding `content`, atomically and only if it does not
/// exist: the content is written and synced to a file of this process's own
/// first, then hard-linked to `path` (the NFS-safe recipe: `link` fails when
/// the name exists, and a link count of 2 afterwards proves success even
/// when the NFS reply was lost). A lock file is therefore never seen empty
/// or half-written. `Ok(false)`: the name exists.
fn create_exclusive(path: &Path, content: &[u8], token: u64) -> Result<bool> {
    let tmp = path.with_extension(format!("lock.new-{}-{token:x}", std::process::id()));
    if let Err(e) = crate::checkpoint::write_synced(&tmp, content) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp)(e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    #[cfg(unix)]
    let created = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&tmp).map(|m| m.nlink() == 2).unwrap_or(false)
    };
    #[cfg(not(unix))]
    let created = linked.is_ok();
    let _ = std::fs::remove_file(&tmp);
    match linked {
        _ if created => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err(path)(e)),
        Ok(()) => Ok(false),
    }
}

impl RunLock {
    /// Takes the lock of the run directory `dir` (run `run` in messages).
    /// A stale lock is taken over and `notice` is told why; a live one is a
    /// [`RunError::Locked`].
    pub fn acquire(dir: &Path, run: &str, notice: &mut dyn FnMut(&str)) -> Result<RunLock> {
        let path = lock_path(dir);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let info = LockInfo {
            host: hostname(),
            pid: std::process::id(),
            process_start: process_start_time(std::process::id()),
            started_unix: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            token: random_token(),
        };
        let json = serde_json::to_string(&info).map_err(|e| RunError::Io {
            path: path.clone(),
            what: "cannot encode the lock".into(),
            error: std::io::Error::other(e),
        })?;
        for _attempt in 0..3 {
            if create_exclusive(&path, json.as_bytes(), info.token)? {
                return RunLock::held(path, run, info.token);
            }
            let Some((holder, modified)) = read_lock(&path) else {
                // Gone in between, or damaged (the lock is never written in
                // place, so not half-written): a lock of unknown owner is
                // stale only once it is old.
                let age = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|m| SystemTime::now().duration_since(m).ok());
                if age.is_some_and(|a| a > STALE_AFTER) {
                    take_over(&path, None)?;
                    notice(&format!("{run}: took over the unreadable lock {} (older than {} s)", path.display(), STALE_AFTER.as_secs()));
                } else if path.exists() {
                    return Err(RunError::Io {
                        path: path.clone(),
                        what: format!(
                            "the lock of run {run} is unreadable; it is taken over once it is {} s old, or remove it if no process trains this run",
                            STALE_AFTER.as_secs()
                        ),
                        error: std::io::Error::from(std::io::ErrorKind::InvalidData),
                    });
                }
                continue;
            };
            match stale_reason(&holder, modified) {
                Some(why) => {
                    take_over(&path, Some(holder.token))?;
                    notice(&format!(
                        "{run}: took over the stale lock of pid {} on host {} ({why})",
                        holder.pid, holder.host
                    ));
                }
                None => {
                    return Err(RunError::Locked {
                        run: run.to_string(),
                        pid: holder.pid,
                        host: holder.host,
                        since: holder.started_unix,
                        lock: path,
                    })
                }
            }
        }
        Err(RunError::Io {
            path: path.clone(),
            what: "another process keeps taking this lock over".into(),
            error: std::io::Error::from(std::io::ErrorKind::WouldBlock),
        })
    }

    fn held(path: PathBuf, run: &str, token: u64) -> Result<RunLock> {
        let stop = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(AtomicBool::new(false));
        let heartbeat = {
            let (path, stop, lost) = (path.clone(), stop.clone(), lost.clone());
            std::thread::Builder::new()
                .name("tfkd-lock-heartbeat".into())
                .spawn(move || {
                    let mut last = std::time::Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::park_timeout(Duration::from_millis(500));
                        if last.elapsed() >= HEARTBEAT {
                            last = std::time::Instant::now();
                            if !holds(&path, token) {
                                lost.store(true, Ordering::Relaxed);
                                return;
                            }
                            if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                                let _ = f.set_modified(SystemTime::now());
                            }
                        }
                    }
                })
        };
        let heartbeat = match heartbeat {
            Ok(h) => h,
            Err(e) => {
                release(&path, token);
                return Err(RunError::Io { path, what: "cannot start the lock's heartbeat thread".into(), error: e });
            }
        };
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push((path.clone(), token));
        Ok(RunLock { path, run: run.to_string(), token, stop, lost, heartbeat: Some(heartbeat) })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that the lock file still holds this holder's token: call it
    /// before writing into the run directory. Another process can only have
    /// taken it over if it judged this process dead (a lost heartbeat, say
    /// on a frozen node), and then this process must stop writing.
    pub fn verify(&self) -> Result<()> {
        if self.lost.load(Ordering::Relaxed) || !holds(&self.path, self.token) {
            return Err(RunError::LockLost { run: self.run.clone(), lock: self.path.clone() });
        }
        Ok(())
    }
}

/// Whether the lock file at `path` holds `token`.
fn holds(path: &Path, token: u64) -> bool {
    read_lock(path).is_some_and(|(info, _)| info.token == token)
}

/// Removes the lock file at `path` if it still holds `token`.
fn release(path: &Path, token: u64) {
    if holds(path, token) {
        let _ = std::fs::remove_file(path);
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.heartbeat.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).retain(|(_, t)| *t != self.token);
        release(&self.path, self.token);
    }
}

/// Removes a stale lock without racing another taker: the file is renamed to
/// a name of this process's own first, and if what was renamed is not the
/// lock that was judged stale (`judged`: its token, `None` for an
/// unreadable one), another process took it over in between and it is put
/// back. Should a third process have locked the run in that instant, the
/// put-back fails and the process whose lock was moved finds out at its
/// next [`RunLock::verify`] and stops.
fn take_over(path: &Path, judged: Option<u64>) -> Result<()> {
    let mine = path.with_extension(format!("lock.stale-{}-{:x}", std::process::id(), random_token()));
    match std::fs::rename(path, &mine) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path)(e)),
    }
    let taken = read_lock(&mine).map(|(info, _)| info.token);
    if taken != judged {
        let _ = std::fs::hard_link(&mine, path);
    }
    let _ = std::fs::remove_file(&mine);
    Ok(())
}

/// The exit status of a run stopped by a signal after it wrote its resume
/// checkpoint (`EX_TEMPFAIL`): run the same command again with `--resume`
/// or `--auto-resume` and it continues exactly where it stopped. A batch
/// script requeues its task on this status.
pub const EXIT_INTERRUPTED: u8 = 75;

/// How many runs of this process are training now and stop gracefully on a
/// signal ([`StopGuard`]).
static GRACEFUL: AtomicUsize = AtomicUsize::new(0);
/// The signal that asked the running training loops to stop (0: none).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The signal that asked this process to stop, once one has: a training loop
/// checks it after every step, writes its resume checkpoint and returns
/// [`crate::RunError::Interrupted`].
pub fn stop_requested() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// While alive, a signal asks the training loop to stop after its current
/// step instead of ending the process at once.
pub struct StopGuard(());

impl StopGuard {
    /// Marks a training loop as running.
    pub fn new() -> Self {
        GRACEFUL.fetch_add(1, Ordering::SeqCst);
        StopGuard(())
    }
}

impl Default for StopGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        GRACEFUL.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Stops this process cleanly when it is asked to: SIGTERM and SIGUSR1 (what
/// Slurm sends before a time limit or preemption, `--signal`), SIGINT
/// (Ctrl-C) and SIGHUP.
///
/// - While a run is training ([`StopGuard`]), the first signal lets it finish
///   its current step, write its resume checkpoint (mid-epoch: the position
///   in the epoch and the running sums are in `last.safetensors`) and return
///   [`crate::RunError::Interrupted`]; the binaries then exit with
///   [`EXIT_INTERRUPTED`] (75). Resuming continues bit-exactly.
/// - Otherwise, or on a second signal, the process releases its run locks
///   and exits at once with 128 + the signal number (143 for SIGTERM). Every
///   run file is written atomically, so that is as safe as `kill -9`; the run
///   continues from its last checkpoint.
///
/// Call it first thing in `main`, before any other thread starts (the
/// signals are blocked in every thread and received by one of its own).
/// Unix only; a no-op elsewhere.
pub fn release_locks_on_termination() {
    #[cfg(unix)]
    {
        // SAFETY: plain libc calls on a zeroed, then initialised, sigset_t.
        let set = unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
                libc::sigaddset(&mut set, signal);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return;
            }
            set
        };
        let spawned = std::thread::Builder::new().name("tfkd-signals".into()).spawn(move || loop {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is initialised and blocked in every thread.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                return;
            }
            if GRACEFUL.load(Ordering::SeqCst) > 0 && STOP_SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                eprintln!(
                    "tfkd: signal {signal}: finishing the current step and writing a resume checkpoint \
                     (a second signal stops at once)"
                );
                continue;
            }
            let held: Vec<(PathBuf, u64)> = HELD.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for (path, token) in &held {
                release(path, *token);
            }
            eprintln!(
                "tfkd: stopped by signal {signal}; {} run lock(s) released; a run continues from its last checkpoint with --resume",
                held.len()
            );
            std::process::exit(128 + signal);
        });
        if spawned.is_err() {
            // Without the receiving thread, let the signals act as before.
            // SAFETY: unblocks the same set in this thread.
            unsafe {
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            }
        }
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname writes at most that.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
    }
    std::env::var("COMPUTERNAME").or_else(|_| std::env::var("HOSTNAME")).unwrap_or_else(|_| "unknown-host".into())
}

fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The start time of process `pid` in clock ticks since boot (Linux), 0 where
/// unknown.
fn process_start_time(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name (field 2) may hold spaces: count from its ')'.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().nth(19)?.parse().ok()
        })
        .unwrap_or(0)
}

fn random_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> impl FnMut(&str) {
        |_: &str| {}
    }

    #[test]
    fn a_live_lock_refuses_and_names_its_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run-a");
        let held = RunLock::acquire(&dir, "run-a", &mut quiet()).unwrap();
        assert!(lock_path(&dir).is_file());
        let err = RunLock::acquire(&dir, "run-a", &mut quiet()).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        assert!(err.contains(&hostname()), "{err}");
        assert!(err.contains("run-a"), "{err}");
        drop(held);
        assert!(!lock_path(&dir).exists(), "released on drop");
        RunLock::acquire(&dir, "run-a", &mut quiet()).unwrap();
    }

    fn write_lock(dir: &Path, info: &LockInfo, age: Duration) {
        let path = lock_path(dir);
        std::fs::write(&path, serde_json::to_string(info).unwrap()).unwrap();
        let f = std::fs::File::options().append(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - age).unwrap();
    }

    #[test]
    fn stale_locks_are_taken_over_with_a_message() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run-b");
        // A dead process on this host: a pid far above any pid_max.
        let dead = LockInfo { host: hostname(), pid: 0x3fff_fff0, process_start: 1, started_unix: 1, token: 7 };
        write_lock(&dir, &dead, Duration::ZERO);
        let mut messages = Vec::new();
        let lock = RunLock::acquire(&dir, "run-b", &mut |m: &str| messages.push(m.to_string())).unwrap();
        assert!(messages.iter().any(|m| m.contains("no longer running")), "{messages:?}");
        drop(lock);

        // Another host: live while touched recently, stale after STALE_AFTER.
        let remote = LockInfo { host: "node-elsewhere".into(), pid: 1, process_start: 1, started_unix: 1, token: 9 };
        write_lock(&dir, &remote, Duration::from_secs(10));
        let err = RunLock::acquire(&dir, "run-b", &mut quiet()).unwrap_err().to_string();
        assert!(err.contains("node-elsewhere") && err.contains("pid 1"), "{err}");
        write_lock(&dir, &remote, STALE_AFTER + Duration::from_secs(60));
        let mut messages = Vec::new();
        RunLock::acquire(&dir, "run-b", &mut |m: &str| messages.push(m.to_string())).unwrap();
        assert!(messages.iter().any(|m| m.contains("node-elsewhere") && m.contains("not touched")), "{messages:?}");
    }

    #[test]
    fn a_reused_pid_does_not_hold_a_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run-c");
        let me = std::process::id();
        let start = process_start_time(me);
        if start == 0 {
            eprintln!("skipping: no /proc start times on this system");
            return;
        }
        let reused = LockInfo { host: hostname(), pid: me, process_start: start + 1, started_unix: 1, token: 3 };
        write_lock(&dir, &reused, Duration::ZERO);
        let mut messages = Vec::new();
        RunLock::acquire(&dir, "run-c", &mut |m: &str| messages.push(m.to_string())).unwrap();
        assert!(messages.iter().any(|m| m.contains("another process")), "{messages:?}");
    }

    #[test]
    fn unreadable_and_lost_locks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run-e");
        std::fs::write(lock_path(&dir), "").unwrap();
        let err = RunLock::acquire(&dir, "run-e", &mut quiet()).unwrap_err().to_string();
        assert!(err.contains("unreadable") && err.contains("run-e.lock"), "{err}");
        let f = std::fs::File::options().append(true).open(lock_path(&dir)).unwrap();
        f.set_modified(SystemTime::now() - STALE_AFTER - Duration::from_secs(1)).unwrap();
        let mut messages = Vec::new();
        let lock = RunLock::acquire(&dir, "run-e", &mut |m: &str| messages.push(m.to_string())).unwrap();
        assert!(messages.iter().any(|m| m.contains("unreadable")), "{messages:?}");
        lock.verify().unwrap();
        // Another process took it over: the holder finds out before writing.
        let other = LockInfo { host: hostname(), pid: 1, process_start: 0, started_unix: 1, token: 5 };
        write_lock(&dir, &other, Duration::ZERO);
        let err = lock.verify().unwrap_err().to_string();
        assert!(err.contains("run-e") && err.contains("no longer holds"), "{err}");
        drop(lock);
        assert!(holds(&lock_path(&dir), 5), "dropping a lost lock leaves the new holder's file");
    }

    #[test]
    fn moving_aside_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run-d");
        for i in 0..3 {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("config.toml"), format!("{i}")).unwrap();
            let aside = move_aside(&dir, "failed-start").unwrap();
            assert_eq!(std::fs::read_to_string(aside.join("config.toml")).unwrap(), format!("{i}"));
        }
        let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
    }
}
