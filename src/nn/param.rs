//! Trainable parameters: what modules expose and optimizers update.
use crate::tensor::Tensor;

/// A trainable parameter: a leaf tensor created with `.requires_grad()`, plus a stable name.
#[derive(Clone)]
pub struct Param {
    /// Full dotted name (e.g. `enc.audio.layer1.0.conv1.weight`): the key in checkpoints,
    /// optimizer state and weight scales.
    pub name: String,
    /// The trainable leaf tensor.
    pub tensor: Tensor,
}

impl Param {
    /// Wraps `tensor` as is (call `.requires_grad()` on it first for gradients to reach it).
    pub fn new(name: impl Into<String>, tensor: Tensor) -> Param {
        Param { name: name.into(), tensor }
    }
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Param({:?}, {:?})", self.name, self.tensor)
    }
}
