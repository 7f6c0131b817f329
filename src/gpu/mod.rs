//! GPU context: adapter selection (own device or a host program's), kernels and their
//! cache, the buffer pool, command recording and submission, readback and profiling.
//!
//! One file per responsibility: `device` (which adapter, what it offers), `shaders` and
//! `kernel` (the WGSL modules, each kernel's interface, the pipeline cache), `pool` and
//! `memory` (tensor storage and its accounting), `record` (the command batch, flush,
//! step boundaries), `readback`, `profile`, `timer`. This file holds the context itself.
mod device;
mod grid;
mod kernel;
mod memory;
mod pool;
mod profile;
mod readback;
mod record;
mod shaders;
mod timer;
mod tune;

pub use grid::{grid, split_grid};
pub use device::{list_adapters, parse_backends, parse_bytes, AdapterReport, Capabilities, GpuOptions};
pub(crate) use kernel::gpu_params;
pub use kernel::{compiled_source, Access, Kernel, ParamsField, ParamsLayout};
pub use pool::{BufferRange, PoolStats, Storage, BLOCK_ALIGN, SMALL_ALIGN, SMALL_BLOCK, SMALL_SEGMENT_MIN};
pub use shaders::{AttentionTiles, ConvTile, Coop, HeadDim, Shader, TileShape, ATTENTION_TILES, FRAGMENTS, WG};
pub use timer::GpuTimer;
pub use tune::{TuneEntry, TuneMode, TuneStore};

use crate::error::{Error, Result};
use kernel::KernelCache;
use pool::BufferPool;
use record::Batch;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Every kernel the gpu layer itself launches (the canary checks, copies within a
/// segment), for the interface test.
pub fn kernels() -> Vec<Kernel> {
    [memory::KERNELS, record::KERNELS].concat()
}

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    caps: Capabilities,
    limits: wgpu::Limits,
    checked: bool,
    /// [`GpuOptions::strict_probe`].
    strict_probe: bool,
    /// Workgroups per grid dimension the ops may use (the adapter's limit, or the test cap).
    max_groups: u32,
    /// [`GpuOptions::memory_limit`] (bytes), changeable at run time; `u64::MAX`: none.
    memory_limit: AtomicU64,
    /// Canary mode: the report buffer of `shaders/canary.wgsl`.
    canary: Option<wgpu::Buffer>,
    /// Canary mode: held from taking a buffer to recording its fill, and while a check
    /// records its scans, so a check on one thread never scans a buffer another thread has
    /// taken but not yet filled.
    canary_lock: Mutex<()>,
    cache: Mutex<KernelCache>,
    pool: Arc<Mutex<BufferPool>>,
    batch: Mutex<Batch>,
    next_id: AtomicU64,
    submits: AtomicU64,
    dispatches: AtomicU64,
    error: Arc<Mutex<Option<String>>>,
    in_flight: Mutex<std::collections::VecDeque<wgpu::SubmissionIndex>>,
    step_marks: Mutex<std::collections::VecDeque<wgpu::SubmissionIndex>>,
    /// tuned kernel variants of this device (`tune.rs`)
    tuner: Mutex<tune::Tuner>,
    /// held while a kernel family tunes a bucket (`Gpu::tuning_guard`)
    tuning: Mutex<()>,
    /// kernel name -> (launches, total ns), when profiling
    profile: Option<Mutex<std::collections::HashMap<String, (u64, f64)>>>,
    /// profile entries keyed by kernel and workgroup grid (`EQUIMODAL_PROFILE=2`)
    profile_grid: bool,
}

/// The GPU context. Cheap to clone; all clones share one device, cache and pool.
#[derive(Clone)]
pub struct Gpu(Arc<Inner>);

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({} {:?})", self.0.info.name, self.0.info.backend)
    }
}

impl Gpu {
    /// Pick an adapter (environment overrides, see [`GpuOptions`]), request a device with
    /// the adapter's own limits and the optional features it has.
    pub fn new(options: GpuOptions) -> Result<Gpu> {
        let (device, queue, info) = device::open(&options)?;
        let trace = match &options.pool_trace {
            Some(path) => Some(pool::Trace::append(path).map_err(|e| Error::io(path, e))?),
            None => None,
        };
        let mut g = Self::build(device, queue, info, &options, trace);
        if options.profile && g.0.caps.timestamps {
            if let Some(inner) = Arc::get_mut(&mut g.0) {
                inner.profile = Some(Mutex::new(std::collections::HashMap::new()));
                inner.profile_grid = std::env::var("EQUIMODAL_PROFILE").is_ok_and(|v| v == "2");
            }
        }
        Ok(g)
    }
    /// Default options (environment overrides apply).
    pub fn default_device() -> Result<Gpu> {
        Gpu::new(GpuOptions::default())
    }

    /// Run on a device a host program already owns (the embedding case). The engine records
    /// into its own encoders and submits to `queue`; it never touches the host's resources.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Gpu {
        Self::from_device_with(device, queue, info, &GpuOptions::default())
    }

    /// [`Gpu::from_device`] with options: of them, an embedding program sets what applies to
    /// a device it opened itself (tuning and its cache file, memory limit, checked kernels,
    /// the test modes, the pool trace); adapter selection and profiling are ignored. A pool
    /// trace file that cannot be opened is reported on stderr and skipped (this constructor
    /// cannot fail; [`Gpu::new`] returns the error).
    pub fn from_device_with(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo, options: &GpuOptions) -> Gpu {
        let trace = options.pool_trace.as_ref().and_then(|path| match pool::Trace::append(path) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("equimodal: no pool trace: {}", Error::io(path, e));
                None
            }
        });
        Self::build(device, queue, info, options, trace)
    }

    fn build(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo, options: &GpuOptions, trace: Option<pool::Trace>) -> Gpu {
        let caps = Capabilities::of(&device, &info);
        let error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let e2 = error.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            if let Ok(mut slot) = e2.lock() {
                if slot.is_none() {
                    *slot = Some(e.to_string());
                }
            }
        }));
        let e3 = error.clone();
        device.set_device_lost_callback(move |reason, msg| {
            if let Ok(mut slot) = e3.lock() {
                *slot = Some(format!("device lost ({reason:?}): {msg}"));
            }
        });
        let limits = device.limits();
        let offset_align = limits.min_storage_buffer_offset_alignment as u64;
        let adapter_max = limits.max_compute_workgroups_per_dimension.max(1);
        let max_groups = options.max_workgroups_per_dim.map_or(adapter_max, |c| c.clamp(1, adapter_max));
        let canary = options.pool_canary.then(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("equimodal.canary.report"),
                size: memory::CANARY_REPORT_BYTES,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        let tuner = Mutex::new(tune::Tuner::new(options.tune, &options.tune_cache, &info));
        Gpu(Arc::new(Inner {
            tuner,
            tuning: Mutex::new(()),
            device,
            queue,
            info,
            caps,
            limits,
            checked: options.checked_kernels,
            strict_probe: options.strict_probe,
            max_groups,
            memory_limit: AtomicU64::new(options.memory_limit.unwrap_or(u64::MAX)),
            canary,
            canary_lock: Mutex::new(()),
            cache: Mutex::new(KernelCache::default()),
            pool: Arc::new(Mutex::new(BufferPool::new(options.pool_canary, offset_align, trace))),
            batch: Mutex::new(Batch::default()),
            next_id: AtomicU64::new(1),
            submits: AtomicU64::new(0),
            dispatches: AtomicU64::new(0),
            error,
            in_flight: Mutex::new(std::collections::VecDeque::new()),
            step_marks: Mutex::new(std::collections::VecDeque::new()),
            profile: None,
            profile_grid: false,
        }))
    }

    /// The wgpu device.
    pub fn device(&self) -> &wgpu::Device {
        &self.0.device
    }
    /// The device's queue.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.0.queue
    }
    /// The adapter the device was opened on.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.0.info
    }
    /// The optional features the device was opened with.
    pub fn capabilities(&self) -> Capabilities {
        self.0.caps
    }
    /// The device's limits (the adapter's own, see [`GpuOptions`]).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.0.limits
    }
    /// Workgroups per grid dimension that launches may use: the adapter's limit, or the
    /// test cap [`GpuOptions::max_workgroups_per_dim`]. Every grid computation reads this,
    /// never the adapter limit directly.
    pub fn max_workgroups_per_dim(&self) -> u32 {
        self.0.max_groups
    }
    /// True in the canary test mode ([`GpuOptions::pool_canary`]).
    pub fn pool_canary(&self) -> bool {
        self.0.canary.is_some()
    }
    /// True in the strict test mode of the tuner's probe ([`GpuOptions::strict_probe`]).
    pub fn strict_probe(&self) -> bool {
        self.0.strict_probe
    }
    /// True when kernels are compiled with runtime bounds checks.
    pub fn checked_kernels(&self) -> bool {
        self.0.checked
    }
    /// True when both handles share one context (clones of the same `Gpu`); tensors of different
    /// contexts cannot meet in an op.
    pub fn same_device(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.0.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Number of submits and dispatches so far (host-overhead accounting).
    pub fn counters(&self) -> (u64, u64) {
        (self.0.submits.load(Ordering::Relaxed), self.0.dispatches.load(Ordering::Relaxed))
    }
    /// Pipelines compiled so far.
    pub fn pipelines_compiled(&self) -> u64 {
        self.0.cache.lock().map(|c| c.compiled).unwrap_or(0)
    }
}
