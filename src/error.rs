//! Typed errors. Every message names the file, field or shapes involved.
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    #[error("GPU device request failed: {0}")]
    Device(String),
    #[error("GPU device lost or failed: {0}")]
    DeviceLost(String),
    #[error("shape error in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("dtype error in {op}: {msg}")]
    DType { op: &'static str, msg: String },
    #[error("{0}")]
    Autograd(String),
    #[error("config error: field `{field}`: {msg}")]
    Config { field: String, msg: String },
    #[error("I/O error on {path}: {source}")]
    Io { path: String, #[source] source: std::io::Error },
    #[error("bad data in {path}: {msg}")]
    Data { path: String, msg: String },
    /// A dataset file or folder that is not where it was looked for; `hint` says where the
    /// data root came from and how to obtain the data.
    #[error("{what} not found at {path}: {hint}")]
    MissingData { what: String, path: String, hint: String },
    /// A download that did not complete (network, HTTP status, timeout).
    #[error("download failed: {url}: {msg}")]
    Download { url: String, msg: String },
    /// A downloaded file whose size or SHA-256 is not the manifest's; it was discarded.
    #[error("checksum mismatch for {path} (from {url}): expected SHA-256 {expected}, got {got}; the download was discarded")]
    Checksum { path: String, url: String, expected: String, got: String },
    #[error("non-finite value: {0}")]
    NonFinite(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { field: field.into(), msg: msg.into() }
    }
    pub fn data(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Data { path: path.into(), msg: msg.into() }
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
    /// Prefix a device failure with the operation and tensor it hit (the driver's message
    /// alone names neither). Other errors already name their cause and pass unchanged.
    pub fn during(self, what: impl std::fmt::Display) -> Self {
        match self {
            Error::DeviceLost(m) => Error::DeviceLost(format!("{what}: {m}")),
            Error::Device(m) => Error::Device(format!("{what}: {m}")),
            other => other,
        }
    }
}
