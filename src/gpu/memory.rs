//! Device memory: tensor storage from the pool, its accounting, and the canary test mode
//! that checks the slack beyond every tensor for out-of-range writes.
use super::kernel::{Access, Kernel};
use super::shaders::Shader;
use super::pool::{BufferRange, PoolStats, Storage, Take};
use super::Gpu;
use crate::error::{Error, Result};
use std::sync::Arc;

/// Canary mode (`shaders/canary.wgsl`): fill and check the slack of pooled buffers.
const K_CANARY_FILL: Kernel = Kernel::new(Shader::Canary, "canary_fill", &[Access::ReadWrite, Access::ReadWrite], &CanaryParams::LAYOUT);
const K_CANARY_CHECK: Kernel = Kernel::new(Shader::Canary, "canary_check", &[Access::ReadWrite, Access::ReadWrite], &CanaryParams::LAYOUT);
/// count, serial, word, value, first slack word (u32 each), padded
pub(super) const CANARY_REPORT_BYTES: u64 = 32;

super::gpu_params! {
    /// The word range a canary launch fills or checks, and the owner's allocation number.
    struct CanaryParams as "Params" {
        start: u32,
        end: u32,
        serial: u32,
        _p0: u32,
    }
}

/// Every kernel this module launches (for the interface test).
pub(crate) const KERNELS: &[Kernel] = &[K_CANARY_FILL, K_CANARY_CHECK];

impl Gpu {
    /// Free blocks per size, (bytes, count), largest total first: where the pool's
    /// footprint beyond live tensors sits.
    pub fn memory_cached_by_size(&self) -> Vec<(u64, usize)> {
        self.0.pool.lock().map(|p| p.cached_by_size()).unwrap_or_default()
    }
    /// Buffer pool statistics (bytes in use and cached).
    pub fn memory(&self) -> PoolStats {
        self.0.pool.lock().map(|p| p.stats).unwrap_or_default()
    }
    /// Start new high-water marks (`peak_allocated`, `peak_reserved`) from the current
    /// figures (PyTorch's `reset_peak_memory_stats`).
    pub fn reset_peak_memory(&self) {
        if let Ok(mut p) = self.0.pool.lock() {
            p.stats.reset_peaks();
        }
    }
    /// The most bytes the pool may hold from the driver ([`GpuOptions::memory_limit`](super::GpuOptions)).
    pub fn memory_limit(&self) -> Option<u64> {
        Some(self.0.memory_limit.load(std::sync::atomic::Ordering::Relaxed)).filter(|&l| l != u64::MAX)
    }
    /// Change the memory limit (`None`: the device's own). Buffers already held stay; the
    /// limit applies to the next new buffer.
    pub fn set_memory_limit(&self, limit: Option<u64>) {
        self.0.memory_limit.store(limit.unwrap_or(u64::MAX), std::sync::atomic::Ordering::Relaxed);
    }
    /// Release wholly free segments back to the driver (the trainer calls this where a phase
    /// ends: after evaluation, after the work before an epoch such as AIM's prototype fitting).
    pub fn trim_memory(&self) {
        if let Ok(mut p) = self.0.pool.lock() {
            p.trim();
        }
    }

    /// Take a block of at least `bytes` from the pool.
    pub fn alloc(&self, bytes: u64) -> Result<Arc<Storage>> {
        let max = self.0.limits.max_storage_buffer_binding_size as u64;
        if bytes > max {
            return Err(Error::Other(format!(
                "tensor of {bytes} bytes exceeds the device's max storage binding ({max} bytes)"
            )));
        }
        let bytes = bytes.div_ceil(4) * 4;
        let _canary = match self.0.canary {
            Some(_) => Some(self.0.canary_lock.lock().map_err(|_| Error::Other("canary lock poisoned".into()))?),
            None => None,
        };
        // Canary mode: at least 16 bytes of slack, so that even a write the runtime bounds
        // checks clamp to the binding's last word lands on the sentinel.
        let slack = if self.0.canary.is_some() { 16 } else { 0 };
        let binding = (bytes + slack).clamp(4, max.max(4));
        let mut settled = false;
        let taken = loop {
            let mut pool = self.0.pool.lock().map_err(|_| Error::Other("buffer pool poisoned".into()))?;
            match pool.take(&self.0.device, bytes, binding, self.memory_limit(), settled)? {
                Take::Block(taken) => break taken,
                Take::Settle => {
                    // Free segments are folded into a new one: wait until no work uses them.
                    // This happens while the pool grows (the first steps), not once it is flat.
                    drop(pool);
                    self.synchronize()?;
                    settled = true;
                }
            }
        };
        if self.0.canary.is_some() {
            // In recording order: the slack of blocks freed since the last take is checked
            // before any of their memory gets a new owner, so nothing a kernel wrote there
            // goes unseen.
            for f in &taken.to_check {
                self.canary_launch(&K_CANARY_CHECK, &f.range, f.bytes, f.serial)?;
            }
            self.canary_launch(&K_CANARY_FILL, &taken.range, bytes, taken.serial)?;
        }
        Ok(Arc::new(Storage { range: Some(taken.range), id: Some(taken.id), bytes, serial: taken.serial, pool: self.0.pool.clone() }))
    }

    /// Fill or check the words `bytes/4 ..` to the end of `range` (canary mode).
    fn canary_launch(&self, k: &Kernel, range: &BufferRange, bytes: u64, serial: u64) -> Result<()> {
        let Some(report) = &self.0.canary else { return Ok(()) };
        let (mut start, end) = ((bytes / 4) as usize, (range.size() / 4) as usize);
        // one launch covers at most max_groups^3 workgroups of 256 words (the folded grid)
        let m = self.0.max_groups as usize;
        let per_launch = m.saturating_mul(m).saturating_mul(m).saturating_mul(256);
        let report = BufferRange::whole(report);
        while start < end {
            let stop = end.min(start.saturating_add(per_launch));
            let p: [u32; 4] = [start as u32, stop as u32, serial as u32, 0];
            let groups = super::grid(self, stop - start, 256);
            self.dispatch(k, &[], bytemuck::cast_slice(&p), &[range, &report], groups)?;
            start = stop;
        }
        Ok(())
    }

    /// Canary mode ([`GpuOptions::pool_canary`]): check the slack of every pooled buffer
    /// (live tensors, cached buffers, and buffers reused since the last check, which were
    /// checked when they were handed out again) and fail if a kernel wrote into any of it.
    /// Resets the report. A no-op returning `Ok` outside canary mode.
    ///
    /// [`GpuOptions::pool_canary`]: super::GpuOptions::pool_canary
    pub fn check_canaries(&self) -> Result<()> {
        let Some(report) = &self.0.canary else { return Ok(()) };
        {
            let _canary = self.0.canary_lock.lock().map_err(|_| Error::Other("canary lock poisoned".into()))?;
            let slots = self.0.pool.lock().map_err(|_| Error::Other("buffer pool poisoned".into()))?.all_slots();
            for (range, bytes, serial) in &slots {
                self.canary_launch(&K_CANARY_CHECK, range, *bytes, *serial)?;
            }
        }
        let report = BufferRange::whole(report);
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&self.read_bytes(&report, 0, CANARY_REPORT_BYTES)?);
        self.clear(&report, 0, CANARY_REPORT_BYTES)?;
        if words[0] > 0 {
            return Err(Error::Other(format!(
                "pool canary: {} word(s) of slack beyond a tensor were overwritten (a kernel wrote past the end \
                 of its output); first: allocation #{}, word {} (byte {}; the tensor ends at byte {}) holds 0x{:08x}",
                words[0],
                words[1],
                words[2],
                words[2] as u64 * 4,
                words[4] as u64 * 4,
                words[3]
            )));
        }
        Ok(())
    }

}
