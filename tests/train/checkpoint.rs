//! The checkpoint file format directly (the trainer's use of it is in trainer.rs and
//! reliability.rs): the round trip, the checksum, restoring into device tensors and the
//! clean-up of temporary files a killed writer left.
use crate::common::*;
use equimodal::train::checkpoint::{self, HostTensor};
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("equimodal-ckpt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn tensors() -> (Vec<HostTensor>, Vec<HostTensor>) {
    let model = vec![("enc.w".to_string(), vec![2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-7, -4.25]), ("enc.b".to_string(), vec![3], vec![0.5, 0.25, 0.125])];
    let optim = vec![("step.enc.w".to_string(), vec![1], vec![3.0])];
    (model, optim)
}

#[test]
fn checkpoint_round_trip_keeps_names_shapes_values_and_metadata() {
    let dir = tmp("round-trip");
    let path = dir.join("sub/last.safetensors");
    let (model, optim) = tensors();
    let meta = serde_json::json!({ "epoch": 4, "best": 0.8125, "method": { "noise_offset": 12 } });
    checkpoint::save(&path, &model, &optim, &meta).unwrap();
    let ck = checkpoint::load(&path).unwrap();
    let sorted = |mut v: Vec<HostTensor>| {
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert_eq!(sorted(ck.model), sorted(model));
    assert_eq!(ck.optim, optim);
    assert_eq!(ck.meta, meta, "the metadata record, without the checksum field");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoint_with_a_changed_value_fails_its_checksum() {
    let dir = tmp("flip");
    let path = dir.join("last.safetensors");
    let (model, optim) = tensors();
    checkpoint::save(&path, &model, &optim, &serde_json::json!({ "epoch": 1 })).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    // the last byte belongs to a tensor's data (safetensors: header first, then the data)
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let e = checkpoint::load(&path).err().expect("a corrupt checkpoint loaded").to_string();
    assert!(e.contains("checksum mismatch") && e.contains("last.safetensors"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoint_restore_writes_every_tensor_and_names_a_missing_or_misshapen_one() {
    let g = gpu();
    let (model, _) = tensors();
    let file = PathBuf::from("run/last.safetensors");
    let w = upload(&g, &[0.0; 6], &[2, 3]);
    let b = upload(&g, &[0.0; 3], &[3]);
    checkpoint::restore_tensors(&file, &model, &[("enc.w".into(), w.clone()), ("enc.b".into(), b.clone())]).unwrap();
    assert_eq!(w.to_vec().unwrap(), model[0].2);
    assert_eq!(b.to_vec().unwrap(), model[1].2);
    let other = upload(&g, &[0.0; 6], &[3, 2]);
    let e = checkpoint::restore_tensors(&file, &model, &[("enc.w".into(), other)]).unwrap_err().to_string();
    assert!(e.contains("`enc.w`") && e.contains("[2, 3]") && e.contains("[3, 2]") && e.contains("last.safetensors"), "{e}");
    let e = checkpoint::restore_tensors(&file, &model, &[("head.w".into(), b)]).unwrap_err().to_string();
    assert!(e.contains("no tensor `head.w`"), "{e}");
}

#[test]
fn checkpoint_stale_temps_are_removed_unless_kept() {
    let dir = tmp("temps");
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        (".last.safetensors.tmp-123", 10usize), // a dead writer's: removed
        (".best.safetensors.tmp-456", 5),       // a live writer's (kept below)
        (".last.safetensors.tmp-x", 7),         // no pid: nobody's, removed
        ("last.safetensors.tmp-789", 3),        // not a hidden temp file: not ours
        ("last.safetensors", 20),
    ];
    for (name, size) in files {
        std::fs::write(dir.join(name), vec![0u8; size]).unwrap();
    }
    let (mut removed, bytes) = checkpoint::remove_stale_temps(&dir, |pid| pid == 456).unwrap();
    removed.sort();
    assert_eq!(removed, vec![dir.join(".last.safetensors.tmp-123"), dir.join(".last.safetensors.tmp-x")]);
    assert_eq!(bytes, 17);
    let mut left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, vec![".best.safetensors.tmp-456", "last.safetensors", "last.safetensors.tmp-789"]);
    // a folder that does not exist has nothing to clean; a file in its place is an error
    assert_eq!(checkpoint::remove_stale_temps(&dir.join("none"), |_| false).unwrap().0.len(), 0);
    let e = checkpoint::remove_stale_temps(&dir.join("last.safetensors"), |_| false).unwrap_err().to_string();
    assert!(e.contains("last.safetensors"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
