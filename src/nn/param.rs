//! Trainable parameters: what modules expose and optimizers update.
use crate::tensor::Tensor;

/// A trainable parameter: a leaf tensor created with `.requires_grad()`, plus a stable name.
#[derive(Clone)]
pub struct Param {
    pub name: String,
    pub tensor: Tensor,
}

impl Param {
    pub fn new(name: impl Into<String>, tensor: Tensor) -> Param {
        Param { name: name.into(), tensor }
    }
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Param({:?}, {:?})", self.name, self.tensor)
    }
}
