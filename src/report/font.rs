//! The TrueType font for PNG text: `EQUIMODAL_FONT`, else common system locations, else a
//! search of the system font folders; registered with plotters once per process.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::style::FontStyle;

use super::FONT_ENV;

/// The family name text is drawn in; the font found is registered under it.
pub(super) const FONT: &str = "sans-serif";

static FONT_FOUND: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Finds a TrueType font and registers it with plotters once per process.
pub(super) fn ensure_font() -> std::result::Result<PathBuf, String> {
    FONT_FOUND.get_or_init(find_and_register_font).clone()
}

const COMMON_FONTS: [&str; 9] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    r"C:\Windows\Fonts\arial.ttf",
    r"C:\Windows\Fonts\segoeui.ttf",
];

fn find_and_register_font() -> std::result::Result<PathBuf, String> {
    let mut rejected: Vec<String> = Vec::new();
    if let Some(v) = std::env::var_os(FONT_ENV) {
        if v.eq_ignore_ascii_case("none") {
            return Err(format!("{FONT_ENV}=none turns PNG output off"));
        }
        let p = PathBuf::from(v);
        match register_font_file(&p) {
            Ok(()) => return Ok(p),
            Err(e) => rejected.push(format!("{FONT_ENV}={}: {e}", p.display())),
        }
    }
    let scanned = ["/usr/share/fonts", "/usr/local/share/fonts"].into_iter().filter_map(|d| first_ttf(Path::new(d)));
    for p in COMMON_FONTS.iter().map(PathBuf::from).filter(|p| p.is_file()).chain(scanned) {
        match register_font_file(&p) {
            Ok(()) => return Ok(p),
            Err(e) => rejected.push(format!("{}: {e}", p.display())),
        }
    }
    let mut msg = format!("no usable TrueType font found (set {FONT_ENV} to a .ttf file)");
    if !rejected.is_empty() {
        msg.push_str(&format!("; rejected: {}", rejected.join("; ")));
    }
    Err(msg)
}

fn register_font_file(path: &Path) -> std::result::Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    // plotters keeps fonts for the life of the process; this happens at most a few times.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| "not a TrueType/OpenType font plotters can read".to_string())
}

/// First `*.ttf` under `root` (sorted walk), preferring regular faces.
fn first_ttf(root: &Path) -> Option<PathBuf> {
    let mut stack = vec![(root.to_path_buf(), 0u32)];
    let mut found: Vec<PathBuf> = Vec::new();
    while let Some((dir, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for p in entries.into_iter().rev() {
            if p.is_dir() {
                if depth < 8 {
                    stack.push((p, depth + 1));
                }
            } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("ttf")) {
                found.push(p);
            }
        }
        if found.len() > 10_000 {
            break;
        }
    }
    found.sort();
    let plain = |p: &&PathBuf| {
        let n = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        !["bold", "italic", "oblique", "mono", "light", "thin", "condensed", "black"].iter().any(|s| n.contains(s))
    };
    found.iter().find(plain).or(found.first()).cloned()
}

