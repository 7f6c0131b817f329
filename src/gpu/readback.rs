//! Reading results back to the host, and waiting for the GPU.
use super::pool::BufferRange;
use super::Gpu;
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};

impl Gpu {
    /// Flush and block until the GPU is idle.
    pub fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.0
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.check_error()
    }

    /// Read `size` bytes of `src` from `offset` (relative to the range) back to the host
    /// (flushes and waits).
    pub fn read_bytes(&self, src: &BufferRange, offset: u64, size: u64) -> Result<Vec<u8>> {
        if size == 0 {
            return Ok(Vec::new());
        }
        let padded = size.div_ceil(4) * 4;
        let staging = self.0.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("equimodal.readback"),
            size: padded,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        self.copy(src, offset, &BufferRange::whole(&staging), 0, padded)?;
        self.flush()?;
        let slot: Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>> = Arc::new(Mutex::new(None));
        let s2 = slot.clone();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            if let Ok(mut s) = s2.lock() {
                *s = Some(r);
            }
        });
        self.0
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.check_error()?;
        // Another thread's poll may be running our callback right now: wait for it (bounded).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let result = loop {
            if let Some(r) = slot.lock().ok().and_then(|mut s| s.take()) {
                break r;
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::DeviceLost("readback did not complete within 120 s".into()));
            }
            let _ = self.0.device.poll(wgpu::PollType::Poll);
            std::thread::sleep(std::time::Duration::from_micros(200));
        };
        if let Err(e) = result {
            return Err(Error::DeviceLost(format!("readback map failed: {e}")));
        }
        let data = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| Error::DeviceLost(format!("readback map: {e:?}")))?[..size as usize]
            .to_vec();
        staging.unmap();
        Ok(data)
    }
}
