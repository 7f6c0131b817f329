//! Every WGSL file parses and validates with naga, and translates to SPIR-V (the Vulkan path).
use std::path::Path;

fn validate(path: &Path) -> Result<(), String> {
    let src = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| e.emit_to_string(&src))?;
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
        .validate(&module)
        .map_err(|e| format!("{e:?}"))?;
    naga::back::spv::write_vec(&module, &info, &naga::back::spv::Options::default(), None).map_err(|e| format!("spir-v: {e}"))?;
    if module.entry_points.is_empty() {
        return Err("no entry points".into());
    }
    Ok(())
}

#[test]
fn every_shader_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut n = 0;
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) == Some("wgsl") {
            n += 1;
            if let Err(e) = validate(&p) {
                failures.push(format!("{}: {e}", p.display()));
            }
        }
    }
    assert!(n >= 2, "expected shader files in {}", dir.display());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
