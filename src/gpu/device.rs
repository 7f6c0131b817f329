//! Adapter selection: which backend and adapter to run on (environment overrides), what
//! they offer, and opening a device with the adapter's own limits.
use super::tune::{TuneMode, TuneStore};
use crate::error::{Error, Result};

/// How to pick and configure the adapter. `Default` reads the environment:
/// `EQUIMODAL_BACKEND` (or wgpu's `WGPU_BACKEND`: vulkan, metal, dx12, gl, comma-separated),
/// `EQUIMODAL_ADAPTER` (or `WGPU_ADAPTER_NAME`: case-insensitive substring of the adapter
/// name, e.g. "llvmpipe" for Mesa's software Vulkan), `EQUIMODAL_CHECKED_KERNELS=1`, and the
/// two test modes `EQUIMODAL_MAX_WORKGROUPS_PER_DIM=<n>` and `EQUIMODAL_POOL_CANARY=1`,
/// `EQUIMODAL_MEMORY_LIMIT`, `EQUIMODAL_POOL_TRACE`, `EQUIMODAL_TUNE` and `EQUIMODAL_TUNE_CACHE`.
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// Backends to look for adapters on (`EQUIMODAL_BACKEND` or `WGPU_BACKEND`; the primary ones by
    /// default, all of them when none of those has an adapter).
    pub backends: wgpu::Backends,
    /// Case-insensitive substring of the adapter's name to pick (`EQUIMODAL_ADAPTER` or
    /// `WGPU_ADAPTER_NAME`); `None` lets wgpu choose by `power`.
    pub adapter_name: Option<String>,
    /// Which adapter wgpu prefers when no name is given (high performance by default).
    pub power: wgpu::PowerPreference,
    /// Time every kernel launch with GPU timestamps (one pass per launch; slow). Read the
    /// totals with [`Gpu::profile_report`]. `EQUIMODAL_PROFILE=1` turns it on;
    /// `EQUIMODAL_PROFILE=2` also keys each entry by its workgroup grid, which tells apart
    /// the layers that share a kernel (e.g. the stem's conv from the later ones).
    ///
    /// [`Gpu::profile_report`]: super::Gpu::profile_report
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
    ///
    /// [`Gpu::max_workgroups_per_dim`]: super::Gpu::max_workgroups_per_dim
    pub max_workgroups_per_dim: Option<u32>,
    /// Test mode: every pooled buffer gets at least 16 bytes of slack beyond its tensor,
    /// filled with a NaN sentinel; [`Gpu::check_canaries`] reports any sentinel a kernel
    /// overwrote (writes past the end of a tensor). `EQUIMODAL_POOL_CANARY=1`.
    ///
    /// [`Gpu::check_canaries`]: super::Gpu::check_canaries
    pub pool_canary: bool,
    /// Test mode: a variant that fails the tuner's correctness probe is an error, not a
    /// warning. In a run the tuner steps around a wrong variant (and says so); in the test
    /// suite a wrong variant is a kernel bug that must fail, even where the tuner would not
    /// have picked it.
    pub strict_probe: bool,
    /// Most bytes the buffer pool may hold from the driver (live tensors and cache): a new
    /// buffer beyond it first releases the cache, then fails with
    /// [`Error::OutOfMemory`](crate::Error::OutOfMemory), as a full device would. For
    /// sharing a GPU between processes (PyTorch's `set_per_process_memory_fraction`), and
    /// for testing what a run does when memory runs out. `EQUIMODAL_MEMORY_LIMIT` (bytes, or
    /// with a `KiB`/`MiB`/`GiB` suffix).
    pub memory_limit: Option<u64>,
    /// When kernel families time their variants on this device (`EQUIMODAL_TUNE=off|quick|full`;
    /// quick by default). See [`TuneMode`].
    pub tune: TuneMode,
    /// Append every allocation and release of the buffer pool to this file
    /// (`EQUIMODAL_POOL_TRACE`): the trace a placement policy is judged on (format: the
    /// pool's `Trace`; replayed by `tests/gpu/memory.rs`).
    pub pool_trace: Option<std::path::PathBuf>,
    /// Where tuned choices are kept between runs (`EQUIMODAL_TUNE_CACHE`, else the XDG cache
    /// dir). Embedding programs pass their own file or [`TuneStore::Memory`].
    pub tune_cache: TuneStore,
}

/// Parse a byte count with an optional binary suffix (`512MiB`, `2GiB`, `4096`).
pub fn parse_bytes(field: &str, text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        other => return Err(Error::config(field, format!("unknown unit `{other}` in {text:?}; use bytes or KiB, MiB, GiB"))),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| Error::config(field, format!("expected a byte count like 512MiB, got {text:?}")))
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
    /// `EQUIMODAL_BACKEND` or `WGPU_BACKEND`, or a value of `EQUIMODAL_MEMORY_LIMIT`,
    /// `EQUIMODAL_TUNE` or `EQUIMODAL_MAX_WORKGROUPS_PER_DIM` that does not parse, is an error
    /// naming the variable.
    pub fn from_env() -> Result<GpuOptions> {
        let mut o = GpuOptions::default();
        for var in ["EQUIMODAL_BACKEND", "WGPU_BACKEND"] {
            if let Ok(v) = std::env::var(var) {
                o.backends = parse_backends(var, &v)?;
                break;
            }
        }
        if let Some(v) = std::env::var("EQUIMODAL_MEMORY_LIMIT").ok().filter(|v| !v.trim().is_empty()) {
            o.memory_limit = Some(parse_bytes("EQUIMODAL_MEMORY_LIMIT", &v)?);
        }
        if let Some(v) = std::env::var("EQUIMODAL_TUNE").ok().filter(|v| !v.trim().is_empty()) {
            o.tune = TuneMode::parse("EQUIMODAL_TUNE", &v)?;
        }
        if let Some(v) = std::env::var("EQUIMODAL_MAX_WORKGROUPS_PER_DIM").ok().filter(|v| !v.trim().is_empty()) {
            let n = v.trim().parse::<u32>().ok().filter(|&n| n > 0);
            o.max_workgroups_per_dim = Some(n.ok_or_else(|| Error::config("EQUIMODAL_MAX_WORKGROUPS_PER_DIM", format!("must be a whole number of workgroups >= 1, got `{v}`")))?);
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
        let memory_limit = std::env::var("EQUIMODAL_MEMORY_LIMIT").ok().and_then(|v| parse_bytes("EQUIMODAL_MEMORY_LIMIT", &v).ok());
        let pool_trace = std::env::var_os("EQUIMODAL_POOL_TRACE").filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
        let tune = std::env::var("EQUIMODAL_TUNE").ok().and_then(|v| TuneMode::parse("EQUIMODAL_TUNE", &v).ok()).unwrap_or(TuneMode::Quick);
        GpuOptions {
            backends,
            adapter_name,
            power: wgpu::PowerPreference::HighPerformance,
            profile,
            checked_kernels,
            max_workgroups_per_dim,
            pool_canary,
            strict_probe: false,
            memory_limit,
            pool_trace,
            tune,
            tune_cache: TuneStore::Default,
        }
    }
}

/// Optional capabilities the engine uses when present.
#[derive(Clone, Copy, Debug, Default)]
pub struct Capabilities {
    /// Timestamp queries between passes (`GpuTimer`, the profiler).
    pub timestamps: bool,
    /// Timestamp queries inside encoders.
    pub timestamps_in_encoders: bool,
    /// `f16` in shaders (requested when present; the cooperative-matrix kernel uses it).
    pub f16: bool,
    /// Subgroup operations in shaders (requested when present).
    pub subgroups: bool,
    /// Cooperative matrices (tensor cores; wgpu's experimental feature, requested when the
    /// adapter has it), with f16 and subgroups of exactly 32: the matmul family's `coop`
    /// kernel can run.
    pub cooperative_matrix: bool,
}

/// One adapter as seen by [`list_adapters`].
#[derive(Clone, Debug)]
pub struct AdapterReport {
    /// Name, vendor, backend, device type and driver.
    pub info: wgpu::AdapterInfo,
    /// The adapter's optional features.
    pub features: wgpu::Features,
    /// The adapter's limits (a device is opened with these, not wgpu's defaults).
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

pub(super) fn instance(backends: wgpu::Backends) -> wgpu::Instance {
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

/// Open a device on the adapter `options` select (GL only as a last resort), with the
/// adapter's own limits and the optional features the engine uses when present.
pub(super) fn open(options: &GpuOptions) -> Result<(wgpu::Device, wgpu::Queue, wgpu::AdapterInfo)> {
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
        | wgpu::Features::SUBGROUP
        | wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX;
    let features = adapter.features() & want;
    let limits = adapter.limits();
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("equimodal"),
        required_features: features,
        required_limits: limits,
        // SAFETY: the only experimental feature requested is cooperative matrices, used by one
        // kernel that the tuner runs only after it passed a correctness probe against the
        // reference kernel (wgpu's caveat: its implementation may still have bugs).
        experimental_features: if features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            unsafe { wgpu::ExperimentalFeatures::enabled() }
        } else {
            wgpu::ExperimentalFeatures::disabled()
        },
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .map_err(|e| Error::Device(e.to_string()))?;
    Ok((device, queue, adapter.get_info()))
}

impl Capabilities {
    /// What `device` (of the adapter described by `info`) was opened with.
    pub(super) fn of(device: &wgpu::Device, info: &wgpu::AdapterInfo) -> Capabilities {
        let f = device.features();
        Capabilities {
            timestamps: f.contains(wgpu::Features::TIMESTAMP_QUERY),
            timestamps_in_encoders: f.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS),
            f16: f.contains(wgpu::Features::SHADER_F16),
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            cooperative_matrix: f.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX | wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP)
                && info.subgroup_min_size == 32
                && info.subgroup_max_size == 32,
        }
    }
}
