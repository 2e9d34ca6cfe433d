//! The C allocator's settings for training processes.
//!
//! A training step allocates and frees a fresh buffer for nearly every op.
//! glibc serves buffers above its adaptive threshold (128 KiB at first) with
//! `mmap` and returns them with `munmap`, so every step page-faults its
//! buffers in again (13 % of a GoogLeNet step on the CPU in a profile), and
//! in a process that trains several runs at once (`reproduce-table
//! --jobs`), `mmap`/`munmap` serialise the threads on the kernel's
//! address-space lock. Raising the threshold to glibc's maximum (32 MiB)
//! keeps such buffers in the heap for reuse, and a high trim threshold keeps
//! freed memory for the next step. Buffers above 32 MiB (ResNet18's first
//! activations at batch 128) would still be mapped afresh: `M_MMAP_MAX = 0`
//! serves them from the heap too (a ResNet18 step on 2 threads: 3.3× fewer
//! page faults, system time 3.3 → 1.0 s per run of `tfkd bench-step`, the
//! same peak memory). glibc still maps what a thread's arena cannot grow to
//! hold. Only the binaries call this; it changes speed and peak memory,
//! never results.

/// Tunes glibc's `malloc` for many short-lived buffers (Linux with glibc;
/// a no-op elsewhere). Call first thing in `main`, before other threads.
pub fn tune_for_training() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets allocator parameters; called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
            libc::mallopt(libc::M_MMAP_MAX, 0);
        }
    }
}
