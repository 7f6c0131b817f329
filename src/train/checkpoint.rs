//! Checkpoints: one safetensors file holding the model's parameters and buffers
//! (`model.<name>`), the optimizer state (`optim.<name>`) and a JSON metadata record (epoch,
//! method state, best score, config). Written atomically: a temporary file in the same
//! directory, flushed to disk, then renamed over the old one.
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

pub type HostTensor = (String, Vec<usize>, Vec<f32>);

pub struct Checkpoint {
    pub model: Vec<HostTensor>,
    pub optim: Vec<HostTensor>,
    pub meta: serde_json::Value,
}

/// Write `bytes` to `path` so that a crash leaves either the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint"),
        std::process::id()
    ));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Download named tensors to the host.
pub fn download(named: &[(String, Tensor)]) -> Result<Vec<HostTensor>> {
    named.iter().map(|(n, t)| Ok((n.clone(), t.shape().to_vec(), t.to_vec()?))).collect()
}

pub fn save(path: &Path, model: &[HostTensor], optim: &[HostTensor], meta: &serde_json::Value) -> Result<()> {
    let mut views = Vec::new();
    for (prefix, list) in [("model", model), ("optim", optim)] {
        for (name, shape, data) in list {
            let bytes: &[u8] = bytemuck::cast_slice(data);
            let v = TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map_err(|e| Error::data(path.display().to_string(), format!("tensor {name}: {e}")))?;
            views.push((format!("{prefix}.{name}"), v));
        }
    }
    let mut info = HashMap::new();
    info.insert("equimodal".to_string(), meta.to_string());
    let bytes = safetensors::serialize(views, Some(info)).map_err(|e| Error::data(path.display().to_string(), e.to_string()))?;
    write_atomic(path, &bytes)
}

pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let p = path.display().to_string();
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::data(&p, format!("not a safetensors checkpoint: {e}")))?;
    let meta_text = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("equimodal"))
        .ok_or_else(|| Error::data(&p, "no equimodal metadata: not a checkpoint written by equimodal"))?;
    let meta: serde_json::Value = serde_json::from_str(meta_text).map_err(|e| Error::data(&p, format!("corrupt metadata: {e}")))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::data(&p, format!("corrupt tensors: {e}")))?;
    let mut model = Vec::new();
    let mut optim = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::data(&p, format!("tensor {name}: dtype {:?}, expected F32", view.dtype())));
        }
        let data: Vec<f32> = bytemuck::pod_collect_to_vec(view.data());
        let entry = (String::new(), view.shape().to_vec(), data);
        if let Some(n) = name.strip_prefix("model.") {
            model.push((n.to_string(), entry.1, entry.2));
        } else if let Some(n) = name.strip_prefix("optim.") {
            optim.push((n.to_string(), entry.1, entry.2));
        }
    }
    Ok(Checkpoint { model, optim, meta })
}

/// Copy host tensors into the named device tensors; every name must be present with the
/// same shape (errors name the tensor and the file).
pub fn restore_tensors(file: &Path, saved: &[HostTensor], into: &[(String, Tensor)]) -> Result<()> {
    let map: HashMap<&str, &HostTensor> = saved.iter().map(|t| (t.0.as_str(), t)).collect();
    for (name, t) in into {
        let s = map
            .get(name.as_str())
            .ok_or_else(|| Error::data(file.display().to_string(), format!("checkpoint has no tensor `{name}`")))?;
        if s.1 != t.shape() {
            return Err(Error::data(
                file.display().to_string(),
                format!("tensor `{name}` has shape {:?} in the checkpoint, the model expects {:?}", s.1, t.shape()),
            ));
        }
        t.write(&s.2)?;
    }
    Ok(())
}
