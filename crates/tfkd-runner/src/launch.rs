//! Where this process stands in a multi-process data-parallel run: its rank,
//! the number of processes and where they meet, from the launcher's
//! environment: torchrun's (`RANK`, `WORLD_SIZE`, `MASTER_ADDR`,
//! `MASTER_PORT`) or Slurm's `srun` (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`;
//! not `SLURM_NTASKS`, which a batch script itself also sees, as rank 0 of
//! its job's tasks, without being one of an `srun` step's processes; the
//! meeting host is `MASTER_ADDR`, else the host `srun` was started on,
//! `SLURM_LAUNCH_NODE_IPADDR`, which runs rank 0 under Slurm's default block
//! distribution).

use crate::error::{config_err, Result};

/// The default port rank 0 listens on (torchrun's).
pub const DEFAULT_PORT: u16 = 29500;

/// This process's place in a multi-process run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank, `0..world`.
    pub rank: usize,
    /// The number of processes.
    pub world: usize,
    /// This process's rank on its machine (`LOCAL_RANK`, `SLURM_LOCALID`;
    /// default: `rank`): the GPU it trains on.
    pub local_rank: usize,
    /// `host:port` where rank 0 listens.
    pub address: String,
}

/// The launch described by `var` (an environment lookup), `None` for a
/// single process (no launcher, or one task).
pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
    let number = |name: &str| -> Result<Option<usize>> {
        match var(name) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| config_err(name, format!("{v:?} is not a number"))),
        }
    };
    let (rank, world, rank_var) = match (number("RANK")?, number("WORLD_SIZE")?) {
        (Some(rank), Some(world)) => (rank, world, "RANK"),
        _ => match (number("SLURM_PROCID")?, number("SLURM_STEP_NUM_TASKS")?) {
            (Some(rank), Some(world)) => (rank, world, "SLURM_PROCID"),
            _ => return Ok(None),
        },
    };
    if world <= 1 {
        return Ok(None);
    }
    if rank >= world {
        return Err(config_err(rank_var, format!("rank {rank} is outside a run of {world} processes")));
    }
    let host = var("MASTER_ADDR").or_else(|| var("SLURM_LAUNCH_NODE_IPADDR")).ok_or_else(|| {
        config_err("MASTER_ADDR", "a multi-process run needs the host of rank 0 (export MASTER_ADDR=<host>)")
    })?;
    let port = match var("MASTER_PORT") {
        None => DEFAULT_PORT,
        Some(p) => p.trim().parse().map_err(|_| config_err("MASTER_PORT", format!("{p:?} is not a port")))?,
    };
    let local_rank = match (number("LOCAL_RANK")?, number("SLURM_LOCALID")?) {
        (Some(l), _) | (None, Some(l)) => l,
        (None, None) => rank,
    };
    Ok(Some(Launch { rank, world, local_rank, address: format!("{host}:{port}") }))
}

/// The collective of a launched process: NCCL between GPUs on CUDA (feature
/// `nccl`), else TCP through rank 0. On CUDA, `device` is first moved to the
/// process's local GPU, `cuda:<local_rank>`.
pub fn join(
    launch: &Launch,
    device: &mut crate::device::DeviceSpec,
    timeout: std::time::Duration,
) -> Result<Box<dyn tfkd_core::collective::Collective>> {
    use crate::device::DeviceSpec;
    if let DeviceSpec::Cuda(_) = device {
        *device = DeviceSpec::Cuda(launch.local_rank);
        #[cfg(feature = "nccl")]
        return nccl(launch, *device, timeout);
        #[cfg(not(feature = "nccl"))]
        tracing::warn!(
            "this tfkd was built without the `nccl` feature: the {} processes sum their gradients over TCP through rank 0, \
             which is slow between GPUs; build with `--features nccl`",
            launch.world
        );
    }
    let g = tfkd_core::collective::TcpGroup::join(launch.rank, launch.world, &launch.address, timeout)?;
    Ok(Box::new(g))
}

#[cfg(feature = "nccl")]
fn nccl(
    launch: &Launch,
    device: crate::device::DeviceSpec,
    timeout: std::time::Duration,
) -> Result<Box<dyn tfkd_core::collective::Collective>> {
    let cuda = crate::device::open_device(device)?;
    let g = tfkd_core::collective::NcclGroup::join(launch.rank, launch.world, &cuda, &launch.address, timeout)?;
    Ok(Box::new(g))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn launchers_are_read_from_their_environment() {
        assert_eq!(from_env(env(&[])).unwrap(), None);
        assert_eq!(from_env(env(&[("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "1")])).unwrap(), None);
        // A batch script of a 4-task job is not one of 4 processes (seen on
        // Slurm 22.05: it has SLURM_PROCID=0 and SLURM_NTASKS=4, while only
        // srun's processes have SLURM_STEP_NUM_TASKS).
        assert_eq!(from_env(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4")])).unwrap(), None);
        let torchrun = [("RANK", "1"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "node7"), ("MASTER_PORT", "1234")];
        assert_eq!(
            from_env(env(&torchrun)).unwrap(),
            Some(Launch { rank: 1, world: 4, local_rank: 1, address: "node7:1234".into() })
        );
        let srun = [
            ("SLURM_PROCID", "2"),
            ("SLURM_STEP_NUM_TASKS", "3"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_LAUNCH_NODE_IPADDR", "10.0.0.5"),
        ];
        assert_eq!(
            from_env(env(&srun)).unwrap(),
            Some(Launch { rank: 2, world: 3, local_rank: 0, address: "10.0.0.5:29500".into() })
        );
        let err = from_env(env(&[("RANK", "4"), ("WORLD_SIZE", "4"), ("MASTER_ADDR", "h")])).unwrap_err().to_string();
        assert!(err.contains("RANK") && err.contains("rank 4"), "{err}");
        let err = from_env(env(&[("RANK", "0"), ("WORLD_SIZE", "2")])).unwrap_err().to_string();
        assert!(err.contains("MASTER_ADDR"), "{err}");
        let err = from_env(env(&[("RANK", "x"), ("WORLD_SIZE", "2")])).unwrap_err().to_string();
        assert!(err.contains("RANK") && err.contains("\"x\""), "{err}");
    }
}
