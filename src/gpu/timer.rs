//! GPU timestamps for benchmarks: mark points in the command stream, read the elapsed
//! nanoseconds between them once the work has run.
use super::Gpu;
use crate::error::{Error, Result};
use std::sync::Arc;

/// Marks in the command stream whose elapsed times are read back after the work has run (GPU
/// timestamps when the device has them, else the host clock).
pub struct GpuTimer {
    set: Option<Arc<wgpu::QuerySet>>,
    capacity: u32,
    next: u32,
    wall: Vec<std::time::Instant>,
}

impl GpuTimer {
    /// A timer with room for `capacity` marks. Falls back to wall clock (with the queue
    /// drained at each mark) when the device has no timestamp queries.
    pub fn new(gpu: &Gpu, capacity: u32) -> GpuTimer {
        let set = gpu.capabilities().timestamps.then(|| {
            Arc::new(gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("equimodal.timer"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity,
            }))
        });
        GpuTimer { set, capacity, next: 0, wall: Vec::new() }
    }

    /// True when times come from GPU timestamps rather than the host clock.
    pub fn is_gpu(&self) -> bool {
        self.set.is_some()
    }

    /// Mark the current point of the command stream.
    pub fn mark(&mut self, gpu: &Gpu) -> Result<()> {
        if self.next >= self.capacity {
            return Err(Error::Other(format!("GpuTimer holds {} marks", self.capacity)));
        }
        match &self.set {
            Some(set) => gpu.push_timestamp(set.clone(), self.next)?,
            None => {
                gpu.synchronize()?;
                self.wall.push(std::time::Instant::now());
            }
        }
        self.next += 1;
        Ok(())
    }

    /// Nanoseconds between consecutive marks; resets the timer.
    pub fn intervals_ns(&mut self, gpu: &Gpu) -> Result<Vec<f64>> {
        let n = self.next;
        self.next = 0;
        if n < 2 {
            self.wall.clear();
            return Ok(Vec::new());
        }
        let ticks: Vec<f64> = match &self.set {
            Some(set) => {
                let buf = gpu.device().create_buffer(&wgpu::BufferDescriptor {
                    label: Some("equimodal.timer.resolve"),
                    size: n as u64 * 8,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                });
                gpu.push_resolve(set.clone(), n, &buf)?;
                let bytes = gpu.read_bytes(&super::BufferRange::whole(&buf), 0, n as u64 * 8)?;
                let period = gpu.queue().get_timestamp_period() as f64;
                bytemuck::pod_collect_to_vec::<u8, u64>(&bytes).iter().map(|&t| t as f64 * period).collect()
            }
            None => {
                let t0 = self.wall[0];
                let v = self.wall.iter().map(|t| t.duration_since(t0).as_nanos() as f64).collect();
                self.wall.clear();
                v
            }
        };
        Ok(ticks.windows(2).map(|w| (w[1] - w[0]).max(0.0)).collect())
    }
}
