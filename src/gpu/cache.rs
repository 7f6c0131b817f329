//! Kernel cache: shader modules, bind group layouts and pipelines are built once and
//! looked up by (shader, entry point, override constants).
use std::collections::HashMap;
use std::sync::Arc;

/// How a storage binding is accessed by a kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    Read,
    ReadWrite,
}

/// A compute kernel: one entry point of one WGSL file. Binding 0 of group 0 is always the
/// uniform parameter block; bindings 1..=n are storage buffers with the given access.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Shader family (file name without extension), used as the cache key.
    pub shader: &'static str,
    pub source: &'static str,
    pub entry: &'static str,
    pub bindings: &'static [Access],
}

pub(crate) struct CachedPipeline {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: Arc<wgpu::BindGroupLayout>,
    /// "shader::entry", for the profiler
    pub(crate) name: String,
}

#[derive(Default)]
pub(crate) struct KernelCache {
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    layouts: HashMap<Vec<Access>, Arc<wgpu::BindGroupLayout>>,
    pipelines: HashMap<(&'static str, &'static str, String), Arc<CachedPipeline>>,
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
    ) -> Arc<CachedPipeline> {
        let key = (k.shader, k.entry, constants_key(constants));
        if let Some(p) = self.pipelines.get(&key) {
            return p.clone();
        }
        let module = self.modules.entry(k.shader).or_insert_with(|| {
            let desc = wgpu::ShaderModuleDescriptor {
                label: Some(k.shader),
                source: wgpu::ShaderSource::Wgsl(k.source.into()),
            };
            if checked {
                device.create_shader_module(desc)
            } else {
                // SAFETY: every kernel's indexing is exercised by the checked test suite
                // (tests run the same kernels with runtime checks on and compare against CPU
                // references); the kernels guard their own bounds explicitly.
                unsafe { device.create_shader_module_trusted(desc, wgpu::ShaderRuntimeChecks::unchecked()) }
            }
        });
        let layout = self
            .layouts
            .entry(k.bindings.to_vec())
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
                for (i, a) in k.bindings.iter().enumerate() {
                    entries.push(wgpu::BindGroupLayoutEntry {
                        binding: i as u32 + 1,
                        visibility: wgpu::ShaderStages::COMPUTE,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Storage { read_only: *a == Access::Read },
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
        let p = Arc::new(CachedPipeline { pipeline, layout, name: format!("{}::{}", k.shader, k.entry) });
        self.pipelines.insert(key, p.clone());
        p
    }
}
