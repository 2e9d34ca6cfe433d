//! With `--features cuda`: compiles `src/cuda/kernels.cu` to PTX with nvcc
//! (the one candle's kernels are built with: `$NVCC`, else
//! `$CUDA_HOME/bin/nvcc`, else `nvcc` on the path), for the compute
//! capability in `CUDA_COMPUTE_CAP` (default 75, the oldest CUDA 13 builds
//! for; the driver compiles the PTX for newer GPUs when it loads it).
//! Without the feature it does nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/cuda/kernels.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var("NVCC").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| {
        match std::env::var("CUDA_HOME") {
            Ok(home) if !home.is_empty() => format!("{home}/bin/nvcc"),
            _ => "nvcc".into(),
        }
    });
    let cap = std::env::var("CUDA_COMPUTE_CAP").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "75".into());
    let cap: String = cap.chars().filter(char::is_ascii_digit).collect();
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("--gpu-architecture=compute_{cap}"), "-o"])
        .arg(&out)
        .arg("src/cuda/kernels.cu")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("tfkd-core: `{nvcc}` failed ({s}) compiling src/cuda/kernels.cu for compute_{cap}"),
        Err(e) => panic!(
            "tfkd-core: cannot run `{nvcc}` ({e}): `--features cuda` needs the CUDA compiler (set NVCC or CUDA_HOME, \
             or use ../shared/gpu/build-cuda.sh)"
        ),
    }
}
