//! Report/charts: synthetic metric logs are rendered and the files checked.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use equimodal::report::{render_comparison, render_report, ReportOptions};

/// A fresh directory under the system temp dir. Removed on drop unless
/// `EQUIMODAL_KEEP_REPORT` is set (then its path is printed, to look at the charts).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "equimodal-report-{name}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    /// A sub-directory holding `metrics.jsonl` with the given lines.
    fn run(&self, name: &str, lines: &[String]) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
        dir
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("EQUIMODAL_KEEP_REPORT").is_some() {
            eprintln!("kept report output in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// One epoch of a synthetic AUG/AIM run; `nan_loss` writes the train loss as `NaN`.
fn epoch_line(e: usize, n: usize, method: &str, aug: bool, aim: bool, nan_loss: bool) -> String {
    let t = e as f64 / n.max(1) as f64;
    let loss = if nan_loss { "NaN".to_string() } else { format!("{:.4}", 1.8 * (-2.5 * t).exp() + 0.2) };
    let (la, lv) = (1.9 * (-1.5 * t).exp() + 0.4, 1.2 * (-3.0 * t).exp() + 0.1);
    let acc = 0.3 + 0.5 * (1.0 - (-3.0 * t).exp());
    let (aa, av) = (0.25 + 0.3 * t, 0.3 + 0.55 * (1.0 - (-4.0 * t).exp()));
    let (sa, sv) = (0.3 + 0.3 * t, 0.5 + 0.4 * t);
    let mut s = format!(
        r#"{{"epoch":{e},"lr":0.01,"method":"{method}","modalities":["audio","visual"],"unknown_key":{{"x":1}},"train":{{"loss":{loss},"per_modality_loss":{{"audio":{la:.4},"visual":{lv:.4}}},"acc":{:.4},"data_wait_share":0.02,"seconds":12.5}},"val":{{"loss":{:.4},"acc":{:.4}}},"test":{{"loss":{:.4},"acc":{acc:.4},"macro_f1":0.7,"map":0.75,"per_modality":{{"audio":{{"acc":{aa:.4},"macro_f1":0.5,"map":0.6}},"visual":{{"acc":{av:.4},"macro_f1":0.8,"map":0.85}}}}}},"imbalance":{{"scores":{{"audio":{sa:.4},"visual":{sv:.4}}},"ratio":{:.4}}}"#,
        acc + 0.1,
        1.9 * (-2.0 * t).exp() + 0.3,
        acc - 0.02,
        1.9 * (-2.0 * t).exp() + 0.35,
        sv / sa,
    );
    if aug {
        let learners_a = 1 + e / 3;
        s.push_str(&format!(
            r#","aug":{{"learners":{{"audio":{learners_a},"visual":1}},"gap":{:.4},"check":{{"scores":{{"audio":10.1,"visual":30.2}},"decision":"add:audio"}}}}"#,
            0.8 / (1.0 + e as f64)
        ));
    }
    if aim {
        let depth_scores = |base: f64| {
            (0..5).map(|d| format!("{:.4}", base + 0.08 * d as f64 + 0.1 * t)).collect::<Vec<_>>().join(",")
        };
        let ratio: Vec<String> = (0..5).map(|d| format!("{:.4}", 1.0 + 0.5 * (1.0 - t) * (d as f64 + 1.0) / 5.0)).collect();
        let strength: Vec<String> = (0..5).map(|d| format!("{:.4}", (0.5 * (1.0 - t) * (d as f64 + 1.0) / 5.0).tanh())).collect();
        s.push_str(&format!(
            r#","aim":{{"depths":5,"scores":{{"audio":[{}],"visual":[{}]}},"ratio":[{}],"strength":[{}],"mask_density":{{"audio.layer1.0.conv1":0.5,"audio.layer4.1.conv2":{:.3},"visual.layer1.0.conv1":0.48}}}}"#,
            depth_scores(0.2),
            depth_scores(0.4),
            ratio.join(","),
            strength.join(","),
            0.5 + 0.1 * t
        ));
    }
    s.push('}');
    s
}

fn run_lines(n: usize, method: &str, aug: bool, aim: bool) -> Vec<String> {
    (1..=n).map(|e| epoch_line(e, n, method, aug, aim, false)).collect()
}

fn names(files: &[PathBuf]) -> Vec<String> {
    files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

fn has_png_font() -> bool {
    // Mirrors the library's own lookup closely enough for the test machine.
    std::env::var_os("EQUIMODAL_FONT").is_some_and(|v| v != "none")
        || Path::new("/usr/share/fonts").is_dir()
        || Path::new("/Library/Fonts").is_dir()
        || Path::new(r"C:\Windows\Fonts").is_dir()
}

/// Checks the PNG signature and reads width/height from the IHDR chunk.
fn check_png(path: &Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert!(b.len() > 5_000, "{} is only {} bytes", path.display(), b.len());
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}: not a PNG", path.display());
    assert_eq!(&b[12..16], b"IHDR", "{}: first chunk is not IHDR", path.display());
    let w = u32::from_be_bytes(b[16..20].try_into().unwrap());
    let h = u32::from_be_bytes(b[20..24].try_into().unwrap());
    (w, h)
}

fn read_svg(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.len() > 2_000, "{} is only {} bytes", path.display(), s.len());
    assert!(s.contains("<svg") && s.trim_end().ends_with("</svg>"), "{}: not an SVG", path.display());
    s
}

/// Every chart stem is written as SVG (and PNG where a font exists), and the files are sound.
fn check_charts(charts: &Path, files: &[PathBuf], stems: &[&str]) {
    let names = names(files);
    let png = has_png_font();
    if !png {
        // a skipped check says so: on a machine without fonts the PNGs are not checked
        eprintln!(
            "note: PNG chart checks skipped for {}: no font found (EQUIMODAL_FONT, /usr/share/fonts, /Library/Fonts, C:\\Windows\\Fonts)",
            charts.display()
        );
    }
    for stem in stems {
        let svg = charts.join(format!("{stem}.svg"));
        assert!(files.contains(&svg), "{stem}.svg not returned: {names:?}");
        read_svg(&svg);
        let png_path = charts.join(format!("{stem}.png"));
        if png {
            assert!(files.contains(&png_path), "{stem}.png not returned: {names:?}");
            assert_eq!(check_png(&png_path), (1000, 600), "{stem}.png dimensions");
        }
    }
    for f in files {
        assert!(f.is_file(), "returned file {} does not exist", f.display());
    }
}

#[test]
fn full_run_with_aug_and_aim() {
    let tmp = TempDir::new("full");
    let mut lines = run_lines(20, "aug", true, true);
    // A NaN loss and a null accuracy leave gaps; neither may break rendering.
    lines[6] = epoch_line(7, 20, "aug", true, true, true);
    lines[9] = lines[9].replace(r#""acc":"#, r#""acc":null,"old_acc":"#);
    let run = tmp.run("crema_aug", &lines);
    let files = render_report(&run).expect("render");
    let charts = run.join("charts");
    check_charts(
        &charts,
        &files,
        &[
            "loss",
            "accuracy",
            "imbalance",
            "aug_learners",
            "aug_gap",
            "aim_depth_scores",
            "aim_strength",
            "aim_ratio",
            "aim_mask_density",
        ],
    );
    assert!(files.contains(&charts.join("aim_mask_density.txt")));
    let summary = std::fs::read_to_string(charts.join("aim_mask_density.txt")).unwrap();
    assert!(summary.contains("audio.layer4.1.conv2") && summary.contains("epoch 20"), "{summary}");

    let loss = read_svg(&charts.join("loss.svg"));
    for s in ["Loss", "crema_aug (aug)", "train loss (fused)", "train loss: audio", "train loss: visual", "test loss (fused)", "val loss (fused)", "epoch"] {
        assert!(loss.contains(s), "loss.svg lacks {s:?}");
    }
    let acc = read_svg(&charts.join("accuracy.svg"));
    for s in ["Accuracy", "test acc (fused)", "test acc: audio", "test acc: visual", "val acc (fused)", "accuracy"] {
        assert!(acc.contains(s), "accuracy.svg lacks {s:?}");
    }
    let imb = read_svg(&charts.join("imbalance.svg"));
    for s in ["Imbalance ratio", "confidence score", "1.0 = balanced", "audio", "visual"] {
        assert!(imb.contains(s), "imbalance.svg lacks {s:?}");
    }
    let aug = read_svg(&charts.join("aug_learners.svg"));
    assert!(aug.contains("learners per modality") && aug.contains("audio"));
    let gap = read_svg(&charts.join("aug_gap.svg"));
    assert!(gap.contains("G = L_strong - L_weak") && gap.contains("G = 0"));
    let aim = read_svg(&charts.join("aim_depth_scores.svg"));
    for s in ["per-depth scores", "Score per depth at epoch 20", "depth 0", "depth 4", "visual"] {
        assert!(aim.contains(s), "aim_depth_scores.svg lacks {s:?}");
    }
    assert!(read_svg(&charts.join("aim_strength.svg")).contains("strength s_d"));
    assert!(read_svg(&charts.join("aim_ratio.svg")).contains("1.0 = balanced"));
    assert!(read_svg(&charts.join("aim_mask_density.svg")).contains("mean over layers"));
}

#[test]
fn plain_run_has_no_aug_or_aim_charts() {
    let tmp = TempDir::new("plain");
    let run = tmp.run("joint", &run_lines(8, "joint", false, false));
    let files = render_report(&run).unwrap();
    check_charts(&run.join("charts"), &files, &["loss", "accuracy", "imbalance"]);
    assert!(
        names(&files).iter().all(|n| !n.starts_with("aug") && !n.starts_with("aim")),
        "{:?}",
        names(&files)
    );
}

#[test]
fn single_epoch_and_sparse_keys() {
    let tmp = TempDir::new("single");
    // Only a few keys; everything else absent.
    let run = tmp.run("one", &[r#"{"epoch":0,"train":{"loss":2.1},"test":{"acc":0.4},"imbalance":{"ratio":1.3}}"#.to_string()]);
    let files = render_report(&run).unwrap();
    check_charts(&run.join("charts"), &files, &["loss", "accuracy", "imbalance"]);
    let imb = std::fs::read_to_string(run.join("charts/imbalance.svg")).unwrap();
    assert!(imb.contains("Imbalance ratio") && !imb.contains("confidence score"), "empty panel should be dropped");

    // A single epoch of the full format, with aug and aim.
    let run = tmp.run("one_full", &run_lines(1, "aim", true, true));
    let files = render_report(&run).unwrap();
    check_charts(&run.join("charts"), &files, &["loss", "accuracy", "aug_learners", "aim_depth_scores", "aim_strength"]);

    // Values whose span is beyond f64 (−1.7e308 to 1.7e308): the axis falls back instead of
    // searching an infinite range for ticks (it once never returned). In a thread, so a
    // regression fails the test rather than hanging the suite.
    let run = tmp.run("huge", &[
        r#"{"epoch":0,"train":{"loss":-1.7e308},"test":{"acc":0.4},"imbalance":{"ratio":1.7e308}}"#.to_string(),
        r#"{"epoch":1,"train":{"loss":1.7e308},"test":{"acc":0.5},"imbalance":{"ratio":-1.7e308}}"#.to_string(),
    ]);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(render_report(&run).map(|f| f.len())).unwrap());
    let done = rx.recv_timeout(std::time::Duration::from_secs(120)).expect("charts of a span beyond f64 did not finish in 120 s");
    assert!(done.unwrap() > 0);
}

#[test]
fn many_epochs() {
    let tmp = TempDir::new("many");
    let run = tmp.run("long", &run_lines(400, "aim", false, true));
    let files = render_report(&run).unwrap();
    check_charts(&run.join("charts"), &files, &["loss", "accuracy", "imbalance", "aim_ratio"]);
}

#[test]
fn all_values_missing_gives_warning_not_error() {
    let tmp = TempDir::new("empty-values");
    let run = tmp.run("novals", &[r#"{"epoch":1,"train":{"loss":null}}"#.into(), r#"{"epoch":2,"lr":0.1}"#.into()]);
    let files = render_report(&run).unwrap();
    let warn = run.join("charts/warnings.txt");
    assert!(files.contains(&warn), "{:?}", names(&files));
    let text = std::fs::read_to_string(warn).unwrap();
    assert!(text.contains("loss: nothing to plot"), "{text}");
}

#[test]
fn corrupt_line_names_file_and_line() {
    let tmp = TempDir::new("corrupt");
    let mut lines = run_lines(4, "aug", true, false);
    lines[2] = r#"{"epoch":3,"train":{"loss":1.2,"#.into(); // truncated write
    let run = tmp.run("bad", &lines);
    let err = render_report(&run).unwrap_err().to_string();
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains(&run.join("metrics.jsonl").display().to_string()), "{err}");

    let run = tmp.run("notobj", &[r#"{"epoch":1}"#.into(), "[1,2,3]".into()]);
    let err = render_report(&run).unwrap_err().to_string();
    assert!(err.contains("line 2") && err.contains("object"), "{err}");
}

#[test]
fn missing_or_empty_file_is_a_clear_error() {
    let tmp = TempDir::new("missing");
    let dir = tmp.path().join("no_such_run");
    let err = render_report(&dir).unwrap_err().to_string();
    assert!(err.contains(&dir.join("metrics.jsonl").display().to_string()), "{err}");

    let run = tmp.run("empty", &["".into(), "   ".into()]);
    let err = render_report(&run).unwrap_err().to_string();
    assert!(err.contains("empty") && err.contains("metrics.jsonl"), "{err}");
}

#[test]
fn comparison_overlays_runs() {
    let tmp = TempDir::new("compare");
    let a = tmp.run("run_joint", &run_lines(30, "joint", false, false));
    let b = tmp.run("run_aug", &run_lines(30, "aug", true, false));
    let c = tmp.run("run_aim", &run_lines(25, "aim", false, true));
    let out = tmp.path().join("compare");
    let files = render_comparison(&[&a, &b, &c], &out).unwrap();
    check_charts(&out, &files, &["comparison_accuracy"]);
    let svg = std::fs::read_to_string(out.join("comparison_accuracy.svg")).unwrap();
    for s in ["run_joint (joint)", "run_aug (aug)", "run_aim (aim)", "method comparison"] {
        assert!(svg.contains(s), "comparison lacks {s:?}");
    }
    assert!(render_comparison(&[], &out).is_err());
    let missing = tmp.path().join("nope");
    let err = render_comparison(&[&a, &missing], &out).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn svg_only_option() {
    let tmp = TempDir::new("svgonly");
    let run = tmp.run("r", &run_lines(5, "aug", true, false));
    let out = tmp.path().join("charts_svg");
    let opts = ReportOptions { png: false, ..ReportOptions::default() };
    let report = equimodal::report::render_report_with(&run, &out, &opts).unwrap();
    assert!(report.files.iter().all(|f| f.extension().unwrap() == "svg"), "{:?}", report.files);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

/// Without any font the SVGs are still written (text is native there) and the PNGs are
/// skipped with a warning. Font registration is per process, so this runs in a child
/// process of this test binary with `EQUIMODAL_FONT=none`.
#[test]
fn no_font_writes_svg_and_warns() {
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args(["report::no_font_child", "--exact", "--nocapture", "--test-threads=1"])
        .env("EQUIMODAL_FONT", "none")
        .env("EQUIMODAL_REPORT_NO_FONT_CHILD", "1")
        .output()
        .unwrap();
    let log = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "child failed:\n{log}");
    assert!(log.contains("no-font child ok"), "child did not run:\n{log}");
}

#[test]
fn no_font_child() {
    if std::env::var_os("EQUIMODAL_REPORT_NO_FONT_CHILD").is_none() {
        return; // only meaningful as the child of no_font_writes_svg_and_warns
    }
    let tmp = TempDir::new("nofont");
    let run = tmp.run("r", &run_lines(6, "aug", true, true));
    let files = render_report(&run).unwrap();
    let n = names(&files);
    assert!(n.iter().all(|f| !f.ends_with(".png")), "{n:?}");
    for stem in ["loss", "accuracy", "imbalance", "aug_gap", "aim_ratio"] {
        let svg = read_svg(&run.join(format!("charts/{stem}.svg")));
        assert!(svg.contains("epoch"), "{stem}.svg has no axis label");
    }
    let warn = std::fs::read_to_string(run.join("charts/warnings.txt")).unwrap();
    assert!(warn.contains("PNG charts skipped"), "{warn}");
    println!("no-font child ok");
}
