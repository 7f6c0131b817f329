//! CSV fields as RFC 4180 writes them: the one quoting rule of every CSV the engine writes
//! (the comparison tables, AV-MNIST's pairing).

/// `s` as one CSV field: quoted, with its quotes doubled, where it holds a comma, a quote or
/// a line break; as is otherwise.
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
