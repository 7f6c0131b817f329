//! Imports point down the layer map of `src/lib.rs` and `docs/contributing.md`: a module may
//! name modules of its own layer or below, never one above. Read from the source text
//! (every `crate::<module>` path, `use` or inline), so a new upward reference fails here
//! with the file that made it.
mod common;
use common::repo_root;
use std::collections::BTreeMap;
use std::path::Path;

/// The layer of each top-level module, lowest first. `error`, `limits` and `csv` sit below
/// everything; `tensor`, `autograd` and `ops` form one layer (tensors record graph nodes,
/// backward rules run ops, ops build tensors).
const LAYERS: &[&[&str]] = &[
    &["error", "limits", "csv"],
    &["gpu"],
    &["tensor", "autograd", "ops"],
    &["nn"],
    &["optim"],
    &["data"],
    &["methods"],
    &["config"],
    &["train"],
    &["experiments", "report"],
    &["bench"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Top-level modules named as `crate::<m>` in code (comments stripped).
fn referenced(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                found.push(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn imports_point_down_the_layer_map() {
    let src = repo_root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut upward: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap().to_string_lossy().replace('\\', "/");
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        if top == "lib" || top == "bin" {
            continue; // the crate root and the CLI sit above everything
        }
        let Some(mine) = layer_of(&top) else {
            unknown.push(format!("src/{rel}: module `{top}` is not on the layer map"));
            continue;
        };
        for m in referenced(&std::fs::read_to_string(f).unwrap()) {
            match layer_of(&m) {
                Some(l) if l > mine => upward.entry(format!("src/{rel}")).or_default().push(m),
                Some(_) => {}
                None => unknown.push(format!("src/{rel}: `crate::{m}` is not on the layer map")),
            }
        }
    }
    assert!(files.len() > 50, "expected the sources under {}", src.display());
    assert!(unknown.is_empty(), "{}", unknown.join("\n"));
    assert!(upward.is_empty(), "imports pointing up the layer map:\n{upward:#?}");
}

#[test]
fn the_checker_sees_an_upward_import() {
    assert_eq!(referenced("use crate::train::Trainer; // crate::bench in a comment"), vec!["train"]);
    assert_eq!(referenced("let x = crate::ops::full(&g, &[1], 0.0); let y = crate::Tensor::zeros;"), vec!["ops"]);
    assert!(layer_of("train") > layer_of("methods"));
}
