//! Command recording and submission. Work is recorded, not executed: every kernel launch,
//! copy and clear is appended to the batch, and the batch is encoded and submitted in one
//! go when the host needs a value (a readback), when [`Gpu::flush`] is called, or when the
//! batch grows long. Commands keep their recording order, so buffers can be reused from the
//! pool as soon as the tensor that owned them is dropped.
use super::kernel::{Access, CachedPipeline, Kernel};
use super::pool::BufferRange;
use super::shaders::Shader;
use super::Gpu;
use crate::error::{Error, Result};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Commands recorded before this many are flushed automatically.
const AUTO_FLUSH: usize = 2048;

pub(crate) enum Bind {
    Uniform { offset: u64, size: u64 },
    Buffer(BufferRange),
}

/// Word copy within one buffer (`shaders/copy.wgsl`), where a buffer-to-buffer copy is not
/// allowed.
const K_COPY: Kernel = Kernel::new(Shader::Copy, "copy_words", &[Access::Read, Access::ReadWrite], &CopyParams::LAYOUT);

super::gpu_params! {
    /// First source and destination words (relative to their bindings) and the word count.
    struct CopyParams as "Params" {
        src: u32,
        dst: u32,
        n: u32,
        _p0: u32,
    }
}

/// The kernels this module launches (for the interface test).
pub(crate) const KERNELS: &[Kernel] = &[K_COPY];

pub(crate) enum Cmd {
    Dispatch { pipeline: Arc<CachedPipeline>, binds: Vec<Bind>, groups: [u32; 3] },
    Copy { src: wgpu::Buffer, src_offset: u64, dst: wgpu::Buffer, dst_offset: u64, size: u64 },
    Clear { buffer: wgpu::Buffer, offset: u64, size: u64 },
    Timestamp { set: Arc<wgpu::QuerySet>, index: u32 },
    Resolve { set: Arc<wgpu::QuerySet>, count: u32, dst: wgpu::Buffer },
}

#[derive(Default)]
pub(super) struct Batch {
    pub(super) cmds: Vec<Cmd>,
    /// every launch's uniform parameter block, at aligned offsets
    pub(super) params: Vec<u8>,
}

impl Gpu {
    pub(super) fn check_error(&self) -> Result<()> {
        if let Some(e) = self.0.error.lock().ok().and_then(|s| s.clone()) {
            return Err(Error::DeviceLost(e));
        }
        Ok(())
    }

    fn push(&self, cmd: Cmd) -> Result<()> {
        let n = {
            let mut b = self.0.batch.lock().map_err(|_| Error::Other("command batch poisoned".into()))?;
            b.cmds.push(cmd);
            b.cmds.len()
        };
        if n >= AUTO_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    /// Record one kernel launch. `params` is the uniform block (binding 0), padded here to
    /// a multiple of 16 bytes; `buffers` (tensor ranges) bind to 1..=n in order.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        constants: &[(&str, f64)],
        params: &[u8],
        buffers: &[&BufferRange],
        groups: [u32; 3],
    ) -> Result<()> {
        if buffers.len() != kernel.bindings.len() {
            return Err(Error::Other(format!("kernel {} takes {} buffers, got {}", kernel.name(), kernel.bindings.len(), buffers.len())));
        }
        // the block must be the struct the kernel declares (the WGSL side is checked against
        // that declaration by tests/gpu/kernels.rs)
        if params.len() != kernel.params.size {
            return Err(Error::Other(format!(
                "kernel {} takes a {}-byte `{}` parameter block, got {} bytes",
                kernel.name(),
                kernel.params.size,
                kernel.params.wgsl_struct,
                params.len()
            )));
        }
        // the test cap, when set, is enforced like the adapter's limit: a launch that does not
        // go through the grid logic fails loudly instead of passing unexercised
        let maxg = self.0.max_groups;
        if groups.iter().any(|&g| g > maxg) {
            return Err(Error::Other(format!("kernel {} launch {:?} exceeds {} workgroups per dimension", kernel.name(), groups, maxg)));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let pipeline = {
            let mut c = self.0.cache.lock().map_err(|_| Error::Other("kernel cache poisoned".into()))?;
            c.get(&self.0.device, self.0.checked, kernel, constants)?
        };
        let align = self.0.limits.min_uniform_buffer_offset_alignment.max(16) as usize;
        let n = {
            let mut b = self.0.batch.lock().map_err(|_| Error::Other("command batch poisoned".into()))?;
            let offset = b.params.len().div_ceil(align) * align;
            let size = params.len().max(16).div_ceil(16) * 16;
            b.params.resize(offset + size, 0);
            b.params[offset..offset + params.len()].copy_from_slice(params);
            let mut binds = Vec::with_capacity(buffers.len() + 1);
            binds.push(Bind::Uniform { offset: offset as u64, size: size as u64 });
            binds.extend(buffers.iter().map(|b| Bind::Buffer((*b).clone())));
            b.cmds.push(Cmd::Dispatch { pipeline, binds, groups });
            b.cmds.len()
        };
        self.0.dispatches.fetch_add(1, Ordering::Relaxed);
        if n >= AUTO_FLUSH {
            self.flush()?;
        }
        Ok(())
    }

    /// Record a copy of `size` bytes (a multiple of 4) from `src` at `src_offset` to `dst` at
    /// `dst_offset`, offsets relative to the ranges (in order with kernel launches). Ranges of
    /// one segment are copied by a kernel: WebGPU has no buffer-to-buffer copy within one
    /// buffer.
    pub fn copy(&self, src: &BufferRange, src_offset: u64, dst: &BufferRange, dst_offset: u64, size: u64) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        if src_offset + size > src.size() || dst_offset + size > dst.size() || (src_offset | dst_offset | size) % 4 != 0 {
            return Err(Error::Other(format!(
                "copy of {size} bytes from offset {src_offset} of a {}-byte range to offset {dst_offset} of a {}-byte range \
                 is out of range or not word-aligned",
                src.size(),
                dst.size()
            )));
        }
        if !src.same_buffer(dst) {
            return self.push(Cmd::Copy {
                src: src.buffer().clone(),
                src_offset: src.offset() + src_offset,
                dst: dst.buffer().clone(),
                dst_offset: dst.offset() + dst_offset,
                size,
            });
        }
        let (mut done, words) = (0u64, size / 4);
        // one launch covers at most max_groups^3 workgroups of WG words (the folded grid)
        let m = self.0.max_groups as u64;
        let per_launch = m.saturating_mul(m).saturating_mul(m).saturating_mul(super::WG as u64);
        while done < words {
            let n = (words - done).min(per_launch);
            let p = CopyParams { src: (src_offset / 4 + done) as u32, dst: (dst_offset / 4 + done) as u32, n: n as u32, _p0: 0 };
            self.dispatch(&K_COPY, &[], bytemuck::bytes_of(&p), &[src, dst], super::grid(self, n as usize, super::WG as usize))?;
            done += n;
        }
        Ok(())
    }

    /// Record a zero fill of `size` bytes (rounded up to 4) of `range` from `offset`.
    pub fn clear(&self, range: &BufferRange, offset: u64, size: u64) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        let size = size.div_ceil(4) * 4;
        if offset + size > range.size() || offset % 4 != 0 {
            return Err(Error::Other(format!("clear of {size} bytes at offset {offset} of a {}-byte range", range.size())));
        }
        self.push(Cmd::Clear { buffer: range.buffer().clone(), offset: range.offset() + offset, size })
    }

    /// Upload bytes into `dst` at `offset`, in order with recorded work (through a staging
    /// buffer, so it cannot overtake earlier launches that still use `dst`).
    pub fn upload(&self, dst: &BufferRange, offset: u64, bytes: &[u8]) -> Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let size = (bytes.len() as u64).div_ceil(4) * 4;
        let staging = self.0.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("equimodal.upload"),
            size,
            usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::MAP_WRITE,
            mapped_at_creation: true,
        });
        {
            let mut padded = bytes.to_vec();
            padded.resize(size as usize, 0);
            staging
                .slice(..)
                .get_mapped_range_mut()
                .map_err(|e| Error::DeviceLost(format!("upload staging map: {e:?}")))?
                .copy_from_slice(&padded);
        }
        staging.unmap();
        self.copy(&BufferRange::whole(&staging), 0, dst, offset, size)
    }

    pub(crate) fn push_timestamp(&self, set: Arc<wgpu::QuerySet>, index: u32) -> Result<()> {
        self.push(Cmd::Timestamp { set, index })
    }
    pub(crate) fn push_resolve(&self, set: Arc<wgpu::QuerySet>, count: u32, dst: &wgpu::Buffer) -> Result<()> {
        self.push(Cmd::Resolve { set, count, dst: dst.clone() })
    }

    /// Encode and submit everything recorded so far (does not wait).
    pub fn flush(&self) -> Result<()> {
        // The batch lock is held through encode and submit: two threads flushing at once
        // must submit in recording order (pooled buffers are reused across threads).
        let mut guard = self.0.batch.lock().map_err(|_| Error::Other("command batch poisoned".into()))?;
        let batch = std::mem::take(&mut *guard);
        if batch.cmds.is_empty() {
            return self.check_error();
        }
        let uniform = self.params_buffer(&batch.params)?;
        let mut enc = self.0.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("equimodal.batch") });
        if self.0.profile.is_some() {
            return self.submit_profiled(enc, batch.cmds, uniform.as_ref(), guard);
        }
        let cmds = batch.cmds;
        let mut i = 0;
        while i < cmds.len() {
            i = match &cmds[i] {
                Cmd::Dispatch { .. } => self.encode_dispatch_run(&mut enc, &cmds, i, uniform.as_ref()),
                Cmd::Timestamp { set, index } => {
                    // No pass to attach to: an empty pass marks the point in time.
                    let _pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("equimodal.timestamp"),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: Some(*index),
                            end_of_pass_write_index: None,
                        }),
                    });
                    i + 1
                }
                other => {
                    encode_transfer(&mut enc, other);
                    i + 1
                }
            };
        }
        let index = self.0.queue.submit(Some(enc.finish()));
        self.0.submits.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut q) = self.0.in_flight.lock() {
            q.push_back(index);
            if q.len() > 64 {
                q.pop_front();
            }
        }
        self.check_error()
    }

    /// The uniform buffer holding every launch's parameter block of a batch.
    fn params_buffer(&self, params: &[u8]) -> Result<Option<wgpu::Buffer>> {
        if params.is_empty() {
            return Ok(None);
        }
        let buf = self.0.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("equimodal.params"),
            size: params.len() as u64,
            usage: wgpu::BufferUsages::UNIFORM,
            mapped_at_creation: true,
        });
        buf.slice(..).get_mapped_range_mut().map_err(|e| Error::DeviceLost(format!("params map: {e:?}")))?.copy_from_slice(params);
        buf.unmap();
        Ok(Some(buf))
    }

    /// Encode the run of consecutive launches starting at `cmds[i]` in one compute pass; a
    /// timestamp right after the run is written at the end of that pass. Returns the index
    /// of the first command after what was encoded.
    fn encode_dispatch_run(&self, enc: &mut wgpu::CommandEncoder, cmds: &[Cmd], i: usize, uniform: Option<&wgpu::Buffer>) -> usize {
        let mut j = i;
        while j < cmds.len() && matches!(cmds[j], Cmd::Dispatch { .. }) {
            j += 1;
        }
        let end_ts = match cmds.get(j) {
            Some(Cmd::Timestamp { set, index }) => Some((set.clone(), *index)),
            _ => None,
        };
        let launches: Vec<(&CachedPipeline, wgpu::BindGroup, [u32; 3])> = cmds[i..j]
            .iter()
            .filter_map(|c| match c {
                Cmd::Dispatch { pipeline, binds, groups } => Some((pipeline.as_ref(), self.bind_group(pipeline, binds, uniform), *groups)),
                _ => None,
            })
            .collect();
        let tw = end_ts.as_ref().map(|(set, index)| wgpu::ComputePassTimestampWrites {
            query_set: set,
            beginning_of_pass_write_index: None,
            end_of_pass_write_index: Some(*index),
        });
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("equimodal.pass"), timestamp_writes: tw });
        for (pipeline, bg, groups) in &launches {
            pass.set_pipeline(&pipeline.pipeline);
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
        if end_ts.is_some() {
            j + 1
        } else {
            j
        }
    }

    /// End of a training step: submit what was recorded, and if more than `max_in_flight`
    /// earlier steps are still running on the GPU, wait for the oldest. This bounds the host's
    /// lead (and the driver-side memory of queued work) without a wait inside the step.
    pub fn step_boundary(&self, max_in_flight: usize) -> Result<()> {
        self.flush()?;
        let wait_for = {
            let mut q = self.0.in_flight.lock().map_err(|_| Error::Other("in-flight queue poisoned".into()))?;
            // keep only the newest submission per step boundary
            let last = q.pop_back();
            q.clear();
            let mut steps = self.0.step_marks.lock().map_err(|_| Error::Other("in-flight queue poisoned".into()))?;
            if let Some(l) = last {
                steps.push_back(l);
            }
            if steps.len() > max_in_flight.max(1) {
                steps.pop_front()
            } else {
                None
            }
        };
        if let Some(idx) = wait_for {
            self.0
                .device
                .poll(wgpu::PollType::Wait { submission_index: Some(idx), timeout: None })
                .map_err(|e| Error::DeviceLost(e.to_string()))?;
        } else {
            let _ = self.0.device.poll(wgpu::PollType::Poll);
        }
        self.check_error()
    }

    pub(super) fn bind_group(&self, pipeline: &CachedPipeline, binds: &[Bind], uniform: Option<&wgpu::Buffer>) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = binds
            .iter()
            .enumerate()
            .map(|(k, b)| wgpu::BindGroupEntry {
                binding: k as u32,
                resource: match b {
                    Bind::Uniform { offset, size } => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: uniform.expect("params present"),
                        offset: *offset,
                        size: wgpu::BufferSize::new(*size),
                    }),
                    Bind::Buffer(range) => wgpu::BindingResource::Buffer(range.binding()),
                },
            })
            .collect();
        self.0.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipeline.layout, entries: &entries })
    }
}

/// Encode a copy, clear or query resolve (commands that need no pass); launches and
/// timestamps are encoded by their callers.
pub(super) fn encode_transfer(enc: &mut wgpu::CommandEncoder, cmd: &Cmd) {
    match cmd {
        Cmd::Copy { src, src_offset, dst, dst_offset, size } => enc.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size),
        Cmd::Clear { buffer, offset, size } => enc.clear_buffer(buffer, *offset, Some(*size)),
        Cmd::Resolve { set, count, dst } => enc.resolve_query_set(set, 0..*count, dst, 0),
        Cmd::Dispatch { .. } | Cmd::Timestamp { .. } => {}
    }
}
