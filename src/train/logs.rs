//! The per-epoch log in the formats people already read, next to `metrics.jsonl`:
//! `metrics.csv` (one row per epoch, one column per scalar) and TensorBoard event files
//! (`tb/`). Both are derived from the JSON lines: rebuilt from the whole log whenever it
//! is truncated (a resume), appended to otherwise.
//!
//! TensorBoard: no Rust crate that writes event files is maintained today (tensorboard-rs
//! is archived, syntaxdot-summary is a pre-release part of another project), and the
//! format for scalars is small, so it is written here: TFRecord framing (length,
//! masked CRC-32C of the length, payload, masked CRC-32C of the payload) around `Event`
//! protocol-buffer messages with a `Summary` of `simple_value`s.
use crate::error::{Error, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The scalars of a log line, flattened to `a.b.c` paths (arrays by index), in line order.
pub fn scalars(line: &Value) -> Vec<(String, f64)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
        let join = |k: &str| if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
        match v {
            Value::Number(n) => out.extend(n.as_f64().map(|x| (prefix.to_string(), x))),
            Value::Bool(b) => out.push((prefix.to_string(), if *b { 1.0 } else { 0.0 })),
            Value::Object(m) => m.iter().for_each(|(k, x)| walk(&join(k), x, out)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| walk(&join(&i.to_string()), x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", line, &mut out);
    out
}

/// Write `metrics.csv` for all of `lines`: a column per scalar that any line has (`epoch`
/// first, then in order of first appearance), empty where a line lacks it.
pub fn write_csv(path: &Path, lines: &[Value]) -> Result<()> {
    let rows: Vec<BTreeMap<String, f64>> = lines.iter().map(|l| scalars(l).into_iter().collect()).collect();
    let mut cols: Vec<String> = vec!["epoch".into()];
    for l in lines {
        for (k, _) in scalars(l) {
            if !cols.contains(&k) {
                cols.push(k);
            }
        }
    }
    let mut text = cols.join(",");
    text.push('\n');
    for r in &rows {
        let cells: Vec<String> = cols.iter().map(|c| r.get(c).map(|v| v.to_string()).unwrap_or_default()).collect();
        text.push_str(&cells.join(","));
        text.push('\n');
    }
    super::checkpoint::write_atomic(path, text.as_bytes())
}

// ---- TensorBoard ------------------------------------------------------------------------

/// CRC-32C (Castagnoli), bitwise; the records are small.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// TFRecord's masked CRC: rotate right by 15 and add a constant.
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn bytes_field(field: u32, data: &[u8], out: &mut Vec<u8>) {
    varint(((field << 3) | 2) as u64, out);
    varint(data.len() as u64, out);
    out.extend_from_slice(data);
}

/// `Event { wall_time = 1 (double), step = 2 (int64), file_version = 3 | summary = 5 }`,
/// `Summary { value = 1 }`, `Summary.Value { tag = 1, simple_value = 2 (float) }`.
fn event(wall_time: f64, step: i64, body: EventBody) -> Vec<u8> {
    let mut e = Vec::new();
    e.push((1 << 3) | 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(2 << 3);
    varint(step as u64, &mut e);
    match body {
        EventBody::Version => bytes_field(3, b"brain.Event:2", &mut e),
        EventBody::Scalars(vals) => {
            let mut summary = Vec::new();
            for (tag, v) in vals {
                let mut value = Vec::new();
                bytes_field(1, tag.as_bytes(), &mut value);
                value.push((2 << 3) | 5);
                value.extend_from_slice(&(*v as f32).to_le_bytes());
                bytes_field(1, &value, &mut summary);
            }
            bytes_field(5, &summary, &mut e);
        }
    }
    e
}

enum EventBody<'a> {
    Version,
    Scalars(&'a [(String, f64)]),
}

fn record(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
}

/// The run's TensorBoard folder (`--logdir` for a run).
pub const TB_DIR: &str = "tb";
/// The TensorBoard event file of a run directory (one file, so a resume rewrites it).
pub const TB_FILE: &str = "tb/events.out.tfevents.0.equimodal";

/// Tags: the scalar paths with `/` for TensorBoard's grouping (`test/acc`), minus `epoch`.
fn tb_scalars(line: &Value) -> Vec<(String, f64)> {
    scalars(line).into_iter().filter(|(k, _)| k != "epoch").map(|(k, v)| (k.replace('.', "/"), v)).collect()
}

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Rewrite the run's event file from all of `lines` (the step is the 1-based epoch).
pub fn write_tensorboard(run_dir: &Path, lines: &[Value]) -> Result<()> {
    let mut buf = Vec::new();
    record(&event(now(), 0, EventBody::Version), &mut buf);
    for l in lines {
        let step = l.get("epoch").and_then(|e| e.as_i64()).unwrap_or(0) + 1;
        record(&event(now(), step, EventBody::Scalars(&tb_scalars(l))), &mut buf);
    }
    super::checkpoint::write_atomic(&run_dir.join(TB_FILE), &buf)
}

/// Append one epoch's line to the run's event file (created with its version record first).
pub fn append_tensorboard(run_dir: &Path, line: &Value) -> Result<()> {
    let path = run_dir.join(TB_FILE);
    if !path.exists() {
        return write_tensorboard(run_dir, std::slice::from_ref(line));
    }
    let mut buf = Vec::new();
    let step = line.get("epoch").and_then(|e| e.as_i64()).unwrap_or(0) + 1;
    record(&event(now(), step, EventBody::Scalars(&tb_scalars(line))), &mut buf);
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).map_err(|e| Error::io(&path, e))?;
    f.write_all(&buf).map_err(|e| Error::io(&path, e))?;
    f.sync_data().map_err(|e| Error::io(&path, e))
}

/// Read back an event file written here: (step, tag, value) of every scalar, after checking
/// every record's framing and checksums (the test of the writer, and a tool for users).
pub fn read_tensorboard(path: &Path) -> Result<Vec<(i64, String, f32)>> {
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |m: &str| Error::data(path.display().to_string(), m.to_string());
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let head = data.get(i..i + 12).ok_or_else(|| bad("truncated record header"))?;
        let len = u64::from_le_bytes(head[..8].try_into().map_err(|_| bad("header"))?) as usize;
        if masked_crc(&head[..8]).to_le_bytes() != head[8..12] {
            return Err(bad("length checksum mismatch"));
        }
        let payload = data.get(i + 12..i + 12 + len).ok_or_else(|| bad("truncated record"))?;
        let crc = data.get(i + 12 + len..i + 16 + len).ok_or_else(|| bad("truncated checksum"))?;
        if masked_crc(payload).to_le_bytes() != crc {
            return Err(bad("payload checksum mismatch"));
        }
        parse_event(payload, &mut out).ok_or_else(|| bad("malformed Event message"))?;
        i += 16 + len;
    }
    Ok(out)
}

fn read_varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let x = *b.get(*i)?;
        *i += 1;
        v |= ((x & 0x7f) as u64) << shift;
        if x < 0x80 {
            return Some(v);
        }
    }
    None
}

/// A protobuf field: number, wire type, varint value, bytes (length-delimited and fixed).
type Field<'a> = (u32, u8, u64, &'a [u8]);

/// The protobuf fields of a message.
fn fields(b: &[u8]) -> Option<Vec<Field<'_>>> {
    let mut i = 0;
    let mut out = Vec::new();
    while i < b.len() {
        let key = read_varint(b, &mut i)?;
        let (f, w) = ((key >> 3) as u32, (key & 7) as u8);
        match w {
            0 => out.push((f, w, read_varint(b, &mut i)?, &b[0..0])),
            1 => {
                out.push((f, w, 0, b.get(i..i + 8)?));
                i += 8;
            }
            2 => {
                let n = read_varint(b, &mut i)? as usize;
                out.push((f, w, 0, b.get(i..i + n)?));
                i += n;
            }
            5 => {
                out.push((f, w, 0, b.get(i..i + 4)?));
                i += 4;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn parse_event(b: &[u8], out: &mut Vec<(i64, String, f32)>) -> Option<()> {
    let fs = fields(b)?;
    let step = fs.iter().find(|f| f.0 == 2).map(|f| f.2 as i64).unwrap_or(0);
    for (_, _, _, summary) in fs.iter().filter(|f| f.0 == 5 && f.1 == 2) {
        for (_, _, _, value) in fields(summary)?.into_iter().filter(|f| f.0 == 1) {
            let vf = fields(value)?;
            let tag = String::from_utf8(vf.iter().find(|f| f.0 == 1)?.3.to_vec()).ok()?;
            let v = f32::from_le_bytes(vf.iter().find(|f| f.0 == 2)?.3.try_into().ok()?);
            out.push((step, tag, v));
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_known_answer() {
        // the CRC-32C check value (RFC 3720, iSCSI)
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
