//! Checkpoints: one safetensors file holding the model's parameters and buffers
//! (`model.<name>`), the optimizer state (`optim.<name>`) and a JSON metadata record (epoch,
//! method state, best score, config). Written atomically: a temporary file in the same
//! directory, flushed to disk, then renamed over the old one; the temporary file is removed
//! when any step fails, and [`remove_stale_temps`] clears those a killed process left.
//!
//! Integrity: a CRC-32 over the metadata text and every tensor (name, shape, bytes, in name
//! order) is stored as the field `crc32` of the metadata record and verified by [`load`], so
//! a flipped byte or an edited epoch counter is reported as a corrupt file, never trained
//! on. It lives inside the one metadata entry because safetensors writes its metadata map
//! in hash order: two entries would make the same checkpoint differ byte for byte between
//! processes, and exact resume is checked by comparing bytes.
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// One tensor on the host: name (without the `model.`/`optim.` prefix), shape, values row-major.
pub type HostTensor = (String, Vec<usize>, Vec<f32>);

/// A checkpoint as read by [`load`], checksum verified.
pub struct Checkpoint {
    /// Model parameters and buffers.
    pub model: Vec<HostTensor>,
    /// Optimizer state.
    pub optim: Vec<HostTensor>,
    /// The metadata record (epoch, method state, best score, config), without `crc32`.
    pub meta: serde_json::Value,
}

/// Prefix of the temporary files [`write_atomic`] creates next to their target.
const TMP_MARK: &str = ".tmp-";

/// Write `bytes` to `path` so that a crash leaves either the old file or the new one. On
/// failure the temporary file is removed (a full disk must not keep filling up).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tmp = dir.join(format!(
        ".{}{TMP_MARK}{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint"),
        std::process::id()
    ));
    let written = write_synced(&tmp, bytes, path).and_then(|()| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return written;
    }
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn write_synced(tmp: &Path, bytes: &[u8], target: &Path) -> Result<()> {
    let mut f = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let fault = super::fault::Fault::for_write(target);
    let cut = if fault.is_some() { bytes.len() / 2 } else { bytes.len() };
    f.write_all(&bytes[..cut]).map_err(|e| Error::io(tmp, e))?;
    if let Some(fault) = fault {
        f.sync_all().map_err(|e| Error::io(tmp, e))?;
        return Err(Error::io(tmp, fault.trigger()));
    }
    f.sync_all().map_err(|e| Error::io(tmp, e))
}

/// Remove temporary files of [`write_atomic`] in `dir` (not recursive), except those whose
/// writer's pid (the name's suffix) `keep` accepts. Removing a live writer's file is only
/// safe while the caller holds the run directory's lock. Returns the files removed and
/// their total size.
pub fn remove_stale_temps(dir: &Path, keep: impl Fn(u32) -> bool) -> Result<(Vec<std::path::PathBuf>, u64)> {
    let mut removed = (Vec::new(), 0);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, pid)) = name.rsplit_once(TMP_MARK).filter(|_| name.starts_with('.')) else { continue };
        if pid.parse::<u32>().is_ok_and(&keep) {
            continue;
        }
        let path = entry.path();
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        removed.0.push(path);
        removed.1 += size;
    }
    Ok(removed)
}

/// Download named tensors to the host.
pub fn download(named: &[(String, Tensor)]) -> Result<Vec<HostTensor>> {
    named.iter().map(|(n, t)| Ok((n.clone(), t.shape().to_vec(), t.to_vec().map_err(|e| e.during(format_args!("checkpoint: tensor `{n}`")))?))).collect()
}

/// Field of the metadata record that holds the checksum (lowercase hex CRC-32, see the
/// module docs).
pub const CHECKSUM_KEY: &str = "equimodal_crc32";

/// CRC-32 over the metadata text and the tensors in name order (the file's own order is
/// not stable, so both writer and reader sort).
fn checksum(meta: &str, tensors: &mut [(&str, &[usize], &[u8])]) -> String {
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    let mut crc = flate2::Crc::new();
    crc.update(meta.as_bytes());
    for (name, shape, bytes) in tensors.iter() {
        crc.update(name.as_bytes());
        crc.update(&[0]);
        for d in shape.iter() {
            crc.update(&(*d as u64).to_le_bytes());
        }
        crc.update(bytes);
    }
    format!("{:08x}", crc.sum())
}

/// Write a checkpoint atomically to `path`, adding the checksum to `meta` (which must be a
/// JSON object); errors name the file.
pub fn save(path: &Path, model: &[HostTensor], optim: &[HostTensor], meta: &serde_json::Value) -> Result<()> {
    let mut views = Vec::new();
    let mut parts: Vec<(String, &[usize], &[u8])> = Vec::new();
    for (prefix, list) in [("model", model), ("optim", optim)] {
        for (name, shape, data) in list {
            let bytes: &[u8] = bytemuck::cast_slice(data);
            let v = TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map_err(|e| Error::data(path.display().to_string(), format!("tensor {name}: {e}")))?;
            views.push((format!("{prefix}.{name}"), v));
            parts.push((format!("{prefix}.{name}"), shape, bytes));
        }
    }
    let meta_text = meta.to_string();
    let mut refs: Vec<(&str, &[usize], &[u8])> = parts.iter().map(|(n, s, b)| (n.as_str(), *s, *b)).collect();
    let mut sealed = meta.clone();
    let record = sealed.as_object_mut().ok_or_else(|| Error::data(path.display().to_string(), "checkpoint metadata must be a JSON object"))?;
    record.insert(CHECKSUM_KEY.to_string(), serde_json::Value::String(checksum(&meta_text, &mut refs)));
    let mut info = HashMap::new();
    info.insert("equimodal".to_string(), sealed.to_string());
    let bytes = safetensors::serialize(views, Some(info)).map_err(|e| Error::data(path.display().to_string(), e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Read and verify a checkpoint; a data error naming the file when it is not an equimodal
/// checkpoint, is corrupt or fails its checksum, or holds a non-F32 tensor.
pub fn load(path: &Path) -> Result<Checkpoint> {
    // a regular file of any size (a device such as /dev/zero would be read without end)
    let bytes = crate::limits::read_regular(path, u64::MAX)?;
    let p = path.display().to_string();
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| Error::data(&p, format!("not a safetensors checkpoint: {e}")))?;
    let info = header.metadata().as_ref();
    let meta_text = info
        .and_then(|m| m.get("equimodal"))
        .ok_or_else(|| Error::data(&p, "no equimodal metadata: not a checkpoint written by equimodal"))?;
    let mut meta: serde_json::Value = serde_json::from_str(meta_text).map_err(|e| Error::data(&p, format!("corrupt metadata: {e}")))?;
    // the checksum covers the record without itself (serialised again: serde_json writes
    // keys in order and numbers in their shortest form, so this is the text that was summed)
    let stored_sum = meta.as_object_mut().and_then(|m| m.remove(CHECKSUM_KEY)).and_then(|v| v.as_str().map(str::to_string));
    let meta_text = &meta.to_string();
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::data(&p, format!("corrupt tensors: {e}")))?;
    let tensors = st.tensors();
    verify_checksum(&p, meta_text, stored_sum.as_deref(), &tensors)?;
    let mut model = Vec::new();
    let mut optim = Vec::new();
    for (name, view) in tensors {
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

/// Compare the stored checksum with the file's contents. Files written before checksums
/// existed have none: they load with a warning (there is nothing to verify against).
fn verify_checksum(file: &str, meta: &str, stored: Option<&str>, tensors: &[(String, TensorView<'_>)]) -> Result<()> {
    let Some(stored) = stored else {
        eprintln!("warning: {file} has no checksum (written by an older equimodal); its contents are not verified");
        return Ok(());
    };
    let mut refs: Vec<(&str, &[usize], &[u8])> = tensors.iter().map(|(n, v)| (n.as_str(), v.shape(), v.data())).collect();
    let actual = checksum(meta, &mut refs);
    if actual != stored {
        return Err(Error::data(
            file,
            format!("checksum mismatch (stored {stored}, contents {actual}): the checkpoint is corrupt or was edited; restore it from a copy or start a new run"),
        ));
    }
    Ok(())
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
        t.write(&s.2).map_err(|e| e.during(format_args!("restoring tensor `{name}` from {}", file.display())))?;
    }
    Ok(())
}
