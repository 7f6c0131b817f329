//! `equimodal data fetch` and the data root, against a small HTTP server on 127.0.0.1 that
//! each test starts for itself (no network, no external process). Fixture files are made
//! here; the tests that check the built-in checksum table against real files use the data
//! root `EQUIMODAL_DATA` names and are skipped, saying so, when it holds no AV-MNIST copy.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use equimodal::data::catalog::{self, Manifest};
use equimodal::data::fetch::{fetch, FetchOptions, FetchReport};
use equimodal::error::Error;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// What the server answers for a path.
#[derive(Clone)]
enum Reply {
    Body(Vec<u8>),
    /// Announce this many bytes, send the body, then close: a transfer cut short.
    Short(Vec<u8>, usize),
}

/// A one-thread HTTP/1.1 server on an ephemeral loopback port: GET only, one request per
/// connection (`Connection: close`), 404 for unknown paths. It stops when dropped, and by
/// itself after 60 s whatever happens, so a failing test cannot leave it running.
struct Server {
    base: String,
    hits: Arc<AtomicUsize>,
    files: Arc<Mutex<HashMap<String, Reply>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(files: HashMap<String, Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (hits, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let files = Arc::new(Mutex::new(files));
        let (h, s, f) = (hits.clone(), stop.clone(), files.clone());
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            while !s.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(60) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        h.fetch_add(1, Ordering::Relaxed);
                        serve(conn, &f);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server { base, hits, files, stop, thread: Some(thread) }
    }
    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }
    fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
    fn set(&self, path: &str, r: Reply) {
        self.files.lock().unwrap().insert(path.to_string(), r);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(mut conn: TcpStream, files: &Mutex<HashMap<String, Reply>>) {
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or("").to_string();
    let path = line.split(' ').nth(1).unwrap_or("/").trim_start_matches('/').to_string();
    let reply = files.lock().unwrap().get(&path).cloned();
    let (status, body, announced) = match reply {
        Some(Reply::Body(b)) => ("200 OK", b.clone(), b.len()),
        Some(Reply::Short(b, n)) => ("200 OK", b, n),
        None => ("404 Not Found", b"not here".to_vec(), 8),
    };
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {announced}\r\nConnection: close\r\n\r\n");
    let _ = conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(&body));
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!("equimodal-fetch-{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sha_hex(b: &[u8]) -> String {
    catalog::hex(&Sha256::digest(b))
}

/// Three fixture files (seeded random bytes, one of them `abc`, whose SHA-256 is the
/// published test vector), their manifest pointing at `server`, and the server.
fn fixture() -> (Server, Manifest, HashMap<String, Vec<u8>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut files = HashMap::new();
    files.insert("set/a/one.bin".to_string(), (0..5000).map(|_| rng.random::<u8>()).collect::<Vec<u8>>());
    files.insert("set/a/two.bin".to_string(), (0..70_001).map(|_| rng.random::<u8>()).collect());
    files.insert("set/abc.txt".to_string(), b"abc".to_vec());
    let server = Server::start(files.iter().map(|(k, v)| (k.clone(), Reply::Body(v.clone()))).collect());
    let mut text = String::from("# test manifest\n");
    let mut names: Vec<&String> = files.keys().collect();
    names.sort();
    for n in names {
        text += &format!("{} {} {n}\n", sha_hex(&files[n]), files[n].len());
    }
    let base = server.base.clone();
    let m = Manifest::parse("fixture", "test manifest", &text, |p| Ok(vec![format!("{base}/{p}")])).unwrap();
    (server, m, files)
}

fn quiet() -> FetchOptions {
    FetchOptions { progress: false, parallel: 2 }
}

/// Every file under `dir` (relative paths), to show no `.part` or stray file was left.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn sha256_is_the_standard_one() {
    // FIPS 180-2 test vector: the checksums we compare are real SHA-256
    assert_eq!(sha_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

#[test]
fn fetch_downloads_verifies_and_second_fetch_downloads_nothing() {
    let (server, m, files) = fixture();
    let td = TempDir::new("ok");
    let r = fetch(&m, &td.0, &quiet()).unwrap();
    assert_eq!(r, FetchReport { downloaded: 3, present: 0, replaced: 0, bytes: 75_004 });
    for (p, bytes) in &files {
        assert_eq!(&std::fs::read(td.0.join(p)).unwrap(), bytes, "{p}");
    }
    assert_eq!(tree(&td.0), ["set/a/one.bin", "set/a/two.bin", "set/abc.txt"]);
    let hits = server.hits();
    assert_eq!(hits, 3);
    let again = fetch(&m, &td.0, &quiet()).unwrap();
    assert_eq!(again, FetchReport { downloaded: 0, present: 3, replaced: 0, bytes: 0 });
    assert_eq!(server.hits(), hits, "a second fetch must not contact the server");
    assert_eq!(m.present(&td.0), 3);
}

#[test]
fn a_damaged_local_file_is_downloaded_again() {
    let (_server, m, files) = fixture();
    let td = TempDir::new("replace");
    fetch(&m, &td.0, &quiet()).unwrap();
    let p = td.0.join("set/a/one.bin");
    let mut b = std::fs::read(&p).unwrap();
    b[100] ^= 1; // same size, different content: only the checksum can tell
    std::fs::write(&p, &b).unwrap();
    let r = fetch(&m, &td.0, &quiet()).unwrap();
    assert_eq!((r.downloaded, r.replaced, r.present), (0, 1, 2));
    assert_eq!(std::fs::read(&p).unwrap(), files["set/a/one.bin"]);
}

#[test]
fn a_corrupt_download_is_a_checksum_error_and_leaves_no_file() {
    let (server, m, files) = fixture();
    let mut bad = files["set/a/two.bin"].clone();
    bad[70_000] ^= 0x80;
    server.set("set/a/two.bin", Reply::Body(bad.clone()));
    let td = TempDir::new("corrupt");
    let e = fetch(&m, &td.0, &FetchOptions { progress: false, parallel: 1 }).unwrap_err();
    match &e {
        Error::Checksum { path, url, expected, got } => {
            assert_eq!(path, "set/a/two.bin");
            assert_eq!(url, &server.url("set/a/two.bin"));
            assert!(expected.starts_with(&sha_hex(&files["set/a/two.bin"])), "{e}");
            assert!(got.starts_with(&sha_hex(&bad)), "{e}");
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert!(e.to_string().contains("set/a/two.bin"), "{e}");
    assert!(!tree(&td.0).iter().any(|p| p.contains("two.bin")), "{:?}", tree(&td.0));
    // one byte too many is as wrong as one byte changed
    let mut long = files["set/a/two.bin"].clone();
    long.push(0);
    server.set("set/a/two.bin", Reply::Body(long));
    assert!(matches!(fetch(&m, &td.0, &quiet()), Err(Error::Checksum { .. })));
    assert!(!tree(&td.0).iter().any(|p| p.contains("two.bin")), "{:?}", tree(&td.0));
}

#[test]
fn a_transfer_cut_short_leaves_no_file() {
    let (server, m, files) = fixture();
    let full = files["set/a/two.bin"].clone();
    server.set("set/a/two.bin", Reply::Short(full[..30_000].to_vec(), full.len()));
    let td = TempDir::new("short");
    let e = fetch(&m, &td.0, &quiet()).unwrap_err();
    assert!(matches!(e, Error::Download { .. } | Error::Checksum { .. }), "{e:?}");
    assert!(e.to_string().contains("two.bin"), "{e}");
    assert!(!tree(&td.0).iter().any(|p| p.contains("two.bin")), "{:?}", tree(&td.0));
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let (server, m, _) = fixture();
    server.files.lock().unwrap().remove("set/abc.txt");
    let td = TempDir::new("404");
    let e = fetch(&m, &td.0, &quiet()).unwrap_err();
    match &e {
        Error::Download { url, msg } => {
            assert_eq!(url, &server.url("set/abc.txt"));
            assert!(msg.contains("404"), "{e}");
        }
        other => panic!("expected a download error, got {other:?}"),
    }
    assert!(!tree(&td.0).iter().any(|p| p.contains("abc.txt")), "{:?}", tree(&td.0));
}

#[test]
fn the_next_address_is_tried_when_one_fails() {
    let (server, m, files) = fixture();
    let mut m2 = m.clone();
    for f in &mut m2.files {
        f.urls.insert(0, server.url(&format!("gone/{}", f.path)));
    }
    let td = TempDir::new("mirror");
    assert_eq!(fetch(&m2, &td.0, &quiet()).unwrap().downloaded, 3);
    assert_eq!(std::fs::read(td.0.join("set/abc.txt")).unwrap(), files["set/abc.txt"]);
    // every address serving wrong bytes: still the typed checksum error
    let mut wrong = files["set/abc.txt"].clone();
    wrong[0] = b'x';
    server.set("set/abc.txt", Reply::Body(wrong.clone()));
    server.set("gone/set/abc.txt", Reply::Body(wrong));
    let td = TempDir::new("mirror-wrong");
    assert!(matches!(fetch(&m2, &td.0, &quiet()), Err(Error::Checksum { .. })));
    // when every address fails, the error names them all
    server.files.lock().unwrap().clear();
    let td = TempDir::new("mirror-all");
    let e = fetch(&m2, &td.0, &quiet()).unwrap_err();
    assert!(e.to_string().contains("/gone/set/") && e.to_string().matches("404").count() >= 2, "{e}");
}

#[test]
fn manifest_lines_are_checked() {
    let ok = |t: &str| Manifest::parse("x", "m.sha256", t, |_| Ok(vec![]));
    let h = "a".repeat(64);
    assert_eq!(ok(&format!("# c\n\n{h} 3 a/b.wav\n")).unwrap().files[0].size, 3);
    for (text, want) in [
        (format!("{h} 3\n"), "m.sha256:1"),
        (format!("# c\n{} 3 a\n", "g".repeat(64)), "m.sha256:2"),
        (format!("{h} -1 a\n"), "whole number"),
        (format!("{h} 3 ../a\n"), "relative"),
        (format!("{h} 3 /etc/passwd\n"), "relative"),
    ] {
        let e = ok(&text).unwrap_err();
        assert!(matches!(e, Error::Data { .. }) && e.to_string().contains(want), "{text:?}: {e}");
    }
}

#[test]
fn builtin_manifest_lists_the_avmnist_files() {
    let m = catalog::avmnist_manifest(None).unwrap();
    let fsdd = m.files.iter().filter(|f| f.path.starts_with("fsdd/recordings/")).count();
    assert_eq!((m.files.len(), fsdd), (2502, 2500));
    assert!(m.files.iter().all(|f| !f.urls.is_empty() && f.urls.iter().all(|u| u.starts_with("https://") && u.ends_with(f.path.rsplit('/').next().unwrap()))));
    let mn = m.files.iter().find(|f| f.path == catalog::MNIST_IMAGES).unwrap();
    assert_eq!(mn.size, 1_648_877);
    let mirrored = catalog::avmnist_manifest(Some("http://127.0.0.1:9/copy/")).unwrap();
    assert_eq!(mirrored.files[0].urls, [format!("http://127.0.0.1:9/copy/{}", mirrored.files[0].path)]);
    assert_eq!(mirrored.files.iter().map(|f| f.sha256).collect::<Vec<_>>(), m.files.iter().map(|f| f.sha256).collect::<Vec<_>>());
    assert!(catalog::manifest("cremad", None).unwrap_err().to_string().contains("cannot be downloaded automatically"));
}

/// The data root `EQUIMODAL_DATA` names, when it holds the FSDD recordings.
fn real_fsdd() -> Option<PathBuf> {
    let root = std::env::var_os("EQUIMODAL_DATA").map(PathBuf::from);
    match root {
        Some(r) if r.join(catalog::FSDD_RECORDINGS).is_dir() => Some(r),
        _ => {
            eprintln!("skipped: EQUIMODAL_DATA does not name a data root with {} (CI sets it to ../shared/data)", catalog::FSDD_RECORDINGS);
            None
        }
    }
}

#[test]
fn builtin_checksums_match_the_real_recordings_served_from_a_mirror() {
    let Some(root) = real_fsdd() else { return };
    let served: HashMap<String, Reply> = catalog::avmnist_manifest(None)
        .unwrap()
        .files
        .iter()
        .filter(|f| f.path.starts_with("fsdd/"))
        .map(|f| (f.path.clone(), Reply::Body(std::fs::read(root.join(&f.path)).unwrap())))
        .collect();
    let server = Server::start(served);
    let mut m = catalog::avmnist_manifest(Some(&server.base)).unwrap();
    m.files.retain(|f| f.path.starts_with("fsdd/"));
    let td = TempDir::new("real");
    let r = fetch(&m, &td.0, &FetchOptions { progress: false, parallel: 4 }).unwrap();
    assert_eq!(r.downloaded, 2500);
    assert_eq!(m.present(&td.0), 2500);
}

#[test]
fn per_user_data_dir_follows_xdg() {
    if cfg!(windows) || cfg!(target_os = "macos") {
        eprintln!("skipped: the XDG rules apply to Linux and the BSDs");
        return;
    }
    let env = |xdg: Option<&str>, home: Option<&str>| {
        let (xdg, home) = (xdg.map(String::from), home.map(String::from));
        catalog::user_data_dir_from(move |k| match k {
            "XDG_DATA_HOME" => xdg.clone().map(Into::into),
            "HOME" => home.clone().map(Into::into),
            _ => None,
        })
    };
    assert_eq!(env(Some("/x/data"), Some("/home/u")), PathBuf::from("/x/data/equimodal"));
    assert_eq!(env(None, Some("/home/u")), PathBuf::from("/home/u/.local/share/equimodal"));
    assert_eq!(env(Some("relative"), Some("/home/u")), PathBuf::from("/home/u/.local/share/equimodal"));
    assert_eq!(env(Some(""), Some("/home/u")), PathBuf::from("/home/u/.local/share/equimodal"));
    assert_eq!(env(None, None), PathBuf::from("equimodal-data"));
}

#[test]
fn the_command_line_lists_and_fetches() {
    let exe = env!("CARGO_BIN_EXE_equimodal");
    let td = TempDir::new("cli");
    let root = td.0.to_str().unwrap();
    let list = std::process::Command::new(exe).args(["data", "list", "--root", root]).output().unwrap();
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(list.status.success(), "{out}");
    assert!(out.contains(&format!("data root: {root}")) && out.contains("avmnist") && out.contains("status:  absent"), "{out}");
    assert!(out.contains("cremad") && out.contains("not downloadable automatically"), "{out}");
    // a mirror that has nothing: the command fails, names the address, and writes nothing
    let server = Server::start(HashMap::new());
    let f = std::process::Command::new(exe)
        .args(["data", "fetch", "avmnist", "--quiet", "--parallel", "1", "--root", root, "--mirror", &server.base])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&f.stderr);
    assert!(!f.status.success(), "{err}");
    assert!(err.contains(&server.base) && err.contains("404"), "{err}");
    assert!(tree(&td.0).is_empty(), "{:?}", tree(&td.0));
}
