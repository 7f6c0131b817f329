//! Each kernel's interface is defined once, in Rust, and checked here against naga's
//! reflection of the WGSL module it runs: every module parses, validates and translates to
//! SPIR-V; every kernel's entry point exists; the uniform struct it reads has the fields,
//! offsets and size of the Rust parameter block; the storage buffers it uses are among the
//! bindings Rust declares, with the same access; every entry point of every module has a
//! kernel; and the op codes and shared constants agree.
use crate::common::repo_root;
use equimodal::gpu::{Access, Coop, Kernel, ParamsLayout, Shader};
use naga::valid::{Capabilities, ModuleInfo, ValidationFlags, Validator};
use std::collections::{BTreeMap, BTreeSet};

fn all_kernels() -> Vec<Kernel> {
    let mut k = equimodal::gpu::kernels();
    k.extend(equimodal::ops::kernels());
    k.extend(equimodal::optim::kernels());
    k
}

fn parse(shader: Shader) -> Result<(naga::Module, ModuleInfo), String> {
    let src = shader.source().map_err(|e| e.to_string())?;
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all()).validate(&module).map_err(|e| format!("{e:?}"))?;
    to_spirv(&module, &info, &[])?;
    Ok((module, info))
}

/// SPIR-V of `module` with its override constants set as a pipeline would set them (the
/// others at their defaults), as the driver receives it.
fn to_spirv(module: &naga::Module, info: &ModuleInfo, constants: &[(&str, f64)]) -> Result<(), String> {
    let mut pc = naga::back::PipelineConstants::default();
    for (k, v) in constants {
        pc.insert(k.to_string(), *v);
    }
    let (m, i) = naga::back::pipeline_constants::process_overrides(module, info, None, &pc).map_err(|e| format!("overrides {constants:?}: {e}"))?;
    naga::back::spv::write_vec(&m, &i, &naga::back::spv::Options::default(), None).map_err(|e| format!("spir-v {constants:?}: {e}"))?;
    Ok(())
}

/// The matmul module's override constants are exactly the ones its launches set, and every
/// form (each transposition, scale and bias combination, each K-slice depth of the 128x128
/// tile) translates.
#[test]
fn every_matmul_form_translates() {
    let (module, info) = parse(Shader::Matmul).unwrap();
    let declared: BTreeSet<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
    let launched: BTreeSet<&str> = equimodal::ops::MATMUL_OVERRIDES.into_iter().collect();
    assert_eq!(declared, launched);
    // the flags are 0 or 1; the slice depth (which sizes the workgroup tiles) 8 or 16
    let value = |name: &str, bit: u32| match name {
        "CORE_BK" => [8.0, equimodal::ops::TILE128_DEEP_BK as f64][bit as usize],
        _ => bit as f64,
    };
    for form in 0..1u32 << equimodal::ops::MATMUL_OVERRIDES.len() {
        let constants: Vec<(&str, f64)> = equimodal::ops::MATMUL_OVERRIDES.iter().enumerate().map(|(i, k)| (*k, value(k, (form >> i) & 1))).collect();
        to_spirv(&module, &info, &constants).unwrap();
    }
}

/// The cooperative-matrix matmul translates to SPIR-V in every form its launches set
/// (transposes, bias, ReLU, which operand is f32), on tensor cores and emulated. naga 30's SPIR-V writer panics on
/// a `coopLoadT` / `coopStoreT` whose pointer index is computed inside the call; this is the
/// guard that the kernel keeps binding its indices with `let` first (no lavapipe has
/// cooperative matrices, so translation is what CI can check of the hardware form; the
/// emulated form runs in the op tests).
#[test]
fn every_coop_matmul_form_translates() {
    let names = ["TRANS_A", "TRANS_B", "BIAS", "RELU", "F32_A", "F32_B"];
    for coop in [Coop::Hardware, Coop::Emulated] {
        let (module, info) = parse(Shader::MatmulCoop(coop)).unwrap();
        let declared: BTreeSet<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
        assert_eq!(declared, BTreeSet::from(names));
        // at most one operand f32
        for form in (0..64u32).filter(|f| f >> 4 != 3) {
            let constants: Vec<(&str, f64)> = names.iter().enumerate().map(|(i, k)| (*k, ((form >> i) & 1) as f64)).collect();
            to_spirv(&module, &info, &constants).unwrap();
        }
    }
}

/// Every attention instantiation translates with f32 and with f16 q, k and v (`HALF`, the
/// only override constant its launches set).
#[test]
fn every_attention_form_translates() {
    for t in equimodal::gpu::ATTENTION_TILES {
        let (module, info) = parse(t.shader()).unwrap();
        let declared: BTreeSet<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
        assert_eq!(declared, BTreeSet::from(["HALF"]), "{:?}", t.shader());
        for half in [0.0, 1.0] {
            to_spirv(&module, &info, &[("HALF", half)]).unwrap();
        }
    }
}

/// Every convolution instantiation translates with each combination of its f16 constants
/// (`HALF_X`, `HALF_W` for the operands, `HALF_Y` for the output's rounding) and of its
/// interior form (`INTERIOR`), the only override constants its launches set.
#[test]
fn every_conv_form_translates() {
    let names = ["HALF_X", "HALF_W", "HALF_Y", "INTERIOR"];
    for tile in equimodal::gpu::ConvTile::ALL {
        let (module, info) = parse(Shader::Conv(tile)).unwrap();
        let declared: BTreeSet<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
        assert_eq!(declared, BTreeSet::from(names), "{tile:?}");
        for form in 0..16u32 {
            let constants: Vec<(&str, f64)> = names.iter().enumerate().map(|(i, k)| (*k, ((form >> i) & 1) as f64)).collect();
            to_spirv(&module, &info, &constants).unwrap();
        }
    }
}

/// The cooperative-matrix convolution forward translates to SPIR-V with and without the
/// f16 rounding of its output (`HALF_Y`, the only override constant its launches set), on
/// tensor cores and emulated: the guard for naga's cooperative-load panic.
#[test]
fn every_coop_conv_form_translates() {
    for coop in [Coop::Hardware, Coop::Emulated] {
        let (module, info) = parse(Shader::ConvCoop(coop)).unwrap();
        let declared: BTreeSet<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
        assert_eq!(declared, BTreeSet::from(["HALF_Y"]));
        for half in [0.0, 1.0] {
            to_spirv(&module, &info, &[("HALF_Y", half)]).unwrap();
        }
    }
}

/// The cooperative-matrix attention forward translates to SPIR-V, on tensor cores and
/// emulated (it sets no override constants): the guard for naga's cooperative-load panic.
#[test]
fn the_coop_attention_translates() {
    for coop in [Coop::Hardware, Coop::Emulated] {
        let (module, info) = parse(Shader::AttentionCoop(coop)).unwrap();
        assert!(module.overrides.is_empty());
        to_spirv(&module, &info, &[]).unwrap();
    }
}

/// The normalisation module translates in every form its launches set: batch norm's input
/// f32 or f16 (`HALF_X`), and `bn_apply`'s residual, ReLU and f16 output (`RESIDUAL`, `RELU`,
/// `HALF_Y`), each combination.
#[test]
fn every_norm_form_translates() {
    let (module, info) = parse(Shader::Norm).unwrap();
    let declared: BTreeSet<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
    let names = ["HALF_X", "RESIDUAL", "RELU", "HALF_Y"];
    assert_eq!(declared, BTreeSet::from(names));
    for bits in 0..16u32 {
        let consts: Vec<(&str, f64)> = names.iter().enumerate().map(|(i, &n)| (n, ((bits >> i) & 1) as f64)).collect();
        to_spirv(&module, &info, &consts).unwrap();
    }
}

/// The element-wise module translates for each op code its launches set (`OP`) and each form
/// of what a ReLU kept (`KEPT`: its f32 output, a bit mask, its f16 output).
#[test]
fn every_elementwise_form_translates() {
    use equimodal::ops::{Binary, Unary};
    let (module, info) = parse(Shader::Elementwise).unwrap();
    let declared: BTreeSet<&str> = module.overrides.iter().filter_map(|(_, o)| o.name.as_deref()).collect();
    assert_eq!(declared, BTreeSet::from(["OP", "KEPT"]));
    let ops = Unary::ALL.iter().map(|&o| o as u32).chain(Binary::ALL.iter().map(|&o| o as u32)).collect::<BTreeSet<_>>();
    for op in ops {
        to_spirv(&module, &info, &[("OP", op as f64)]).unwrap();
    }
    for kept in 0..3 {
        to_spirv(&module, &info, &[("KEPT", kept as f64)]).unwrap();
    }
}

/// (name, offset, size) of the named (non-padding) fields, and the total size, of a WGSL struct.
fn wgsl_layout(module: &naga::Module, ty: naga::Handle<naga::Type>) -> Result<(String, Vec<(String, u32, u32)>, u32), String> {
    let mut layouter = naga::proc::Layouter::default();
    layouter.update(module.to_ctx()).map_err(|e| format!("{e:?}"))?;
    let t = &module.types[ty];
    let naga::TypeInner::Struct { members, span } = &t.inner else {
        return Err(format!("binding 0 is not a struct: {:?}", t.inner));
    };
    let fields = members
        .iter()
        .filter_map(|m| {
            let name = m.name.clone().unwrap_or_default();
            (!name.starts_with('_')).then(|| (name, m.offset, layouter[m.ty].size))
        })
        .collect();
    Ok((t.name.clone().unwrap_or_default(), fields, *span))
}

fn rust_layout(p: &ParamsLayout) -> (String, Vec<(String, u32, u32)>, u32) {
    let fields =
        p.fields.iter().filter(|f| !f.name.starts_with('_')).map(|f| (f.name.to_string(), f.offset as u32, f.size as u32)).collect();
    (p.wgsl_struct.to_string(), fields, p.size as u32)
}

/// Check one kernel against its module; the problems found, if any.
fn check_kernel(k: &Kernel, module: &naga::Module, info: &ModuleInfo) -> Vec<String> {
    let name = k.name();
    let Some(ep) = module.entry_points.iter().position(|e| e.name == k.entry) else {
        return vec![format!("{name}: no entry point `{}` in the module", k.entry)];
    };
    let uses = info.get_entry_point(ep);
    let mut problems = Vec::new();
    for (h, var) in module.global_variables.iter() {
        let Some(b) = &var.binding else { continue };
        if uses[h].is_empty() {
            continue;
        }
        let var_name = var.name.clone().unwrap_or_default();
        if b.group != 0 {
            problems.push(format!("{name}: `{var_name}` is in group {}, kernels bind group 0 only", b.group));
            continue;
        }
        if b.binding == 0 {
            if var.space != naga::AddressSpace::Uniform {
                problems.push(format!("{name}: binding 0 (`{var_name}`) must be the uniform parameter block"));
                continue;
            }
            match wgsl_layout(module, var.ty) {
                Ok(wgsl) if wgsl == rust_layout(k.params) => {}
                Ok(wgsl) => problems.push(format!("{name}: parameter block differs\n  WGSL: {wgsl:?}\n  Rust: {:?}", rust_layout(k.params))),
                Err(e) => problems.push(format!("{name}: {e}")),
            }
            continue;
        }
        let Some(rust) = k.bindings.get(b.binding as usize - 1) else {
            problems.push(format!("{name}: uses binding {} (`{var_name}`), Rust declares {} storage bindings", b.binding, k.bindings.len()));
            continue;
        };
        let wgsl = match var.space {
            naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE) => Access::ReadWrite,
            naga::AddressSpace::Storage { .. } => Access::Read,
            other => {
                problems.push(format!("{name}: binding {} (`{var_name}`) is {other:?}, not storage", b.binding));
                continue;
            }
        };
        if wgsl != *rust {
            problems.push(format!("{name}: binding {} (`{var_name}`) is {wgsl:?} in WGSL, {rust:?} in Rust", b.binding));
        }
    }
    problems
}

#[test]
fn every_kernel_matches_its_wgsl_module() {
    let kernels = all_kernels();
    let mut problems = Vec::new();
    let mut covered: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for shader in Shader::ALL {
        let (module, info) = match parse(shader) {
            Ok(m) => m,
            Err(e) => {
                problems.push(format!("{}: {e}", shader.name()));
                continue;
            }
        };
        let mine: Vec<&Kernel> = kernels.iter().filter(|k| k.shader == shader).collect();
        for k in &mine {
            problems.extend(check_kernel(k, &module, &info));
            covered.entry(shader.name()).or_default().insert(k.entry);
        }
        for e in module.entry_points.iter().filter(|e| e.stage == naga::ShaderStage::Compute) {
            if !mine.iter().any(|k| k.entry == e.name) {
                problems.push(format!("{}: entry point `{}` has no Rust kernel", shader.name(), e.name));
            }
        }
    }
    assert!(kernels.len() >= 60, "only {} kernels registered", kernels.len());
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

/// Named `u32` constants of a module with the given prefix, by name without it.
fn constants(module: &naga::Module, prefix: &str) -> BTreeMap<String, u32> {
    module
        .constants
        .iter()
        .filter_map(|(_, c)| {
            let name = c.name.as_deref()?.strip_prefix(prefix)?.to_string();
            match module.global_expressions[c.init] {
                naga::Expression::Literal(naga::Literal::U32(v)) => Some((name, v)),
                _ => None,
            }
        })
        .collect()
}

fn codes<T: std::fmt::Debug + Copy>(all: &[T], code: impl Fn(T) -> u32) -> BTreeMap<String, u32> {
    all.iter().map(|&op| (format!("{op:?}").to_uppercase(), code(op))).collect()
}

#[test]
fn op_codes_and_shared_constants_agree() {
    use equimodal::ops::{Binary, ReduceOp, Unary};
    let (elementwise, _) = parse(Shader::Elementwise).unwrap();
    assert_eq!(constants(&elementwise, "UNARY_"), codes(&Unary::ALL, |o| o as u32), "UNARY_* in elementwise.wgsl vs ops::Unary");
    assert_eq!(constants(&elementwise, "BINARY_"), codes(&Binary::ALL, |o| o as u32), "BINARY_* in elementwise.wgsl vs ops::Binary");
    let (reduce, _) = parse(Shader::Reduce).unwrap();
    assert_eq!(constants(&reduce, "REDUCE_"), codes(&ReduceOp::ALL, |o| o as u32), "REDUCE_* in reduce.wgsl vs ops::ReduceOp");
    for shader in Shader::ALL {
        let (module, _) = parse(shader).unwrap();
        let wg = constants(&module, "").get("WG").copied();
        assert_eq!(wg, Some(equimodal::gpu::WG), "{}: WG (shaders/common.wgsl) vs gpu::WG", shader.name());
    }
}

/// The check must see a drifted struct: a Rust layout with one field moved is reported.
#[test]
fn a_drifted_parameter_block_is_reported() {
    let k = equimodal::ops::kernels().into_iter().find(|k| k.shader == Shader::Elementwise && k.entry == "unary").unwrap();
    let (module, info) = parse(Shader::Elementwise).unwrap();
    assert!(check_kernel(&k, &module, &info).is_empty());
    let mut fields = k.params.fields.to_vec();
    fields.swap(0, 2); // n and ndim (field 1 is padding, which only counts through offsets)
    let drifted = ParamsLayout { fields: Box::leak(fields.into_boxed_slice()), ..*k.params };
    let bad = Kernel { params: Box::leak(Box::new(drifted)), ..k };
    let found = check_kernel(&bad, &module, &info);
    assert!(found.iter().any(|p| p.contains("parameter block differs")), "{found:?}");
    let fewer = Kernel { bindings: &[Access::Read], ..k };
    assert!(check_kernel(&fewer, &module, &info).iter().any(|p| p.contains("declares 1 storage bindings")));
}

/// Every WGSL file is a module of [`Shader`] (so the checks above see it), or the shared
/// prelude.
#[test]
fn every_wgsl_file_is_a_registered_module() {
    let dir = repo_root().join("shaders");
    let names: BTreeSet<&str> = Shader::ALL.iter().map(|s| s.name()).collect();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let Some(stem) = p.file_stem().and_then(|s| s.to_str()).filter(|_| p.extension().is_some_and(|e| e == "wgsl")) else { continue };
        files += 1;
        // a family instantiated several times registers `<file>_<variant>` modules
        let registered = equimodal::gpu::FRAGMENTS.contains(&stem) || names.contains(stem) || names.iter().any(|n| n.starts_with(&format!("{stem}_")));
        assert!(registered, "{} is not a module of gpu::Shader", p.display());
    }
    assert!(files >= 15, "expected the shader files in {}", dir.display());
}
