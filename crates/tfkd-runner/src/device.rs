//! `--device cpu|cuda[:N]|metal`, through the crates' `cuda` / `metal` features.

use crate::error::{config_err, Result};
use candle_core::Device;

/// Which device a config names, before it is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The host CPU.
    Cpu,
    /// CUDA device N.
    Cuda(usize),
    /// The default Metal device.
    Metal,
}

/// Parses `cpu`, `cuda`, `cuda:N` or `metal`.
pub fn parse_device(text: &str) -> Result<DeviceSpec> {
    match text.trim() {
        "cpu" => Ok(DeviceSpec::Cpu),
        "metal" => Ok(DeviceSpec::Metal),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(DeviceSpec::Cuda)
            .ok_or_else(|| config_err("device", format!("{other:?} is not one of cpu, cuda, cuda:N, metal"))),
    }
}

/// Opens the device; a device this build was compiled without is a clear error.
pub fn open_device(text: &str) -> Result<Device> {
    let device = match parse_device(text)? {
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda(n) => Device::new_cuda(n).map_err(|e| {
            config_err("device", format!("cannot open cuda:{n} ({e}); build with `--features cuda` on a machine with CUDA"))
        })?,
        DeviceSpec::Metal => Device::new_metal(0).map_err(|e| {
            config_err("device", format!("cannot open metal ({e}); build with `--features metal` on macOS"))
        })?,
    };
    Ok(device)
}
