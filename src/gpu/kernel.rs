//! Kernels and their cache. A kernel is one entry point of one WGSL module ([`Shader`]),
//! with the storage bindings it takes and the layout of its uniform parameter block; the
//! cache builds each module, bind group layout and pipeline once and looks them up by
//! (shader, entry point, override constants).
//!
//! Each kernel's interface is written in Rust once, with `gpu_params!` (a crate-private
//! macro in this file): the struct's layout is recorded beside it ([`ParamsLayout`]), and a test
//! (`tests/gpu/kernels.rs`) checks every kernel against naga's reflection of its WGSL module
//! (the parameter struct's field names, offsets and sizes, the storage bindings and their
//! access), so the two sides cannot drift apart unnoticed.
use super::shaders::Shader;
use std::collections::HashMap;
use std::sync::Arc;

/// How a storage binding is accessed by a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Read only (`var<storage, read>`).
    Read,
    /// Read and written (`var<storage, read_write>`).
    ReadWrite,
}

/// One field of a parameter block as Rust lays it out.
#[derive(Clone, Copy, Debug)]
pub struct ParamsField {
    /// The field's name, as in the WGSL struct.
    pub name: &'static str,
    /// Byte offset from the start of the block.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

/// The layout of a uniform parameter block as Rust lays it out (`#[repr(C)]`), recorded by
/// `gpu_params!` (a crate-private macro in this file) and compared with the WGSL struct of
/// the same name. Fields whose name starts with `_` are padding: only their effect on the
/// offsets of the others and on the total size is compared.
#[derive(Clone, Copy, Debug)]
pub struct ParamsLayout {
    /// Name of the WGSL struct bound at group 0, binding 0.
    pub wgsl_struct: &'static str,
    /// Total size in bytes (`size_of` of the Rust struct).
    pub size: usize,
    /// The fields in declaration order, padding included.
    pub fields: &'static [ParamsField],
}

/// Define a kernel's uniform parameter block: a `#[repr(C)]` plain-old-data struct plus its
/// [`ParamsLayout`] as the associated const `LAYOUT`, naming the WGSL struct it mirrors.
///
/// ```ignore
/// gpu_params! {
///     struct Params as "Params" { n: u32, op: u32, a: f32, _p: u32 }
/// }
/// ```
macro_rules! gpu_params {
    ($(#[$m:meta])* $vis:vis struct $name:ident as $wgsl:literal {
        $($(#[$fm:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
    }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $name {
            $($(#[$fm])* $fvis $field: $ty),*
        }
        impl $name {
            /// This struct's layout, for the check against the WGSL struct it mirrors.
            #[allow(dead_code)]
            $vis const LAYOUT: $crate::gpu::ParamsLayout = $crate::gpu::ParamsLayout {
                wgsl_struct: $wgsl,
                size: ::std::mem::size_of::<$name>(),
                fields: &[$($crate::gpu::ParamsField {
                    name: stringify!($field),
                    offset: ::std::mem::offset_of!($name, $field),
                    size: ::std::mem::size_of::<$ty>(),
                }),*],
            };
        }
    };
}
pub(crate) use gpu_params;

/// A compute kernel: one entry point of one WGSL module. Binding 0 of group 0 is always the
/// uniform parameter block (`params`); bindings 1..=n are storage buffers with the given
/// access.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// The WGSL module.
    pub shader: Shader,
    /// The entry point's name in the module.
    pub entry: &'static str,
    /// Access of storage bindings 1..=n, in binding order.
    pub bindings: &'static [Access],
    /// Layout of the uniform parameter block at binding 0.
    pub params: &'static ParamsLayout,
}

impl Kernel {
    /// A `const` so each op file can list its kernels in a static `KERNELS` table.
    pub const fn new(shader: Shader, entry: &'static str, bindings: &'static [Access], params: &'static ParamsLayout) -> Kernel {
        Kernel { shader, entry, bindings, params }
    }

    /// `shader::entry`, for messages and the profiler.
    pub fn name(&self) -> String {
        format!("{}::{}", self.shader.name(), self.entry)
    }
}

pub(crate) struct CachedPipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: Arc<wgpu::BindGroupLayout>,
    /// "shader::entry", for the profiler
    pub(crate) name: String,
}

#[derive(Default)]
pub(crate) struct KernelCache {
    modules: HashMap<Shader, wgpu::ShaderModule>,
    /// by storage binding count: every storage binding is read_write (see [`compiled_source`])
    layouts: HashMap<usize, Arc<wgpu::BindGroupLayout>>,
    pipelines: HashMap<(Shader, &'static str, String), Arc<CachedPipeline>>,
    pub(crate) compiled: u64,
}

fn constants_key(constants: &[(&str, f64)]) -> String {
    let mut s = String::new();
    for (k, v) in constants {
        s.push_str(k);
        s.push('=');
        s.push_str(&v.to_string());
        s.push(';');
    }
    s
}

impl KernelCache {
    pub(crate) fn get(
        &mut self,
        device: &wgpu::Device,
        checked: bool,
        k: &Kernel,
        constants: &[(&str, f64)],
    ) -> crate::error::Result<Arc<CachedPipeline>> {
        let key = (k.shader, k.entry, constants_key(constants));
        if let Some(p) = self.pipelines.get(&key) {
            return Ok(p.clone());
        }
        if !self.modules.contains_key(&k.shader) {
            let module = create_module(device, checked, k.shader)?;
            self.modules.insert(k.shader, module);
        }
        let module = &self.modules[&k.shader];
        let layout = self
            .layouts
            .entry(k.bindings.len())
            .or_insert_with(|| {
                let mut entries = vec![wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                }];
                for i in 0..k.bindings.len() {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: i as u32 + 1,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            // every storage binding is read_write in the compiled module
                            // (see `compiled_source`)
                            ty: wgpu::BufferBindingType::Storage { read_only: false },
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    });
                }
                Arc::new(device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("equimodal.layout"),
                    entries: &entries,
                }))
            })
            .clone();
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(k.entry),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(k.entry),
            layout: Some(&pl),
            module,
            entry_point: Some(k.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        self.compiled += 1;
        let p = Arc::new(CachedPipeline { pipeline, layout, name: k.name() });
        self.pipelines.insert(key, p.clone());
        Ok(p)
    }
}

/// The text the device compiles: the module with every `var<storage, read>` declared
/// `read_write`. Tensors are ranges of shared segments (`pool.rs`), and wgpu tracks usage
/// per buffer: one launch binding a segment read-only for an input and read-write for an
/// output would be a usage conflict. The WGSL files keep `read` where a kernel only reads
/// (what the interface test checks against [`Kernel::bindings`]).
pub fn compiled_source(shader: Shader) -> crate::error::Result<String> {
    Ok(shader.source()?.replace("var<storage, read>", "var<storage, read_write>"))
}

fn create_module(device: &wgpu::Device, checked: bool, shader: Shader) -> crate::error::Result<wgpu::ShaderModule> {
    let desc = wgpu::ShaderModuleDescriptor { label: Some(shader.name()), source: wgpu::ShaderSource::Wgsl(compiled_source(shader)?.into()) };
    if checked {
        Ok(device.create_shader_module(desc))
    } else {
        // SAFETY: every kernel's indexing is exercised by the checked test suite (tests run
        // the same kernels with runtime checks on and compare against CPU references); the
        // kernels guard their own bounds explicitly.
        Ok(unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) })
    }
}
