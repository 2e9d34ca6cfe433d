//! GPU memory: keep what a training step frees for the next step, make
//! buffers without their two CUDA events, and read the peaks (`--features
//! cuda`).
//!
//! candle's CUDA buffers come from the device's stream-ordered memory pool
//! (`cuMemAllocAsync`). With the pool's default release threshold of 0 the
//! driver hands every freed byte back to the system at each synchronisation
//! (tfkd reads the loss every step), so the next step maps its memory
//! again: an allocation storm per step. [`retain_freed_memory`] raises the
//! threshold so the pool keeps its memory, as PyTorch's caching allocator
//! does. [`pool_usage`] reads the pool's high-water marks: bytes in use
//! (PyTorch's `max_memory_allocated`) and bytes held (`max_memory_reserved`).

use candle_core::cuda_backend::cudarc::driver::{result, sys};
use candle_core::{Device, Result};

/// The pool's peaks since the last [`reset_pool_peaks`], in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    /// The most bytes in use by buffers at once (`USED_MEM_HIGH`).
    pub used_high: u64,
    /// The most bytes the pool held at once (`RESERVED_MEM_HIGH`).
    pub reserved_high: u64,
}

/// `device`'s default memory pool, if it is a GPU whose buffers come from
/// it.
fn pool(device: &Device) -> Result<Option<sys::CUmemoryPool>> {
    let Device::Cuda(dev) = device else { return Ok(None) };
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    if !ctx.has_async_alloc() {
        return Ok(None);
    }
    ctx.bind_to_thread().map_err(candle_core::Error::wrap)?;
    // SAFETY: the context's own device.
    let pool = unsafe { result::device::get_default_mem_pool(ctx.cu_device()) }.map_err(candle_core::Error::wrap)?;
    Ok(Some(pool))
}

fn set(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute, mut value: u64) -> Result<()> {
    // SAFETY: a valid pool; these attributes are cuuint64_t.
    unsafe { result::mem_pool::set_attribute(pool, attr, (&mut value as *mut u64).cast()) }.map_err(candle_core::Error::wrap)
}

fn get(pool: sys::CUmemoryPool, attr: sys::CUmemPool_attribute) -> Result<u64> {
    let mut value = 0u64;
    // SAFETY: a valid pool; these attributes are cuuint64_t.
    unsafe { result::mem_pool::get_attribute(pool, attr, (&mut value as *mut u64).cast()) }.map_err(candle_core::Error::wrap)?;
    Ok(value)
}

/// Makes `device`'s memory pool keep freed memory for reuse instead of
/// returning it at every synchronisation. Nothing to do on other devices.
pub fn retain_freed_memory(device: &Device) -> Result<()> {
    match pool(device)? {
        Some(p) => set(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX),
        None => Ok(()),
    }
}

/// Makes cudarc allocate `device`'s buffers without their read and write
/// CUDA events. By default every buffer gets two (`cuEventCreate` twice
/// when a candle op allocates its output, `cuEventDestroy` twice when the
/// buffer drops: four driver calls per op, PyTorch makes none), which
/// cudarc uses only to order a buffer's uses between two streams of one
/// context. candle runs each thread's work on one stream and tfkd makes no
/// other, so they are never waited on. Nothing to do on other devices, or
/// where the context already has streams of its own (their buffers keep
/// their events).
pub fn skip_buffer_events(device: &Device) -> Result<()> {
    let Device::Cuda(dev) = device else { return Ok(()) };
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    if ctx.is_in_multi_stream_mode() {
        return Ok(());
    }
    // SAFETY: cudarc's events order a buffer between streams of the
    // context, and it has none but candle's (checked above; tfkd creates no
    // stream): without them, every use stays ordered by its one stream.
    unsafe { ctx.disable_event_tracking() };
    Ok(())
}

/// The pool's high-water marks, or `None` off the GPU (or without a pool).
pub fn pool_usage(device: &Device) -> Result<Option<PoolUsage>> {
    let Some(p) = pool(device)? else { return Ok(None) };
    Ok(Some(PoolUsage {
        used_high: get(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
        reserved_high: get(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
    }))
}

/// Restarts the high-water marks from the current use.
pub fn reset_pool_peaks(device: &Device) -> Result<()> {
    let Some(p) = pool(device)? else { return Ok(()) };
    set(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
    set(p, sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH, 0)
}
