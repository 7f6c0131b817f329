//! AV-MNIST's clip-image pairing exported for the PyTorch protocol script: the CSV
//! (`AvmnistDataset::pairs_csv`), `equimodal data pairs`, and the script's reader
//! (`bench/torch/pairs.py`), so that the two sides train on the same pairs.
use crate::common::{equimodal_bin, repo_root};
use crate::datasets::{avmnist_default, TempDir};
use equimodal::data::avmnist::{list_fsdd, AvmnistDataset};
use equimodal::data::{catalog, Dataset, Split};
use std::path::Path;
use std::process::Command;

/// (split, index, clip file name, image, label) of every CSV row, after checking the header.
fn rows(csv: &str) -> Vec<(String, usize, String, usize, u32)> {
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("split,index,clip,image,label"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            assert_eq!(f.len(), 5, "row {l}");
            (f[0].to_string(), f[1].parse().unwrap(), f[2].to_string(), f[3].parse().unwrap(), f[4].parse().unwrap())
        })
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn avmnist_pairs_csv_lists_every_sample_with_its_image() {
    let Some(ds) = avmnist_default() else { return };
    let rows = rows(&ds.pairs_csv());
    let mut at = 0;
    for split in [Split::Train, Split::Val, Split::Test] {
        for i in 0..ds.len(split) {
            let (clip, image, label) = ds.pair_info(split, i).unwrap();
            assert_eq!(rows[at], (split.as_str().to_string(), i, file_name(&clip.path), image, label), "row {}", at + 2);
            at += 1;
        }
    }
    assert_eq!(at, rows.len(), "one row per sample");
}

/// `bench/torch/pairs.py`'s `read_pairs` on `csv`, run by python3 on the clips and MNIST
/// labels of `ds`: Ok((split, image) per clip in file order), or Err(the error's message).
fn read_with_python(ds: &AvmnistDataset, csv: &str, dir: &Path) -> Result<Vec<(String, usize)>, String> {
    let clips = list_fsdd(&ds.config().root_dir().join(catalog::FSDD_RECORDINGS)).unwrap();
    let names: Vec<String> = clips.iter().map(|c| file_name(&c.path)).collect();
    let digits: Vec<u32> = clips.iter().map(|c| c.digit).collect();
    let labels: Vec<u32> = (0..catalog::MNIST_PROTOCOL_IMAGES).map(|i| ds.image_label(i)).collect();
    let (pairs, data) = (dir.join("pairs.csv"), dir.join("data.json"));
    std::fs::write(&pairs, csv).unwrap();
    std::fs::write(&data, serde_json::json!({"names": names, "digits": digits, "labels": labels}).to_string()).unwrap();
    let script = "import json, sys\n\
                  sys.path.insert(0, sys.argv[1])\n\
                  from pairs import PairsError, read_pairs\n\
                  d = json.load(open(sys.argv[3]))\n\
                  try:\n    print(json.dumps(list(zip(*read_pairs(sys.argv[2], d['names'], d['digits'], d['labels'])))))\n\
                  except PairsError as e:\n    print('ERROR ' + str(e))\n";
    let torch_dir = repo_root().join("bench/torch");
    let out = Command::new("python3").arg("-c").arg(script).arg(&torch_dir).arg(&pairs).arg(&data).output().unwrap();
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    match text.strip_prefix("ERROR ") {
        Some(e) => Err(e.trim().to_string()),
        None => Ok(serde_json::from_str(&text).unwrap()),
    }
}

#[test]
fn the_protocol_script_reads_the_engines_pairs() {
    let Some(ds) = avmnist_default() else { return };
    if Command::new("python3").arg("--version").output().is_err() {
        eprintln!("skipped: no python3 to run bench/torch/pairs.py with");
        return;
    }
    let td = TempDir::new("pairs");
    let csv = ds.pairs_csv();
    let got = read_with_python(ds, &csv, &td.0).unwrap();
    // each clip, in file order, has the split and image of its sample
    let mut want = vec![None; got.len()];
    let clips = list_fsdd(&ds.config().root_dir().join(catalog::FSDD_RECORDINGS)).unwrap();
    for split in [Split::Train, Split::Val, Split::Test] {
        for i in 0..ds.len(split) {
            let (clip, image, _) = ds.pair_info(split, i).unwrap();
            let at = clips.iter().position(|c| c.path == clip.path).unwrap();
            want[at] = Some((split.as_str().to_string(), image));
        }
    }
    assert_eq!(got, want.into_iter().map(Option::unwrap).collect::<Vec<_>>());
    // a pairing that does not fit the data is an error naming the line
    let mut lines: Vec<String> = csv.lines().map(String::from).collect();
    let row = rows(&csv)[4].clone();
    let other = (0..catalog::MNIST_PROTOCOL_IMAGES).find(|&i| ds.image_label(i) != row.4).unwrap();
    lines[5] = format!("{},{},{},{other},{}", row.0, row.1, row.2, row.4);
    let refused = |csv: &str| read_with_python(ds, csv, &td.0).err().expect("a pairing that does not fit the data accepted");
    let e = refused(&lines.join("\n"));
    assert!(e.contains("line 6") && e.contains(&row.2), "{e}");
    let e = refused(&csv.lines().take(100).collect::<Vec<_>>().join("\n"));
    assert!(e.contains("have no pair"), "{e}");
}

#[test]
fn data_pairs_writes_an_avmnist_configurations_pairs_and_nothing_else() {
    let td = TempDir::new("pairs-cli");
    let out = td.0.join("pairs.csv");
    let run = |args: &[&str]| equimodal_bin().args(["data", "pairs", "--out"]).arg(&out).args(args).output().unwrap();
    // the default configuration's dataset is synthetic
    let r = run(&[]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("data.kind"), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(!out.exists());
    let Some(ds) = avmnist_default() else { return };
    let root = format!("data.root={}", ds.config().root_dir().display());
    let config = repo_root().join("configs/avmnist_joint.toml");
    std::fs::write(&out, "keep me").unwrap();
    let r = run(&["--config", config.to_str().unwrap(), "--set", &root]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("--force"), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me", "an existing file is kept");
    let r = run(&["--config", config.to_str().unwrap(), "--set", &root, "--force"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let written = std::fs::read_to_string(&out).unwrap();
    assert_eq!(rows(&written).len(), 2500, "every clip of the preset");
}
