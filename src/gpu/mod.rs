//! GPU context: adapter selection (own device or a host program's), kernel cache, buffer
//! pool, command batching and GPU timestamps.
//!
//! Work is recorded, not executed: every kernel launch, copy and clear is appended to a
//! command list, and the list is encoded and submitted in one go when the host needs a
//! value (a readback), when [`Gpu::flush`] is called, or when the list grows long. All
//! commands keep their recording order, so buffers can be reused from the pool as soon as
//! the tensor that owned them is dropped.
mod cache;
mod pool;
mod timer;

pub use cache::{Access, Kernel};
pub use pool::{bucket_size, PoolStats, Storage};
pub use timer::GpuTimer;

use crate::error::{Error, Result};
use cache::{CachedPipeline, KernelCache};
use pool::BufferPool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Canary mode (`shaders/canary.wgsl`): fill and check the slack of pooled buffers.
const CANARY_SRC: &str = include_str!("../../shaders/canary.wgsl");
const K_CANARY_FILL: Kernel =
    Kernel { shader: "canary", source: CANARY_SRC, entry: "canary_fill", bindings: &[Access::ReadWrite, Access::ReadWrite] };
const K_CANARY_CHECK: Kernel =
    Kernel { shader: "canary", source: CANARY_SRC, entry: "canary_check", bindings: &[Access::ReadWrite, Access::ReadWrite] };
/// count, serial, word, value, first slack word (u32 each), padded
const CANARY_REPORT_BYTES: u64 = 32;

/// Commands recorded before this many are flushed automatically.
const AUTO_FLUSH: usize = 2048;

/// How to pick and configure the adapter. `Default` reads the environment:
/// `EQUIMODAL_BACKEND` (or wgpu's `WGPU_BACKEND`: vulkan, metal, dx12, gl, comma-separated),
/// `EQUIMODAL_ADAPTER` (or `WGPU_ADAPTER_NAME`: case-insensitive substring of the adapter
/// name, e.g. "llvmpipe" for Mesa's software Vulkan), `EQUIMODAL_CHECKED_KERNELS=1`, and the
/// two test modes `EQUIMODAL_MAX_WORKGROUPS_PER_DIM=<n>` and `EQUIMODAL_POOL_CANARY=1`.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    pub backends: wgpu::Backends,
    pub adapter_name: Option<String>,
    pub power: wgpu::PowerPreference,
    /// Time every kernel launch with GPU timestamps (one pass per launch; slow). Read the
    /// totals with [`Gpu::profile_report`]. `EQUIMODAL_PROFILE=1` turns it on;
    /// `EQUIMODAL_PROFILE=2` also keys each entry by its workgroup grid, which tells apart
    /// the layers that share a kernel (e.g. the stem's conv from the later ones).
    pub profile: bool,
    /// Compile kernels with runtime bounds checks. Off in release builds (the checks cost up
    /// to 40x on large matmuls; the test suite proves the indexing), on in debug builds.
    pub checked_kernels: bool,
    /// Test mode: use at most this many workgroups per grid dimension instead of the
    /// adapter's limit (65,535 on most GPUs). Every grid computation (`ops::grid`, the tiled
    /// conv and matmul launches) reads [`Gpu::max_workgroups_per_dim`], so a cap of 3 makes
    /// tensors of a few thousand elements take the folded grids (with spare workgroups) and
    /// split launches that otherwise only tensors of millions of elements reach; a launch the
    /// grid logic cannot fit (more than cap^3 workgroups) is an error, never silently run.
    /// `EQUIMODAL_MAX_WORKGROUPS_PER_DIM`.
    pub max_workgroups_per_dim: Option<u32>,
    /// Test mode: every pooled buffer gets at least 16 bytes of slack beyond its tensor,
    /// filled with a NaN sentinel; [`Gpu::check_canaries`] reports any sentinel a kernel
    /// overwrote (writes past the end of a tensor). `EQUIMODAL_POOL_CANARY=1`.
    pub pool_canary: bool,
}

/// Parse a comma-separated backend list (`vulkan,gl`); an unknown name is an error naming
/// `field` (wgpu's own parser ignores unknown names, which would select nothing).
pub fn parse_backends(field: &str, list: &str) -> Result<wgpu::Backends> {
    let mut b = wgpu::Backends::empty();
    for part in list.split(',').map(|p| p.trim().to_lowercase()).filter(|p| !p.is_empty()) {
        b |= match part.as_str() {
            "vulkan" | "vk" => wgpu::Backends::VULKAN,
            "metal" | "mtl" => wgpu::Backends::METAL,
            "dx12" | "d3d12" => wgpu::Backends::DX12,
            "gl" | "gles" | "opengl" => wgpu::Backends::GL,
            "primary" => wgpu::Backends::PRIMARY,
            "all" => wgpu::Backends::all(),
            other => {
                return Err(Error::config(field, format!("unknown backend `{other}`; allowed: vulkan, metal, dx12, gl, primary, all (comma-separated)")))
            }
        };
    }
    if b.is_empty() {
        return Err(Error::config(field, "no backend given; allowed: vulkan, metal, dx12, gl, primary, all (comma-separated)"));
    }
    Ok(b)
}

impl GpuOptions {
    /// The defaults with the environment applied; an unknown backend name in
    /// `EQUIMODAL_BACKEND` or `WGPU_BACKEND` is an error naming the variable.
    pub fn from_env() -> Result<GpuOptions> {
        let mut o = GpuOptions::default();
        for var in ["EQUIMODAL_BACKEND", "WGPU_BACKEND"] {
            if let Ok(v) = std::env::var(var) {
                o.backends = parse_backends(var, &v)?;
                break;
            }
        }
        Ok(o)
    }
}

impl Default for GpuOptions {
    /// Lenient: an unparsable backend list falls back to the primary backends (use
    /// [`GpuOptions::from_env`] to report it instead).
    fn default() -> Self {
        let backends = ["EQUIMODAL_BACKEND", "WGPU_BACKEND"]
            .iter()
            .find_map(|v| std::env::var(v).ok())
            .and_then(|s| parse_backends("backend", &s).ok())
            .unwrap_or(wgpu::Backends::PRIMARY);
        let adapter_name = std::env::var("EQUIMODAL_ADAPTER")
            .ok()
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .filter(|s| !s.is_empty());
        let checked_kernels = match std::env::var("EQUIMODAL_CHECKED_KERNELS") {
            Ok(v) => v == "1" || v.eq_ignore_ascii_case("true"),
            Err(_) => cfg!(debug_assertions),
        };
        let profile = std::env::var("EQUIMODAL_PROFILE").is_ok_and(|v| v == "1" || v == "2");
        let max_workgroups_per_dim =
            std::env::var("EQUIMODAL_MAX_WORKGROUPS_PER_DIM").ok().and_then(|v| v.trim().parse::<u32>().ok()).filter(|&v| v > 0);
        let pool_canary = std::env::var("EQUIMODAL_POOL_CANARY").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        GpuOptions {
            backends,
            adapter_name,
            power: wgpu::PowerPreference::HighPerformance,
            profile,
            checked_kernels,
            max_workgroups_per_dim,
            pool_canary,
        }
    }
}

/// Optional capabilities the engine uses when present.
#[derive(Clone, Copy, Debug, Default)]
pub struct Capabilities {
    pub timestamps: bool,
    pub timestamps_in_encoders: bool,
    pub f16: bool,
    pub subgroups: bool,
}

/// One adapter as seen by [`list_adapters`].
#[derive(Clone, Debug)]
pub struct AdapterReport {
    pub info: wgpu::AdapterInfo,
    pub features: wgpu::Features,
    pub limits: wgpu::Limits,
}

impl std::fmt::Display for AdapterReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.info;
        writeln!(f, "{} ({:?}, {:?}, driver {} {})", i.name, i.backend, i.device_type, i.driver, i.driver_info)?;
        let feat = |x: wgpu::Features| if self.features.contains(x) { "yes" } else { "no" };
        writeln!(
            f,
            "  timestamps: {}  f16: {}  subgroups: {}  cooperative matrix: {}",
            feat(wgpu::Features::TIMESTAMP_QUERY),
            feat(wgpu::Features::SHADER_F16),
            feat(wgpu::Features::SUBGROUP),
            feat(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
        )?;
        let l = &self.limits;
        write!(
            f,
            "  max storage binding: {} MiB  max buffer: {} MiB  workgroup memory: {} KiB  invocations/workgroup: {}  workgroups/dim: {}",
            l.max_storage_buffer_binding_size / (1 << 20),
            l.max_buffer_size / (1 << 20),
            l.max_compute_workgroup_storage_size / 1024,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension
        )
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// Every adapter the selected backends expose.
pub fn list_adapters(backends: wgpu::Backends) -> Vec<AdapterReport> {
    let inst = instance(backends);
    pollster::block_on(inst.enumerate_adapters(backends))
        .into_iter()
        .map(|a| AdapterReport { info: a.get_info(), features: a.features(), limits: a.limits() })
        .collect()
}

/// The first adapter whose name contains `name` (case-insensitive) on `backends`; with
/// `widen` (no backend was asked for) also on every other backend, as `devices` lists them.
/// The error lists what was available, with backends.
fn find_adapter_by_name(name: &str, backends: wgpu::Backends, widen: bool) -> Result<wgpu::Adapter> {
    let want = name.to_lowercase();
    let mut tried = vec![backends];
    if widen && backends != wgpu::Backends::all() {
        tried.push(wgpu::Backends::all());
    }
    for b in tried {
        let all = pollster::block_on(instance(b).enumerate_adapters(b));
        if let Some(a) = all.into_iter().find(|a| a.get_info().name.to_lowercase().contains(&want)) {
            return Ok(a);
        }
    }
    // name every adapter `devices` would list, so the message never says "available: []"
    // while another backend has the one asked for
    let listed = |b: wgpu::Backends| list_adapters(b).iter().map(|a| format!("{} ({:?})", a.info.name, a.info.backend)).collect::<Vec<_>>().join(", ");
    Err(Error::NoAdapter(format!(
        "no adapter name contains {name:?} on backends {backends:?}; available there: [{}]; on every backend (as `equimodal devices` lists): [{}]",
        listed(backends),
        listed(wgpu::Backends::all())
    )))
}

pub(crate) enum Bind {
    Uniform { offset: u64, size: u64 },
    Buffer(wgpu::Buffer),
}

pub(crate) enum Cmd {
    Dispatch { pipeline: Arc<CachedPipeline>, binds: Vec<Bind>, groups: [u32; 3] },
    Copy { src: wgpu::Buffer, src_offset: u64, dst: wgpu::Buffer, dst_offset: u64, size: u64 },
    Clear { buffer: wgpu::Buffer, offset: u64, size: u64 },
    Timestamp { set: Arc<wgpu::QuerySet>, index: u32 },
    Resolve { set: Arc<wgpu::QuerySet>, count: u32, dst: wgpu::Buffer },
}

#[derive(Default)]
struct Batch {
    cmds: Vec<Cmd>,
    params: Vec<u8>,
}

struct Inner {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    caps: Capabilities,
    limits: wgpu::Limits,
    checked: bool,
    /// Workgroups per grid dimension the ops may use (the adapter's limit, or the test cap).
    max_groups: u32,
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

thread_local! {
    // Gradient recording mode is per thread (as in PyTorch): one thread evaluating under
    // no_grad does not stop another from recording.
    static NO_GRAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Guard returned by [`Gpu::no_grad`]; gradient recording resumes when it drops.
pub struct NoGradGuard(());
impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

impl Gpu {
    /// Pick an adapter (environment overrides, see [`GpuOptions`]), request a device with
    /// the adapter's own limits and the optional features it has.
    pub fn new(options: GpuOptions) -> Result<Gpu> {
        // GL is a last resort: only when the primary backends have no adapter.
        let mut backends = options.backends;
        if backends == wgpu::Backends::PRIMARY && pollster::block_on(instance(backends).enumerate_adapters(backends)).is_empty() {
            backends = wgpu::Backends::all();
        }
        let inst = instance(backends);
        let adapter = if let Some(name) = &options.adapter_name {
            find_adapter_by_name(name, backends, options.backends == wgpu::Backends::PRIMARY)?
        } else {
            pollster::block_on(inst.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: options.power,
                force_fallback_adapter: false,
                compatible_surface: None,
                apply_limit_buckets: false,
            }))
            .map_err(|e| {
                Error::NoAdapter(format!(
                    "{e}; on a machine without a GPU install Mesa's software Vulkan (lavapipe: apt-get install mesa-vulkan-drivers)"
                ))
            })?
        };
        let want = wgpu::Features::TIMESTAMP_QUERY
            | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS
            | wgpu::Features::SHADER_F16
            | wgpu::Features::SUBGROUP;
        let features = adapter.features() & want;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("equimodal"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Device(e.to_string()))?;
        let mut g = Self::build(device, queue, adapter.get_info(), &options);
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
        Self::build(device, queue, info, &GpuOptions::default())
    }

    fn build(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo, options: &GpuOptions) -> Gpu {
        let f = device.features();
        let caps = Capabilities {
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamps_in_encoders: f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS),
            f16: f.contains(wgpu::Features::SHADER_F16),
            subgroups: f.contains(wgpu::Features::SUBGROUP),
        };
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
        let adapter_max = limits.max_compute_workgroups_per_dimension.max(1);
        let max_groups = options.max_workgroups_per_dim.map_or(adapter_max, |c| c.clamp(1, adapter_max));
        let canary = options.pool_canary.then(|| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("equimodal.canary.report"),
                size: CANARY_REPORT_BYTES,
                usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        });
        Gpu(Arc::new(Inner {
            device,
            queue,
            info,
            caps,
            limits,
            checked: options.checked_kernels,
            max_groups,
            canary,
            canary_lock: Mutex::new(()),
            cache: Mutex::new(KernelCache::default()),
            pool: Arc::new(Mutex::new(BufferPool::new(options.pool_canary))),
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

    pub fn device(&self) -> &wgpu::Device {
        &self.0.device
    }
    pub fn queue(&self) -> &wgpu::Queue {
        &self.0.queue
    }
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.0.info
    }
    pub fn capabilities(&self) -> Capabilities {
        self.0.caps
    }
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
    /// True when kernels are compiled with runtime bounds checks.
    pub fn checked_kernels(&self) -> bool {
        self.0.checked
    }
    pub fn same_device(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.0.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Stop recording gradients on this thread until the guard drops.
    pub fn no_grad(&self) -> NoGradGuard {
        NO_GRAD.with(|c| c.set(c.get() + 1));
        NoGradGuard(())
    }
    /// Whether ops on this thread record gradients.
    pub fn grad_enabled(&self) -> bool {
        NO_GRAD.with(|c| c.get() == 0)
    }

    /// Cached (free) pool buffers per bucket size, (bytes, count), largest total first: where
    /// the pool's footprint beyond live tensors sits.
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
    /// Release cached buffers back to the driver.
    pub fn trim_memory(&self) {
        if let Ok(mut p) = self.0.pool.lock() {
            p.trim();
        }
    }
    /// Number of submits and dispatches so far (host-overhead accounting).
    pub fn counters(&self) -> (u64, u64) {
        (self.0.submits.load(Ordering::Relaxed), self.0.dispatches.load(Ordering::Relaxed))
    }
    /// Pipelines compiled so far.
    pub fn pipelines_compiled(&self) -> u64 {
        self.0.cache.lock().map(|c| c.compiled).unwrap_or(0)
    }

    /// Take a storage buffer of at least `bytes` from the pool.
    pub fn alloc(&self, bytes: u64) -> Result<Arc<Storage>> {
        let max = self.0.limits.max_storage_buffer_binding_size as u64;
        if bytes > max {
            return Err(Error::Other(format!(
                "tensor of {bytes} bytes exceeds the device's max storage binding ({max} bytes)"
            )));
        }
        let bytes = bytes.div_ceil(4) * 4;
        // Canary mode: at least 16 bytes of slack, so that even a write the runtime bounds
        // checks clamp to the buffer's last word lands on the sentinel.
        let size = if self.0.canary.is_some() { bucket_size(bytes + 16) } else { bucket_size(bytes) };
        let _canary = match self.0.canary {
            Some(_) => Some(self.0.canary_lock.lock().map_err(|_| Error::Other("canary lock poisoned".into()))?),
            None => None,
        };
        let taken = {
            let mut pool = self.0.pool.lock().map_err(|_| Error::Other("buffer pool poisoned".into()))?;
            pool.take(&self.0.device, bytes, size)
        };
        if self.0.canary.is_some() {
            // In recording order: the previous owner's slack is checked before this owner's
            // sentinel is written, so nothing a kernel wrote there goes unseen.
            if let Some((prev_bytes, prev_serial)) = taken.prev {
                self.canary_launch(&K_CANARY_CHECK, &taken.buffer, prev_bytes, taken.size, prev_serial)?;
            }
            self.canary_launch(&K_CANARY_FILL, &taken.buffer, bytes, taken.size, taken.serial)?;
        }
        Ok(Arc::new(Storage {
            buffer: Some(taken.buffer),
            size: taken.size,
            bytes,
            serial: taken.serial,
            pool: self.0.pool.clone(),
        }))
    }

    /// Fill or check the words `bytes/4 .. size/4` of `buffer` (canary mode).
    fn canary_launch(&self, k: &Kernel, buffer: &wgpu::Buffer, bytes: u64, size: u64, serial: u64) -> Result<()> {
        let Some(report) = &self.0.canary else { return Ok(()) };
        let (mut start, end) = ((bytes / 4) as usize, (size / 4) as usize);
        // one launch covers at most max_groups^3 workgroups of 256 words (the folded grid)
        let m = self.0.max_groups as usize;
        let per_launch = m.saturating_mul(m).saturating_mul(m).saturating_mul(256);
        while start < end {
            let stop = end.min(start.saturating_add(per_launch));
            let p: [u32; 4] = [start as u32, stop as u32, serial as u32, 0];
            let groups = crate::ops::grid(self, stop - start, 256);
            self.dispatch(k, &[], bytemuck::cast_slice(&p), &[buffer, report], groups)?;
            start = stop;
        }
        Ok(())
    }

    /// Canary mode ([`GpuOptions::pool_canary`]): check the slack of every pooled buffer
    /// (live tensors, cached buffers, and buffers reused since the last check, which were
    /// checked when they were handed out again) and fail if a kernel wrote into any of it.
    /// Resets the report. A no-op returning `Ok` outside canary mode.
    pub fn check_canaries(&self) -> Result<()> {
        let Some(report) = &self.0.canary else { return Ok(()) };
        {
            let _canary = self.0.canary_lock.lock().map_err(|_| Error::Other("canary lock poisoned".into()))?;
            let slots = self.0.pool.lock().map_err(|_| Error::Other("buffer pool poisoned".into()))?.all_slots();
            for (buffer, bytes, size, serial) in &slots {
                self.canary_launch(&K_CANARY_CHECK, buffer, *bytes, *size, *serial)?;
            }
        }
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&self.read_bytes(report, 0, CANARY_REPORT_BYTES)?);
        self.clear(report, 0, CANARY_REPORT_BYTES)?;
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

    fn check_error(&self) -> Result<()> {
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
    /// a multiple of 16 bytes; `buffers` bind to 1..=n in order.
    pub fn dispatch(
        &self,
        kernel: &Kernel,
        constants: &[(&str, f64)],
        params: &[u8],
        buffers: &[&wgpu::Buffer],
        groups: [u32; 3],
    ) -> Result<()> {
        if buffers.len() != kernel.bindings.len() {
            return Err(Error::Other(format!(
                "kernel {}::{} takes {} buffers, got {}",
                kernel.shader,
                kernel.entry,
                kernel.bindings.len(),
                buffers.len()
            )));
        }
        // the test cap, when set, is enforced like the adapter's limit: a launch that does not
        // go through the grid logic fails loudly instead of passing unexercised
        let maxg = self.0.max_groups;
        if groups.iter().any(|&g| g > maxg) {
            return Err(Error::Other(format!(
                "kernel {}::{} launch {:?} exceeds {} workgroups per dimension",
                kernel.shader, kernel.entry, groups, maxg
            )));
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let pipeline = {
            let mut c = self.0.cache.lock().map_err(|_| Error::Other("kernel cache poisoned".into()))?;
            c.get(&self.0.device, self.0.checked, kernel, constants)
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

    /// Record a buffer-to-buffer copy (in order with kernel launches).
    pub fn copy(&self, src: &wgpu::Buffer, src_offset: u64, dst: &wgpu::Buffer, dst_offset: u64, size: u64) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        self.push(Cmd::Copy { src: src.clone(), src_offset, dst: dst.clone(), dst_offset, size })
    }

    /// Record a zero fill of `size` bytes (multiple of 4).
    pub fn clear(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<()> {
        if size == 0 {
            return Ok(());
        }
        self.push(Cmd::Clear { buffer: buffer.clone(), offset, size: size.div_ceil(4) * 4 })
    }

    /// Upload bytes into `dst` at `offset`, in order with recorded work (through a staging
    /// buffer, so it cannot overtake earlier launches that still use `dst`).
    pub fn upload(&self, dst: &wgpu::Buffer, offset: u64, bytes: &[u8]) -> Result<()> {
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
        self.copy(&staging, 0, dst, offset, size)
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
        let dev = &self.0.device;
        let uniform = if batch.params.is_empty() {
            None
        } else {
            let buf = dev.create_buffer(&wgpu::BufferDescriptor {
                label: Some("equimodal.params"),
                size: batch.params.len() as u64,
                usage: wgpu::BufferUsages::UNIFORM,
                mapped_at_creation: true,
            });
            buf.slice(..)
                .get_mapped_range_mut()
                .map_err(|e| Error::DeviceLost(format!("params map: {e:?}")))?
                .copy_from_slice(&batch.params);
            buf.unmap();
            Some(buf)
        };
        let mut enc = dev.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("equimodal.batch") });
        let cmds = batch.cmds;
        if self.0.profile.is_some() {
            return self.flush_profiled(enc, cmds, uniform.as_ref(), guard);
        }
        let mut i = 0;
        while i < cmds.len() {
            match &cmds[i] {
                Cmd::Dispatch { .. } => {
                    // One compute pass for a run of consecutive launches; a timestamp right
                    // after the run is written at the end of the pass.
                    let mut j = i;
                    while j < cmds.len() && matches!(cmds[j], Cmd::Dispatch { .. }) {
                        j += 1;
                    }
                    let end_ts = match cmds.get(j) {
                        Some(Cmd::Timestamp { set, index }) => Some((set.clone(), *index)),
                        _ => None,
                    };
                    let groups_of: Vec<wgpu::BindGroup> = cmds[i..j]
                        .iter()
                        .map(|c| match c {
                            Cmd::Dispatch { pipeline, binds, .. } => self.bind_group(pipeline, binds, uniform.as_ref()),
                            _ => unreachable!(),
                        })
                        .collect();
                    {
                        let tw = end_ts.as_ref().map(|(set, index)| wgpu::ComputePassTimestampWrites {
                            query_set: set,
                            beginning_of_pass_write_index: None,
                            end_of_pass_write_index: Some(*index),
                        });
                        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("equimodal.pass"),
                            timestamp_writes: tw,
                        });
                        for (c, bg) in cmds[i..j].iter().zip(&groups_of) {
                            if let Cmd::Dispatch { pipeline, groups, .. } = c {
                                pass.set_pipeline(&pipeline.pipeline);
                                pass.set_bind_group(0, bg, &[]);
                                pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                            }
                        }
                    }
                    i = if end_ts.is_some() { j + 1 } else { j };
                }
                Cmd::Copy { src, src_offset, dst, dst_offset, size } => {
                    enc.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size);
                    i += 1;
                }
                Cmd::Clear { buffer, offset, size } => {
                    enc.clear_buffer(buffer, *offset, Some(*size));
                    i += 1;
                }
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
                    i += 1;
                }
                Cmd::Resolve { set, count, dst } => {
                    enc.resolve_query_set(set, 0..*count, dst, 0);
                    i += 1;
                }
            }
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

    fn bind_group(&self, pipeline: &CachedPipeline, binds: &[Bind], uniform: Option<&wgpu::Buffer>) -> wgpu::BindGroup {
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
                    Bind::Buffer(buf) => buf.as_entire_binding(),
                },
            })
            .collect();
        self.0.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout: &pipeline.layout, entries: &entries })
    }

    /// Profiling flush: every launch in its own pass between two timestamps; waits and
    /// accumulates per-kernel GPU time.
    fn flush_profiled(
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
            match c {
                Cmd::Dispatch { pipeline, binds, groups } => {
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
                    if self.0.profile_grid {
                        names.push(format!("{} [{}x{}x{}]", pipeline.name, groups[0], groups[1], groups[2]));
                    } else {
                        names.push(pipeline.name.clone());
                    }
                }
                Cmd::Copy { src, src_offset, dst, dst_offset, size } => enc.copy_buffer_to_buffer(src, *src_offset, dst, *dst_offset, *size),
                Cmd::Clear { buffer, offset, size } => enc.clear_buffer(buffer, *offset, Some(*size)),
                Cmd::Resolve { set, count, dst } => enc.resolve_query_set(set, 0..*count, dst, 0),
                Cmd::Timestamp { .. } => {}
            }
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
        let bytes = self.read_bytes(&resolve, 0, 16 * n as u64)?;
        let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let period = self.0.queue.get_timestamp_period() as f64;
        if let Some(p) = &self.0.profile {
            if let Ok(mut map) = p.lock() {
                for (i, name) in names.into_iter().enumerate() {
                    let ns = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
                    let e = map.entry(name).or_insert((0, 0.0));
                    e.0 += 1;
                    e.1 += ns;
                }
            }
        }
        self.check_error()
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

    /// Flush and block until the GPU is idle.
    pub fn synchronize(&self) -> Result<()> {
        self.flush()?;
        self.0
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::DeviceLost(e.to_string()))?;
        self.check_error()
    }

    /// Read `size` bytes of `src` from `offset` back to the host (flushes and waits).
    pub fn read_bytes(&self, src: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
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
        self.copy(src, offset, &staging, 0, padded)?;
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
