//! Size-bucketed buffer pool. Tensor storage comes from here and goes back on drop, so
//! memory in use stays flat across training steps.
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Storage buffers are rounded up to a bucket: powers of two split into quarters
/// (at most 25 % waste), never below 256 bytes.
pub fn bucket_size(bytes: u64) -> u64 {
    let b = bytes.max(256);
    let p = 63 - (b - 1).leading_zeros() as u64; // floor(log2(b-1))
    let base = 1u64 << p; // base < b <= 2*base
    let quarter = (base / 4).max(1);
    b.div_ceil(quarter) * quarter
}

/// Memory accounting of the pool. `allocated` and `reserved` (with their high-water marks)
/// are the figures PyTorch reports as `memory_allocated` / `memory_reserved` and
/// `max_memory_allocated` / `max_memory_reserved`: the bytes live tensors asked for, and
/// the bytes held from the driver.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes held by live tensors (bucket sizes).
    pub in_use: u64,
    /// Bytes cached in the pool, free for reuse.
    pub cached: u64,
    /// Buffers created since start.
    pub allocations: u64,
    /// Requests served from the cache.
    pub reuses: u64,
    /// Bytes of live tensors, their exact sizes (rounded up to 4).
    pub allocated: u64,
    /// Bytes of buffers held from the driver (`in_use + cached`).
    pub reserved: u64,
    /// High-water mark of `allocated` since the last [`crate::Gpu::reset_peak_memory`].
    pub peak_allocated: u64,
    /// High-water mark of `reserved` since the last [`crate::Gpu::reset_peak_memory`].
    pub peak_reserved: u64,
}

impl PoolStats {
    fn note_peaks(&mut self) {
        self.reserved = self.in_use + self.cached;
        self.peak_allocated = self.peak_allocated.max(self.allocated);
        self.peak_reserved = self.peak_reserved.max(self.reserved);
    }
    /// Start new high-water marks from the current figures.
    pub(crate) fn reset_peaks(&mut self) {
        self.peak_allocated = self.allocated;
        self.peak_reserved = self.reserved;
    }
}

/// A pooled buffer and the tensor bytes its last owner used (what the canary check of the
/// slack beyond them needs).
pub(crate) struct Slot {
    pub(crate) buffer: wgpu::Buffer,
    /// Bytes of the tensor that owned the buffer (rounded up to 4).
    pub(crate) bytes: u64,
    /// Allocation number of that owner (for canary reports).
    pub(crate) serial: u64,
}

pub(crate) struct BufferPool {
    free: HashMap<u64, Vec<Slot>>,
    pub(crate) stats: PoolStats,
    /// Canary mode: every live buffer by allocation serial (buffer, tensor bytes, size), so
    /// a check can scan the slack of live tensors too.
    pub(crate) live: Option<HashMap<u64, (wgpu::Buffer, u64, u64)>>,
    next_serial: u64,
}

/// What [`BufferPool::take`] hands out.
pub(crate) struct Taken {
    pub(crate) buffer: wgpu::Buffer,
    pub(crate) size: u64,
    pub(crate) serial: u64,
    /// The previous owner of a reused buffer: (tensor bytes, serial).
    pub(crate) prev: Option<(u64, u64)>,
}

impl BufferPool {
    pub(crate) fn new(canary: bool) -> Self {
        BufferPool { free: HashMap::new(), stats: PoolStats::default(), live: canary.then(HashMap::new), next_serial: 1 }
    }
    /// A buffer of at least `bytes` (`size`, its bucket); `bytes` is recorded as the tensor
    /// length (canary mode). A new buffer that would take the bytes held from the driver past
    /// `limit`, or that the driver refuses for lack of memory, first releases every cached
    /// buffer and tries again (PyTorch's caching allocator does the same); if it still does
    /// not fit, the error says how much was asked for, held and live.
    pub(crate) fn take(&mut self, device: &wgpu::Device, bytes: u64, size: u64, limit: Option<u64>) -> Result<Taken> {
        let reused = self.free.get_mut(&size).and_then(|v| v.pop());
        let (buffer, prev) = match reused {
            Some(s) => {
                self.stats.cached -= size;
                self.stats.reuses += 1;
                (s.buffer, Some((s.bytes, s.serial)))
            }
            None => (self.create_or_trim(device, size, limit)?, None),
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        self.stats.in_use += size;
        self.stats.allocated += bytes;
        if let Some(live) = &mut self.live {
            live.insert(serial, (buffer.clone(), bytes, size));
        }
        self.stats.note_peaks();
        Ok(Taken { buffer, size, serial, prev })
    }

    /// A new buffer of `size` bytes, releasing the cache once if the limit or the driver says
    /// no.
    fn create_or_trim(&mut self, device: &wgpu::Device, size: u64, limit: Option<u64>) -> Result<wgpu::Buffer> {
        for attempt in 0..2 {
            let held = self.stats.in_use + self.stats.cached;
            let within = limit.is_none_or(|l| held + size <= l);
            if within {
                let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                let buffer = self.create(device, size);
                match pollster::block_on(scope.pop()) {
                    None => return Ok(buffer),
                    Some(e) if attempt == 1 => return Err(self.out_of_memory(size, limit, &e.to_string())),
                    Some(_) => {}
                }
            } else if attempt == 1 {
                return Err(self.out_of_memory(size, limit, "the memory limit (GpuOptions::memory_limit) would be exceeded"));
            }
            self.trim();
        }
        unreachable!("the second attempt returns")
    }

    fn create(&mut self, device: &wgpu::Device, size: u64) -> wgpu::Buffer {
        self.stats.allocations += 1;
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("equimodal.storage"),
            size,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    fn out_of_memory(&self, size: u64, limit: Option<u64>, why: &str) -> Error {
        let s = &self.stats;
        Error::OutOfMemory {
            bytes: size,
            msg: format!(
                "{why}; held from the driver: {} bytes ({} in live tensors' buffers, cache released), limit: {}",
                s.in_use + s.cached,
                s.in_use,
                limit.map_or("the device's".to_string(), |l| format!("{l} bytes"))
            ),
        }
    }
    pub(crate) fn give(&mut self, buffer: wgpu::Buffer, size: u64, bytes: u64, serial: u64) {
        self.stats.in_use -= size;
        self.stats.cached += size;
        self.stats.allocated -= bytes;
        if let Some(live) = &mut self.live {
            live.remove(&serial);
        }
        self.free.entry(size).or_default().push(Slot { buffer, bytes, serial });
    }
    /// Canary mode: every pooled buffer, live or free, as (buffer, tensor bytes, size, serial).
    pub(crate) fn all_slots(&self) -> Vec<(wgpu::Buffer, u64, u64, u64)> {
        let mut v: Vec<(wgpu::Buffer, u64, u64, u64)> = Vec::new();
        if let Some(live) = &self.live {
            v.extend(live.iter().map(|(&serial, (b, bytes, size))| (b.clone(), *bytes, *size, serial)));
        }
        for (&size, slots) in &self.free {
            v.extend(slots.iter().map(|s| (s.buffer.clone(), s.bytes, size, s.serial)));
        }
        v
    }
    /// Cached buffers per bucket size: (size, count), largest total first.
    pub(crate) fn cached_by_size(&self) -> Vec<(u64, usize)> {
        let mut v: Vec<(u64, usize)> = self.free.iter().filter(|(_, l)| !l.is_empty()).map(|(k, l)| (*k, l.len())).collect();
        v.sort_by(|a, b| (b.0 * b.1 as u64).cmp(&(a.0 * a.1 as u64)));
        v
    }
    /// Drop every cached buffer (memory goes back to the driver).
    pub(crate) fn trim(&mut self) {
        self.free.clear();
        self.stats.cached = 0;
        self.stats.note_peaks();
    }
}

/// A pooled GPU buffer. Returned to the pool when the last reference drops.
pub struct Storage {
    pub(crate) buffer: Option<wgpu::Buffer>,
    pub(crate) size: u64,
    /// Bytes the tensor uses (rounded up to 4); the rest up to `size` is slack.
    pub(crate) bytes: u64,
    /// Allocation number (canary reports name the buffer by it).
    pub(crate) serial: u64,
    pub(crate) pool: Arc<Mutex<BufferPool>>,
}

impl Storage {
    /// The underlying wgpu buffer.
    pub fn buffer(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("storage buffer present until drop")
    }
    /// Size of the buffer in bytes: its pool bucket, at least the tensor's bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            if let Ok(mut p) = self.pool.lock() {
                p.give(b, self.size, self.bytes, self.serial);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bucket_size;
    #[test]
    fn buckets_cover_and_waste_little() {
        for b in [1u64, 255, 256, 257, 1000, 1024, 1025, 4097, 1 << 20, (1 << 20) + 1, 123_456_789] {
            let s = bucket_size(b);
            assert!(s >= b && s >= 256, "{b} -> {s}");
            if b > 256 {
                assert!((s as f64) <= b as f64 * 1.25 + 1.0, "{b} -> {s}");
            }
        }
        assert_eq!(bucket_size(1024), 1024);
        assert_eq!(bucket_size(1025), 1280);
    }
}
