//! Profiling mode (`EQUIMODAL_PROFILE`): every launch in its own pass between two
//! timestamps; the flush waits and adds each launch's GPU time to its kernel's total.
use super::record::{encode_transfer, Batch, Cmd};
use super::Gpu;
use crate::error::Result;
use std::sync::atomic::Ordering;

impl Gpu {
    /// The profiling variant of the flush's encode-and-submit: launches get a pass each,
    /// between two timestamps; other commands are encoded as usual (timestamps of
    /// benchmarks are dropped: the profile replaces them). Waits for the GPU.
    pub(super) fn submit_profiled(
        &self,
        mut enc: wgpu::CommandEncoder,
        cmds: Vec<Cmd>,
        uniform: Option<&wgpu::Buffer>,
        guard: std::sync::MutexGuard<'_, Batch>,
    ) -> Result<()> {
        let n = cmds.iter().filter(|c| matches!(c, Cmd::Dispatch { .. })).count() as u32;
        let set = self.0.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("equimodal.profile"),
            ty: wgpu::QueryType::Timestamp,
            count: (2 * n).max(2),
        });
        let mut names = Vec::new();
        for c in &cmds {
            let Cmd::Dispatch { pipeline, binds, groups } = c else {
                encode_transfer(&mut enc, c);
                continue;
            };
            let bg = self.bind_group(pipeline, binds, uniform);
            let i = names.len() as u32;
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                    query_set: &set,
                    beginning_of_pass_write_index: Some(2 * i),
                    end_of_pass_write_index: Some(2 * i + 1),
                }),
            });
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, &bg, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
            drop(pass);
            names.push(if self.0.profile_grid {
                format!("{} [{}x{}x{}]", pipeline.name, groups[0], groups[1], groups[2])
            } else {
                pipeline.name.clone()
            });
        }
        let resolve = self.0.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("equimodal.profile.resolve"),
            size: (16 * n as u64).max(16),
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        if n > 0 {
            enc.resolve_query_set(&set, 0..2 * n, &resolve, 0);
        }
        self.0.queue.submit(Some(enc.finish()));
        self.0.submits.fetch_add(1, Ordering::Relaxed);
        drop(guard);
        if n == 0 {
            return self.check_error();
        }
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&self.read_bytes(&super::BufferRange::whole(&resolve), 0, 16 * n as u64)?);
        self.add_to_profile(names, &ticks);
        self.check_error()
    }

    /// Add each launch's time (begin and end ticks at `2i`, `2i + 1`) to its kernel's total.
    fn add_to_profile(&self, names: Vec<String>, ticks: &[u64]) {
        let period = self.0.queue.get_timestamp_period() as f64;
        let Some(Ok(mut map)) = self.0.profile.as_ref().map(|p| p.lock()) else { return };
        for (i, name) in names.into_iter().enumerate() {
            let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
            let e = map.entry(name).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += ns;
        }
    }

    /// Per-kernel GPU time collected in profiling mode, most expensive first:
    /// (kernel, launches, total ms).
    pub fn profile_report(&self) -> Vec<(String, u64, f64)> {
        let Some(p) = &self.0.profile else { return Vec::new() };
        let Ok(map) = p.lock() else { return Vec::new() };
        let mut v: Vec<(String, u64, f64)> = map.iter().map(|(k, (c, ns))| (k.clone(), *c, ns / 1e6)).collect();
        v.sort_by(|a, b| b.2.total_cmp(&a.2));
        v
    }
}
