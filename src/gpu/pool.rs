//! The caching allocator. Tensor storage is a range of a larger device buffer (a segment),
//! PyTorch's caching allocator in miniature: a request takes the smallest free block that
//! fits (best fit), splits off what it does not need, and on release merges with free
//! neighbours, so memory a tensor of one size gave back serves tensors of any other size.
//! Segments are only created when no free block fits, and then absorb the pool's wholly free
//! segments ([`Take::Settle`]); otherwise they are released only by [`BufferPool::trim`]. So
//! memory held stays flat across training steps once the first steps have found their blocks.
//!
//! Two pools, as in PyTorch: blocks up to [`SMALL_BLOCK`] and larger ones are carved from
//! segments of their own pool, each new segment a share of what its pool holds (or the
//! request's size, if larger). Keeping the two apart stops small, long-lived tensors (biases,
//! optimizer scalars) from pinning the middle of large free ranges. Why this design and not
//! the alternatives (size buckets, no folding, a plan from the first step's trace):
//! `docs/design.md`.
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// Blocks up to this size come from the small pool's shared segments.
pub const SMALL_BLOCK: u64 = 1 << 20;
/// A new small-pool segment is this fraction of the memory the small pool already holds
/// (so the unused tail of the newest segment stays a small share of what is held), within
/// [`SMALL_SEGMENT_MIN`, `SMALL_SEGMENT_MAX`]. Measured on the synthetic presets' steps
/// (docs/performance.md): 1/8 from 64 KiB held up to 1.19 x the allocated peak, 1/32 from
/// 16 KiB 1.10 x.
const SMALL_SEGMENT_SHARE: u64 = 32;
/// The small pool's first segment.
pub const SMALL_SEGMENT_MIN: u64 = 16 << 10;
const SMALL_SEGMENT_MAX: u64 = 2 << 20;
/// A new large-pool segment is 1/128 of what the large pool holds, at least 1 MiB, at most
/// 128 MiB, or the request's own size if larger, or the wholly free segments it absorbs if
/// larger still ([`Take::Settle`]). So most large tensors start in a segment of their own
/// size, and their segments merge once free: replaying the allocation traces of the CREMA-D
/// steps (docs/performance.md), 1/16 without absorbing held 1.10-1.59 x the allocated peak,
/// 1/16 absorbing 1.10-1.33 x, 1/128 absorbing 1.04-1.19 x.
const LARGE_SEGMENT_SHARE: u64 = 128;
const LARGE_SEGMENT_MIN: u64 = 1 << 20;
const LARGE_SEGMENT_MAX: u64 = 128 << 20;
/// Block granularity of the large pool: offsets and sizes are multiples of this (and of the
/// device's storage offset alignment), so a large tensor starts on a 256-byte boundary as a
/// whole buffer would. Small blocks are multiples of [`SMALL_ALIGN`] (or of the device's
/// alignment, if larger): biases and scalars would otherwise waste most of their block.
pub const BLOCK_ALIGN: u64 = 256;
/// Block granularity of the small pool (a vec4, the widest load a kernel makes).
pub const SMALL_ALIGN: u64 = 16;

/// A tensor's bytes on the device: `size` bytes of `buffer` from `offset`. Tensors are
/// sub-allocated from shared segments, so every launch, copy and readback addresses a range,
/// never a whole buffer.
#[derive(Clone, Debug)]
pub struct BufferRange {
    buffer: wgpu::Buffer,
    offset: u64,
    size: u64,
}

impl BufferRange {
    /// All of `buffer` (staging and report buffers the engine owns outright).
    pub fn whole(buffer: &wgpu::Buffer) -> BufferRange {
        BufferRange { buffer: buffer.clone(), offset: 0, size: buffer.size() }
    }
    /// The device buffer the range lies in.
    pub fn buffer(&self) -> &wgpu::Buffer {
        &self.buffer
    }
    /// Byte offset of the range in [`Self::buffer`].
    pub fn offset(&self) -> u64 {
        self.offset
    }
    /// Length of the range in bytes: what a launch binds (a tensor's own bytes, plus the
    /// sentinel slack in the canary test mode), so the runtime bounds checks of a checked
    /// build clamp to the tensor, not to the block around it.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// True when both ranges lie in one device buffer (a buffer-to-buffer copy between them
    /// is not allowed; see `Gpu::copy`).
    pub fn same_buffer(&self, other: &BufferRange) -> bool {
        self.buffer == other.buffer
    }
    pub(crate) fn binding(&self) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding { buffer: &self.buffer, offset: self.offset, size: wgpu::BufferSize::new(self.size) }
    }
}

/// Memory accounting of the pool. `allocated` and `reserved` (with their high-water marks)
/// are the figures PyTorch reports as `memory_allocated` / `memory_reserved` and
/// `max_memory_allocated` / `max_memory_reserved`: the bytes live tensors asked for, and
/// the bytes held from the driver.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Bytes of the blocks live tensors hold (their sizes rounded up to the granularity).
    pub in_use: u64,
    /// Bytes held in segments but free for reuse (`reserved - in_use`).
    pub cached: u64,
    /// Segments (device buffers) created since start.
    pub allocations: u64,
    /// Requests served from memory already held.
    pub reuses: u64,
    /// Bytes of live tensors, their exact sizes (rounded up to 4).
    pub allocated: u64,
    /// Bytes of segments held from the driver.
    pub reserved: u64,
    /// High-water mark of `allocated` since the last [`crate::Gpu::reset_peak_memory`].
    pub peak_allocated: u64,
    /// High-water mark of `reserved` since the last [`crate::Gpu::reset_peak_memory`].
    pub peak_reserved: u64,
    /// Segments held now.
    pub segments: u64,
}

impl PoolStats {
    fn note_peaks(&mut self) {
        self.cached = self.reserved - self.in_use;
        self.peak_allocated = self.peak_allocated.max(self.allocated);
        self.peak_reserved = self.peak_reserved.max(self.reserved);
    }
    /// Start new high-water marks from the current figures.
    pub(crate) fn reset_peaks(&mut self) {
        self.peak_allocated = self.allocated;
        self.peak_reserved = self.reserved;
    }
}

/// One device buffer and the blocks it is cut into, by offset: (size, free).
struct Segment {
    buffer: wgpu::Buffer,
    small: bool,
    blocks: BTreeMap<u64, (u64, bool)>,
}

/// Where a live block sits, so that dropping its tensor can give it back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockId {
    segment: u64,
    offset: u64,
}

/// A block the canary test mode must still check: freed, its slack not yet scanned.
pub(crate) struct Freed {
    pub(crate) range: BufferRange,
    pub(crate) bytes: u64,
    pub(crate) serial: u64,
}

pub(crate) struct BufferPool {
    segments: HashMap<u64, Segment>,
    /// Free blocks per pool (small, large) as (size, segment, offset): the first entry at or
    /// above a request's size is its best fit.
    free: [BTreeSet<(u64, u64, u64)>; 2],
    /// Bytes the small pool holds (sets the size of its next segment).
    small_reserved: u64,
    next_segment: u64,
    /// Granularity of the (large, small) pools' blocks.
    align: [u64; 2],
    pub(crate) stats: PoolStats,
    /// Canary mode: every live block by allocation serial (range, tensor bytes), so a check
    /// can scan the slack of live tensors too.
    pub(crate) live: Option<HashMap<u64, (BufferRange, u64)>>,
    /// Canary mode: freed blocks whose slack is checked before any memory is handed out
    /// again (in recording order, before the next owner's kernels).
    pub(crate) freed: Vec<Freed>,
    next_serial: u64,
    trace: Option<Trace>,
}

/// What [`BufferPool::take`] answers.
pub(crate) enum Take {
    Block(Taken),
    /// No free block fits, and the new segment is to absorb the request's pool's wholly free
    /// segments: their memory goes back to the driver only once no work submitted or recorded
    /// uses them, so the caller waits for the device and takes again, `settled`. This keeps
    /// `reserved` honest (a buffer dropped with work pending is still held) and merges free
    /// memory that lay in separate segments, which best fit alone never does.
    Settle,
}

/// A block [`BufferPool::take`] hands out.
pub(crate) struct Taken {
    pub(crate) range: BufferRange,
    pub(crate) id: BlockId,
    pub(crate) serial: u64,
    /// Canary mode: freed blocks to check before the new owner's fill.
    pub(crate) to_check: Vec<Freed>,
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

impl BufferPool {
    /// `offset_align`: the device's `min_storage_buffer_offset_alignment`.
    /// `trace`: where to log every take and give ([`Trace`]).
    pub(crate) fn new(canary: bool, offset_align: u64, trace: Option<Trace>) -> Self {
        BufferPool {
            segments: HashMap::new(),
            free: [BTreeSet::new(), BTreeSet::new()],
            small_reserved: 0,
            next_segment: 0,
            align: [BLOCK_ALIGN.max(offset_align).next_power_of_two(), SMALL_ALIGN.max(offset_align).next_power_of_two()],
            stats: PoolStats::default(),
            live: canary.then(HashMap::new),
            freed: Vec::new(),
            next_serial: 1,
            trace,
        }
    }

    /// A block for a tensor of `bytes`, bound as its first `binding` bytes (`bytes` plus any
    /// slack the canary mode wants). When no free block fits, the new segment absorbs the
    /// pool's wholly free segments (see [`Take::Settle`]); `settled` says the caller has
    /// waited for the device since they were last in use. A new segment that would take the
    /// bytes held past `limit`, or that the driver refuses for lack of memory, first releases
    /// every wholly free segment and tries again (PyTorch's caching allocator does the same);
    /// if it still does not fit, the error says how much was asked for, held and live.
    pub(crate) fn take(&mut self, device: &wgpu::Device, bytes: u64, binding: u64, limit: Option<u64>, settled: bool) -> Result<Take> {
        let small = binding <= SMALL_BLOCK;
        let size = round_up(binding.max(1), self.align[small as usize]);
        if let (Some(t), false) = (&mut self.trace, settled) {
            t.line(format_args!("t {} {bytes} {binding}", self.next_serial));
        }
        let (segment, offset, piece) = match self.free[small as usize].range((size, 0, 0)..).next().copied() {
            Some((piece, segment, offset)) => {
                self.free[small as usize].remove(&(piece, segment, offset));
                self.stats.reuses += 1;
                (segment, offset, piece)
            }
            None => {
                let idle = self.idle_segments(Some(small));
                if !idle.is_empty() && !settled {
                    return Ok(Take::Settle);
                }
                let folded = self.release(&idle);
                let (segment, seg_size) = self.new_segment(device, size, small, folded, limit)?;
                (segment, 0, seg_size)
            }
        };
        let to_check = std::mem::take(&mut self.freed);
        let seg = self.segments.get_mut(&segment).expect("free blocks name live segments");
        seg.blocks.insert(offset, (size, false));
        if piece > size {
            seg.blocks.insert(offset + size, (piece - size, true));
            self.free[small as usize].insert((piece - size, segment, offset + size));
        }
        let range = BufferRange { buffer: seg.buffer.clone(), offset, size: binding };
        let serial = self.next_serial;
        self.next_serial += 1;
        self.stats.in_use += size;
        self.stats.allocated += bytes;
        if let Some(live) = &mut self.live {
            live.insert(serial, (range.clone(), bytes));
        }
        self.stats.note_peaks();
        Ok(Take::Block(Taken { range, id: BlockId { segment, offset }, serial, to_check }))
    }

    /// Create a segment for a block of `size`: a share of what its pool holds, so segments
    /// grow with the model, or the block's own size if larger, or the `folded` bytes of the
    /// wholly free segments just released for it if larger still. Returns (segment id,
    /// segment size).
    fn new_segment(&mut self, device: &wgpu::Device, size: u64, small: bool, folded: u64, limit: Option<u64>) -> Result<(u64, u64)> {
        let large_reserved = self.stats.reserved - self.small_reserved;
        let share = if small {
            (self.small_reserved / SMALL_SEGMENT_SHARE).clamp(SMALL_SEGMENT_MIN, SMALL_SEGMENT_MAX)
        } else {
            (large_reserved / LARGE_SEGMENT_SHARE).clamp(LARGE_SEGMENT_MIN, LARGE_SEGMENT_MAX)
        };
        let preferred = round_up(share, self.align[0]).max(folded).min(device.limits().max_buffer_size).max(size);
        let buffer = self.create_or_trim(device, preferred, size, limit)?;
        let seg_size = buffer.size();
        let id = self.next_segment;
        self.next_segment += 1;
        self.segments.insert(id, Segment { buffer, small, blocks: BTreeMap::new() });
        self.stats.reserved += seg_size;
        self.stats.segments += 1;
        if small {
            self.small_reserved += seg_size;
        }
        Ok((id, seg_size))
    }

    /// A new buffer of `preferred` bytes, or of `needed` when the preferred size would pass
    /// the limit; the cache is released once if the limit or the driver says no.
    fn create_or_trim(&mut self, device: &wgpu::Device, preferred: u64, needed: u64, limit: Option<u64>) -> Result<wgpu::Buffer> {
        for attempt in 0..2 {
            let held = self.stats.reserved;
            let fits = |s: u64| limit.is_none_or(|l| held + s <= l);
            let size = if fits(preferred) { Some(preferred) } else { fits(needed).then_some(needed) };
            if let Some(size) = size {
                let scope = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
                let buffer = self.create(device, size);
                match pollster::block_on(scope.pop()) {
                    None => return Ok(buffer),
                    Some(e) if attempt == 1 => return Err(self.out_of_memory(needed, limit, &e.to_string())),
                    Some(_) => {}
                }
            } else if attempt == 1 {
                return Err(self.out_of_memory(needed, limit, "the memory limit (GpuOptions::memory_limit) would be exceeded"));
            }
            self.trim();
        }
        unreachable!("the second attempt returns")
    }

    fn create(&mut self, device: &wgpu::Device, size: u64) -> wgpu::Buffer {
        self.stats.allocations += 1;
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("equimodal.segment"),
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
                "{why}; held from the driver: {} bytes ({} in live tensors' blocks, free segments released), limit: {}",
                s.reserved,
                s.in_use,
                limit.map_or("the device's".to_string(), |l| format!("{l} bytes"))
            ),
        }
    }

    /// Give a block back: it becomes free and merges with free neighbours.
    pub(crate) fn give(&mut self, id: BlockId, bytes: u64, serial: u64) {
        let Some(seg) = self.segments.get_mut(&id.segment) else { return };
        let Some((size, _)) = seg.blocks.get(&id.offset).copied() else { return };
        let pool = seg.small as usize;
        if let Some(t) = &mut self.trace {
            t.line(format_args!("g {serial}"));
        }
        self.stats.in_use -= size;
        self.stats.allocated -= bytes;
        if let Some(live) = &mut self.live {
            if let Some((range, bytes)) = live.remove(&serial) {
                self.freed.push(Freed { range, bytes, serial });
            }
        }
        let (mut start, mut len) = (id.offset, size);
        if let Some((&prev, &(psize, true))) = seg.blocks.range(..id.offset).next_back() {
            if prev + psize == id.offset {
                seg.blocks.remove(&prev);
                self.free[pool].remove(&(psize, id.segment, prev));
                start = prev;
                len += psize;
            }
        }
        if let Some(&(nsize, true)) = seg.blocks.get(&(id.offset + size)) {
            seg.blocks.remove(&(id.offset + size));
            self.free[pool].remove(&(nsize, id.segment, id.offset + size));
            len += nsize;
        }
        seg.blocks.remove(&id.offset);
        seg.blocks.insert(start, (len, true));
        self.free[pool].insert((len, id.segment, start));
        self.stats.note_peaks();
    }

    /// Canary mode: every block to scan, live or freed and unchecked, as (range, tensor
    /// bytes, serial). Free memory that was checked when it was freed belongs to no one.
    pub(crate) fn all_slots(&mut self) -> Vec<(BufferRange, u64, u64)> {
        let mut v: Vec<(BufferRange, u64, u64)> = std::mem::take(&mut self.freed).into_iter().map(|f| (f.range, f.bytes, f.serial)).collect();
        if let Some(live) = &self.live {
            v.extend(live.iter().map(|(&serial, (r, bytes))| (r.clone(), *bytes, serial)));
        }
        v
    }

    /// Free blocks by size: (size, count), largest total first (where the footprint beyond
    /// live tensors sits).
    pub(crate) fn cached_by_size(&self) -> Vec<(u64, usize)> {
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for set in &self.free {
            for &(size, _, _) in set {
                *counts.entry(size).or_default() += 1;
            }
        }
        let mut v: Vec<(u64, usize)> = counts.into_iter().collect();
        v.sort_by(|a, b| (b.0 * b.1 as u64).cmp(&(a.0 * a.1 as u64)));
        v
    }

    /// Release every wholly free segment to the driver; segments with a live block stay.
    pub(crate) fn trim(&mut self) {
        if let Some(t) = &mut self.trace {
            t.line(format_args!("r"));
            t.flush();
        }
        let idle = self.idle_segments(None);
        self.release(&idle);
        self.stats.note_peaks();
    }

    /// Segments holding no live block (of the small or large pool only, if given).
    fn idle_segments(&self, small: Option<bool>) -> Vec<u64> {
        let idle = |s: &Segment| s.blocks.len() == 1 && s.blocks.values().all(|&(_, free)| free);
        self.segments.iter().filter(|(_, s)| idle(s) && small.is_none_or(|p| s.small == p)).map(|(&id, _)| id).collect()
    }

    /// Drop the given wholly free segments; returns the bytes they held.
    fn release(&mut self, ids: &[u64]) -> u64 {
        let mut bytes = 0;
        for id in ids {
            let seg = self.segments.remove(id).expect("idle segments are held");
            let size = seg.buffer.size();
            self.free[seg.small as usize].remove(&(size, *id, 0));
            self.stats.reserved -= size;
            self.stats.segments -= 1;
            if seg.small {
                self.small_reserved -= size;
            }
            bytes += size;
        }
        bytes
    }
}

/// The allocation trace ([`GpuOptions::pool_trace`](super::GpuOptions::pool_trace)): one
/// line per event, appended to a file, to replay a run's allocations through the pool (or
/// through another placement policy) without running its kernels:
/// `n` a new pool (a `Gpu` was created), `t <serial> <bytes> <binding>` a block taken for a
/// tensor of `bytes` bound as `binding` bytes, `g <serial>` that block given back, `r` the
/// wholly free segments released (`Gpu::trim_memory`, or a new segment the driver refused).
pub(crate) struct Trace(std::io::BufWriter<std::fs::File>);

impl Trace {
    pub(crate) fn append(path: &std::path::Path) -> std::io::Result<Trace> {
        let mut t = Trace(std::io::BufWriter::new(std::fs::File::options().append(true).create(true).open(path)?));
        t.line(format_args!("n"));
        Ok(t)
    }
    fn line(&mut self, event: std::fmt::Arguments) {
        use std::io::Write;
        // a trace that cannot be written loses lines, never the run
        let _ = writeln!(self.0, "{event}");
    }
    fn flush(&mut self) {
        use std::io::Write;
        let _ = self.0.flush();
    }
}

/// A tensor's pooled block. Returned to the pool when the last reference drops.
pub struct Storage {
    pub(crate) range: Option<BufferRange>,
    pub(crate) id: Option<BlockId>,
    /// Bytes the tensor uses (rounded up to 4); the rest of the block is slack.
    pub(crate) bytes: u64,
    /// Allocation number (canary reports name the block by it).
    pub(crate) serial: u64,
    pub(crate) pool: Arc<Mutex<BufferPool>>,
}

impl Storage {
    /// The device range holding the tensor.
    pub fn buffer(&self) -> &BufferRange {
        self.range.as_ref().expect("storage present until drop")
    }
    /// Bytes bound for the tensor: its own (rounded up to 4), plus the sentinel slack in
    /// the canary test mode.
    pub fn size(&self) -> u64 {
        self.range.as_ref().map_or(0, |r| r.size)
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            if let Ok(mut p) = self.pool.lock() {
                p.give(id, self.bytes, self.serial);
            }
        }
    }
}
