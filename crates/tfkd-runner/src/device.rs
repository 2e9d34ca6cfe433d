//! `--device cpu|cuda[:N]|metal`, through the crates' `cuda` / `metal` features.

use crate::error::{config_err, Result};
use candle_core::Device;

/// Which device a config names, before it is opened. In TOML and on the
/// command line it is written `cpu`, `cuda`, `cuda:N` or `metal`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The host CPU.
    #[default]
    Cpu,
    /// CUDA device N.
    Cuda(usize),
    /// The default Metal device.
    Metal,
}

impl DeviceSpec {
    /// Whether this is the CPU.
    pub fn is_cpu(self) -> bool {
        self == DeviceSpec::Cpu
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(0) => write!(f, "cuda"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal => write!(f, "metal"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = crate::RunError;
    fn from_str(text: &str) -> Result<Self> {
        parse_device(text)
    }
}

impl serde::Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_device(&text).map_err(serde::de::Error::custom)
    }
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
pub fn open_device(spec: DeviceSpec) -> Result<Device> {
    let device = match spec {
        DeviceSpec::Cpu => Device::Cpu,
        DeviceSpec::Cuda(n) => {
            let device = Device::new_cuda(n).map_err(|e| {
                config_err("device", format!("cannot open cuda:{n} ({e}); build with `--features cuda` on a machine with CUDA"))
            })?;
            // Keep freed GPU memory for the next step (no per-step
            // remapping), and allocate without per-buffer events.
            #[cfg(feature = "cuda")]
            tfkd_core::gpu_memory::retain_freed_memory(&device)
                .and_then(|()| tfkd_core::gpu_memory::skip_buffer_events(&device))
                .map_err(|e| config_err("device", format!("cuda:{n}: cannot configure its memory pool ({e})")))?;
            device
        }
        DeviceSpec::Metal => Device::new_metal(0).map_err(|e| {
            config_err("device", format!("cannot open metal ({e}); build with `--features metal` on macOS"))
        })?,
    };
    Ok(device)
}
