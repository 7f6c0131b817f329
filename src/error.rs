//! Typed errors. Every message names the file, field or shapes involved.
use thiserror::Error;

/// Every error the crate returns. The variant says which layer failed; the fields name
/// what it failed on.
#[derive(Debug, Error)]
pub enum Error {
    /// No adapter matched the requested backends and name; the message lists what was found.
    #[error("no GPU adapter found: {0}")]
    NoAdapter(String),
    /// The adapter refused to open a device (e.g. a limit or feature it lacks).
    #[error("GPU device request failed: {0}")]
    Device(String),
    /// A failure after the device was opened: a validation or out-of-memory error the
    /// device reported, a lost device, or a readback that did not complete.
    #[error("GPU device lost or failed: {0}")]
    DeviceLost(String),
    #[error("shape error in {op}: {msg}")]
    /// Operands whose shapes do not fit the op (or a shape over a size limit).
    Shape {
        /// The op or function that checked, e.g. `matmul`.
        op: &'static str,
        /// The shapes involved and what was expected.
        msg: String,
    },
    #[error("dtype error in {op}: {msg}")]
    /// An operand of a dtype the op does not accept.
    DType {
        /// The op or function that checked.
        op: &'static str,
        /// The dtypes involved and what was expected.
        msg: String,
    },
    /// Misuse of the graph: backward of a non-scalar or of a tensor that needs no gradient,
    /// or a gradient of the wrong shape.
    #[error("{0}")]
    Autograd(String),
    #[error("config error: field `{field}`: {msg}")]
    /// A setting (run file, `--set`, environment variable) with a bad value.
    Config {
        /// The setting's dotted path, e.g. `train.lr`, or the variable's name.
        field: String,
        /// What is wrong and what is allowed.
        msg: String,
    },
    #[error("I/O error on {path}: {source}")]
    /// A file-system operation that failed.
    Io {
        /// The file or folder.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    #[error("bad data in {path}: {msg}")]
    /// Data whose contents are malformed (a data, log or run file, labels).
    Data {
        /// The file (or, for data that is not one, what it is, e.g. `labels`).
        path: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A dataset file or folder that is not where it was looked for; `hint` says where the
    /// data root came from and how to obtain the data.
    #[error("{what} not found at {path}: {hint}")]
    MissingData {
        /// What was looked for, e.g. "CREMA-D audio folder".
        what: String,
        /// Where it was looked for.
        path: String,
        /// Where the data root came from and how to obtain the data.
        hint: String,
    },
    /// A download that did not complete (network, HTTP status, timeout).
    #[error("download failed: {url}: {msg}")]
    Download {
        /// The address fetched.
        url: String,
        /// What went wrong.
        msg: String,
    },
    /// A downloaded file whose size or SHA-256 is not the manifest's; it was discarded.
    #[error("checksum mismatch for {path} (from {url}): expected SHA-256 {expected}, got {got}; the download was discarded")]
    Checksum {
        /// The file's path in the dataset's manifest.
        path: String,
        /// Where it came from.
        url: String,
        /// The manifest's SHA-256 (hex) and size.
        expected: String,
        /// The downloaded bytes' SHA-256 and size.
        got: String,
    },
    /// The device (or the configured memory limit) could not hold a new buffer of `bytes`,
    /// even after the pool released its cache. A run that hits it ends with its last
    /// checkpoint intact.
    #[error("out of GPU memory allocating {bytes} bytes: {msg}")]
    OutOfMemory {
        /// Size of the buffer asked for.
        bytes: u64,
        /// The tensor it was for, why it failed, and what the pool held.
        msg: String,
    },
    /// A NaN or infinity in a loss, logits or an input where training cannot continue.
    #[error("non-finite value: {0}")]
    NonFinite(String),
    /// Anything else; the message names the op or component.
    #[error("{0}")]
    Other(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Shape`] from `op`.
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape { op, msg: msg.into() }
    }
    /// An [`Error::Config`] for the setting `field`.
    pub fn config(field: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { field: field.into(), msg: msg.into() }
    }
    /// An [`Error::Data`] for the file `path`.
    pub fn data(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Data { path: path.into(), msg: msg.into() }
    }
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
    /// Prefix a device failure with the operation and tensor it hit (the driver's message
    /// alone names neither). Other errors already name their cause and pass unchanged.
    pub fn during(self, what: impl std::fmt::Display) -> Self {
        match self {
            Error::DeviceLost(m) => Error::DeviceLost(format!("{what}: {m}")),
            Error::Device(m) => Error::Device(format!("{what}: {m}")),
            Error::OutOfMemory { bytes, msg } => Error::OutOfMemory { bytes, msg: format!("{what}: {msg}") },
            other => other,
        }
    }
}
