//! Reading a run's metric log (`metrics.jsonl`) into per-epoch series; the keys it knows
//! are listed in the module documentation of [`crate::report`].

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};

/// One run's metric log: its records in epoch order and what they name.
pub(super) struct RunLog {
    pub(super) path: PathBuf,
    /// One record per epoch, sorted by epoch.
    pub(super) records: Vec<Value>,
    /// The x value (epoch) of each record.
    pub(super) xs: Vec<f64>,
    pub(super) modalities: Vec<String>,
    pub(super) method: Option<String>,
}

impl RunLog {
    pub(super) fn load(path: &Path) -> Result<RunLog> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let where_ = || path.display().to_string();
        let mut rows: Vec<(f64, Value)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(&non_finite_to_null(line)).map_err(|e| {
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                Error::data(where_(), format!("line {line_no}, column {}: invalid JSON: {msg}", e.column()))
            })?;
            if !value.is_object() {
                return Err(Error::data(
                    where_(),
                    format!("line {line_no}: expected one JSON object per line, found {}", kind(&value)),
                ));
            }
            // A record without a usable epoch follows the previous one.
            let x = value
                .get("epoch")
                .and_then(num)
                .unwrap_or_else(|| rows.last().map_or(0.0, |r| r.0 + 1.0));
            rows.push((x, value));
        }
        if rows.is_empty() {
            return Err(Error::data(where_(), "no metric records: the file is empty"));
        }
        // Epoch order; when an epoch repeats (a resumed run) the later record wins.
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut xs: Vec<f64> = Vec::with_capacity(rows.len());
        let mut records: Vec<Value> = Vec::with_capacity(rows.len());
        for (x, v) in rows {
            if xs.last() == Some(&x) {
                *records.last_mut().unwrap() = v;
            } else {
                xs.push(x);
                records.push(v);
            }
        }
        let modalities = collect_modalities(&records);
        let method = records.iter().rev().find_map(|r| r.get("method")?.as_str().map(str::to_string));
        Ok(RunLog { path: path.to_path_buf(), records, xs, modalities, method })
    }

    pub(super) fn series(&self, f: impl Fn(&Value) -> Option<f64>) -> Pts {
        self.xs.iter().zip(&self.records).map(|(x, r)| (*x, f(r))).collect()
    }

    pub(super) fn field(&self, path: &[&str]) -> Pts {
        self.series(|r| at(r, path).and_then(num))
    }

    pub(super) fn has_section(&self, key: &str) -> bool {
        self.records.iter().any(|r| r.get(key).is_some_and(Value::is_object))
    }

    pub(super) fn title(&self, what: &str) -> String {
        let dir = self.path.parent().map(run_name).unwrap_or_default();
        match (&self.method, dir.is_empty()) {
            (Some(m), false) => format!("{what} - {dir} ({m})"),
            (Some(m), true) => format!("{what} ({m})"),
            (None, false) => format!("{what} - {dir}"),
            (None, true) => what.to_string(),
        }
    }
}

/// A series: (epoch, value), `None` where the value is missing (a gap in the curve).
pub(super) type Pts = Vec<(f64, Option<f64>)>;

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Replaces the non-standard literals `NaN`, `Infinity`, `-Infinity` (outside strings)
/// by `null`, so logs written by Python's `json` module parse; they are gaps anyway.
fn non_finite_to_null(line: &str) -> Cow<'_, str> {
    if !line.contains("NaN") && !line.contains("Infinity") {
        return Cow::Borrowed(line);
    }
    const TOKENS: [&str; 5] = ["-Infinity", "+Infinity", "Infinity", "-NaN", "NaN"];
    let b = line.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let (mut in_str, mut escaped, mut i) = (false, false, 0);
    'outer: while i < b.len() {
        let c = b[i];
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
        } else if c == b'"' {
            in_str = true;
        } else {
            for t in TOKENS {
                if b[i..].starts_with(t.as_bytes()) {
                    out.extend_from_slice(b"null");
                    i += t.len();
                    continue 'outer;
                }
            }
        }
        out.push(c);
        i += 1;
    }
    // Only ASCII tokens were replaced, so the bytes are still UTF-8.
    Cow::Owned(String::from_utf8(out).unwrap_or_else(|_| line.to_string()))
}

/// The value at a key path (`["test", "acc"]`), if every key is there.
pub(super) fn at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

/// A finite number (numbers written as strings are accepted); anything else is a gap.
pub(super) fn num(v: &Value) -> Option<f64> {
    let x = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

pub(super) fn has_data(pts: &Pts) -> bool {
    pts.iter().any(|p| p.1.is_some())
}

fn collect_modalities(records: &[Value]) -> Vec<String> {
    let mut mods: Vec<String> = Vec::new();
    let mut add = |m: &str| {
        if !mods.iter().any(|x| x == m) {
            mods.push(m.to_string());
        }
    };
    for r in records {
        if let Some(Value::Array(a)) = r.get("modalities") {
            a.iter().filter_map(Value::as_str).for_each(&mut add);
        }
    }
    const KEYED: [&[&str]; 7] = [
        &["train", "per_modality_loss"],
        &["test", "per_modality"],
        &["val", "per_modality"],
        &["imbalance", "scores"],
        &["aug", "learners"],
        &["aim", "scores"],
        &["train", "per_modality"],
    ];
    for r in records {
        for path in KEYED {
            if let Some(Value::Object(o)) = at(r, path) {
                o.keys().for_each(|k| add(k));
            }
        }
    }
    mods
}

/// The name a run directory goes by in titles and legends.
pub(super) fn run_name(dir: &Path) -> String {
    // `canonicalize` turns "." or "runs/x/" into a name; fall back to the text given.
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    named(dir)
        .or_else(|| dir.canonicalize().ok().and_then(|p| named(&p)))
        .unwrap_or_else(|| dir.display().to_string())
}
