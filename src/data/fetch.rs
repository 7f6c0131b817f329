//! `equimodal data fetch`: download a manifest's files into the data root, each checked by
//! size and SHA-256 before it takes its name.
//!
//! A file is written to `<name>.part` beside its destination and renamed only once its
//! checksum matches, so an interrupted or corrupt download never leaves a file that looks
//! complete (the loaders ignore `.part` files). Files already present with the right
//! checksum are not downloaded again. The manifest is an argument: the command line passes
//! the built-in one ([`super::catalog::manifest`]); tests pass their own, which cannot
//! change the built-in table.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::catalog::{hex, Manifest, RemoteFile};
use crate::error::{Error, Result};

/// How to fetch.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// A progress bar on stderr (bytes of the files still to download).
    pub progress: bool,
    /// Downloads at once (FSDD is 2,500 small files: one connection spends its time
    /// waiting on round trips).
    pub parallel: usize,
}

/// Downloads at once unless told otherwise.
pub const DEFAULT_PARALLEL: usize = 4;

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions { progress: true, parallel: DEFAULT_PARALLEL }
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Files downloaded now.
    pub downloaded: usize,
    /// Files that were already present with the right checksum.
    pub present: usize,
    /// Files that were present with a wrong checksum or size, and were replaced.
    pub replaced: usize,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// Bring every file of `manifest` into `root`, verified; see the module comment.
pub fn fetch(manifest: &Manifest, root: &Path, opts: &FetchOptions) -> Result<FetchReport> {
    let mut report = FetchReport::default();
    let mut todo = Vec::new();
    for f in &manifest.files {
        let dest = root.join(&f.path);
        match file_digest(&dest)? {
            Some((size, sha)) if size == f.size && sha == f.sha256 => report.present += 1,
            Some(_) => {
                report.replaced += 1;
                todo.push(f);
            }
            None => todo.push(f),
        }
    }
    if todo.is_empty() {
        return Ok(report);
    }
    let total: u64 = todo.iter().map(|f| f.size).sum();
    let bar = progress_bar(opts.progress, total, &manifest.dataset, todo.len());
    let agent = agent();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<(usize, Error)>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..opts.parallel.clamp(1, 16) {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(f) = todo.get(i) else { break };
                    if let Err(e) = download_verified(&agent, f, &root.join(&f.path), &bar) {
                        stop.store(true, Ordering::Relaxed);
                        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        // report the failure of the earliest file in manifest order: the
                        // same one whichever thread got there first
                        if slot.as_ref().is_none_or(|(j, _)| i < *j) {
                            *slot = Some((i, e));
                        }
                    }
                }
            });
        }
    });
    bar.finish_and_clear();
    if let Some((_, e)) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    report.downloaded = todo.len() - report.replaced;
    report.bytes = total;
    Ok(report)
}

fn progress_bar(show: bool, total: u64, dataset: &str, files: usize) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(format!("{dataset}: {files} files"));
    bar
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // a stalled transfer fails instead of hanging; a slow one goes on
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("equimodal/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Size and SHA-256 of a file; `None` when it does not exist.
fn file_digest(p: &Path) -> Result<Option<(u64, [u8; 32])>> {
    let mut f = match std::fs::File::open(p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(p, e)),
    };
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(|e| Error::io(p, e))?;
    Ok(Some((n, h.finalize().into())))
}

/// Try each of the file's addresses in turn; the first that yields the right bytes wins.
fn download_verified(agent: &ureq::Agent, f: &RemoteFile, dest: &Path, bar: &indicatif::ProgressBar) -> Result<()> {
    let mut errors = Vec::new();
    for url in &f.urls {
        match download_one(agent, url, f, dest, bar) {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(e),
        }
    }
    // every address served wrong bytes: the typed checksum error of the first says it best
    let all_checksum = errors.iter().all(|e| matches!(e, Error::Checksum { .. }));
    match errors.len() {
        0 => Err(Error::Download { url: f.path.clone(), msg: "the manifest lists no address for it".into() }),
        _ if errors.len() == 1 || all_checksum => Err(errors.remove(0)),
        _ => Err(Error::Download {
            url: f.urls.join(", "),
            msg: errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "),
        }),
    }
}

/// Download `url` into `<dest>.part`, hashing as it arrives; rename to `dest` only if the
/// size and checksum match. The `.part` file is removed on every failure.
fn download_one(agent: &ureq::Agent, url: &str, f: &RemoteFile, dest: &Path, bar: &indicatif::ProgressBar) -> Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let part = part_path(dest);
    let result = write_part(agent, url, f, &part, bar).and_then(|()| std::fs::rename(&part, dest).map_err(|e| Error::io(dest, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&part);
    }
    result
}

fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

fn write_part(agent: &ureq::Agent, url: &str, f: &RemoteFile, part: &Path, bar: &indicatif::ProgressBar) -> Result<()> {
    let net = |e: &dyn std::fmt::Display| Error::Download { url: url.to_string(), msg: e.to_string() };
    let resp = agent.get(url).call().map_err(|e| net(&e))?;
    // one byte more than expected is enough to know the file is wrong, and bounds what a
    // misbehaving server can make us write
    let mut body = resp.into_body().into_reader().take(f.size + 1);
    let mut out = std::fs::File::create(part).map_err(|e| Error::io(part, e))?;
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let k = body.read(&mut buf).map_err(|e| net(&e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        out.write_all(&buf[..k]).map_err(|e| Error::io(part, e))?;
        n += k as u64;
        bar.inc(k as u64);
    }
    let got: [u8; 32] = h.finalize().into();
    if n != f.size || got != f.sha256 {
        return Err(Error::Checksum {
            path: f.path.clone(),
            url: url.to_string(),
            expected: format!("{} ({} bytes)", hex(&f.sha256), f.size),
            got: format!("{} ({n}{} bytes)", hex(&got), if n > f.size { " or more" } else { "" }),
        });
    }
    out.sync_all().map_err(|e| Error::io(part, e))?;
    Ok(())
}
