//! Reverse-mode autodiff. Ops record a [`Node`] (inputs + backward rule) only when an input
//! requires a gradient and recording is on. `backward` walks the graph once in reverse
//! topological order; an intermediate's gradient is dropped as soon as it has been passed
//! on, and each node's saved tensors are released as soon as its rule has run.
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

thread_local! {
    // Gradient recording mode is per thread (as in PyTorch): one thread evaluating under
    // no_grad does not stop another from recording.
    static NO_GRAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Guard returned by [`no_grad`]; gradient recording resumes when it drops.
pub struct NoGradGuard(());

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        NO_GRAD.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Stop recording gradients on this thread until the guard drops (nests).
pub fn no_grad() -> NoGradGuard {
    NO_GRAD.with(|c| c.set(c.get() + 1));
    NoGradGuard(())
}

/// Whether ops on this thread record gradients.
pub fn grad_enabled() -> bool {
    NO_GRAD.with(|c| c.get() == 0)
}

/// Whether an op on `inputs` records a node now (recording is on and an input requires a
/// gradient): what it saves for a backward is needed only then.
pub fn records(inputs: &[&Tensor]) -> bool {
    grad_enabled() && inputs.iter().any(|t| t.is_tracked())
}

thread_local! {
    // Mixed precision is per thread, as recording is: while a guard is on, the layers of this
    // thread give their GEMMs f16 operands (PyTorch's autocast).
    static AUTOCAST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Guard returned by [`autocast`]; the previous mode returns when it drops.
pub struct AutocastGuard(bool);

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        AUTOCAST.with(|c| c.set(self.0));
    }
}

/// Mixed precision on this thread (`on`) or off until the guard drops (`train.precision =
/// "mixed"`): the layers (`nn::Linear`, `nn::Conv2d`, `nn::MultiHeadAttention`) cast the
/// operands of their products to f16, and a ReLU keeps its mask as f16, so those saved
/// tensors are f16; the products, the outputs, the gradients and the weights stay f32.
pub fn autocast(on: bool) -> AutocastGuard {
    AutocastGuard(AUTOCAST.with(|c| c.replace(on)))
}

/// Whether layers on this thread give their GEMMs f16 operands ([`autocast`]).
pub fn autocast_enabled() -> bool {
    AUTOCAST.with(|c| c.get())
}

/// A dynamic loss scale, shared between the optimizer wrapper that owns it
/// (`optim::GradScaler`) and the backward passes it applies to ([`loss_scaling`]): the scale
/// S (a power of two, as f32 bits) and a one-word device tensor accumulating the bits of the
/// largest |gradient| seen since the wrapper last looked (`0x7f80_0000` or more: a gradient
/// was inf or NaN).
pub struct LossScale {
    scale: std::sync::atomic::AtomicU32,
    found: Tensor,
}

impl LossScale {
    /// A scale of `scale` with nothing found yet, its flag on `gpu`.
    pub fn new(gpu: &crate::gpu::Gpu, scale: f32) -> Result<LossScale> {
        Ok(LossScale { scale: std::sync::atomic::AtomicU32::new(scale.to_bits()), found: Tensor::zeros(gpu, &[1])? })
    }
    /// The current scale S.
    pub fn scale(&self) -> f32 {
        f32::from_bits(self.scale.load(std::sync::atomic::Ordering::Relaxed))
    }
    /// Set S for the next backward passes.
    pub fn set_scale(&self, s: f32) {
        self.scale.store(s.to_bits(), std::sync::atomic::Ordering::Relaxed)
    }
    /// Whether a gradient since the last [`LossScale::clear`] was inf or NaN. Reads the flag
    /// back: waits for the backward passes recorded so far (PyTorch's `GradScaler.step`
    /// waits the same way).
    pub fn found_non_finite(&self) -> Result<bool> {
        let bits = self.found.to_vec()?[0].to_bits();
        Ok(bits >= 0x7f80_0000)
    }
    /// Forget what was found (after a step used it).
    pub fn clear(&self) -> Result<()> {
        crate::ops::fill(&self.found, 0.0)
    }
}

thread_local! {
    // The loss scale of this thread's backward passes, as recording and autocast are per thread.
    static LOSS_SCALE: std::cell::RefCell<Option<std::sync::Arc<LossScale>>> = const { std::cell::RefCell::new(None) };
}

/// Guard returned by [`loss_scaling`]; the previous scale (or none) returns when it drops.
pub struct LossScaleGuard(Option<std::sync::Arc<LossScale>>);

impl Drop for LossScaleGuard {
    fn drop(&mut self) {
        let prev = self.0.take();
        LOSS_SCALE.with(|c| *c.borrow_mut() = prev);
    }
}

/// Scale the backward passes of this thread by `ls` until the guard drops: each seeds with
/// S times its seed, then multiplies every leaf gradient by 1/S and folds its max |value|
/// into `ls`'s flag, so callers see the gradients of the unscaled loss (S is a power of two
/// and the gradients are f32: a finite result has the unscaled bits unless an f32 over- or
/// underflow intervened) and the wrapper can skip a step whose gradients are not finite.
pub fn loss_scaling(ls: std::sync::Arc<LossScale>) -> LossScaleGuard {
    LossScaleGuard(LOSS_SCALE.with(|c| c.borrow_mut().replace(ls)))
}

fn current_loss_scale() -> Option<std::sync::Arc<LossScale>> {
    LOSS_SCALE.with(|c| c.borrow().clone())
}

/// The backward rule of one op: given the gradient of the output, return one optional
/// gradient per input (same shapes as the inputs). Runs with recording off. `inputs` are
/// graph handles: shape, dtype, `is_tracked`, but no data (see `Tensor::graph_handle`); a
/// rule that needs an input's values saves the tensor in its own fields.
pub trait BackwardOp: Send + Sync {
    /// Op name, for error messages.
    fn name(&self) -> &'static str;
    /// One gradient per input, `None` for an input that needs none.
    fn backward(&self, grad: &Tensor, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>>;
}

/// A recorded op: its inputs (graph handles) and its backward rule, kept alive by the tensors it
/// produced. Public only because [`Tensor`] refers to it; it has no public API.
pub struct Node {
    pub(crate) inputs: Vec<Tensor>,
    op: Mutex<Option<Box<dyn BackwardOp>>>,
    name: &'static str,
}

impl Node {
    pub(crate) fn new(inputs: Vec<Tensor>, op: Box<dyn BackwardOp>) -> Node {
        let name = op.name();
        Node { inputs, op: Mutex::new(Some(op)), name }
    }
}

/// Gradients of leaf tensors, by tensor id. Repeated `backward_into` calls add up.
#[derive(Default)]
pub struct Gradients {
    map: HashMap<u64, Tensor>,
}

impl Gradients {
    /// No gradients.
    pub fn new() -> Self {
        Self::default()
    }
    /// The gradient of `t`, if one was recorded.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }
    /// The gradient of the tensor whose [`Tensor::id`] is `id`.
    pub fn get_id(&self, id: u64) -> Option<&Tensor> {
        self.map.get(&id)
    }
    /// Take the gradient of `t` out.
    pub fn remove(&mut self, t: &Tensor) -> Option<Tensor> {
        self.map.remove(&t.id())
    }
    /// Set the gradient of `t`, replacing any previous one.
    pub fn insert(&mut self, t: &Tensor, g: Tensor) {
        self.map.insert(t.id(), g);
    }
    /// Number of tensors with a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// True when no tensor has a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Drop every gradient (their buffers return to the pool).
    pub fn clear(&mut self) {
        self.map.clear();
    }
    /// Add `g` into the gradient of tensor id `id`.
    pub fn accumulate(&mut self, id: u64, g: Tensor) -> Result<()> {
        accumulate(&mut self.map, id, g)
    }
}

fn accumulate(map: &mut HashMap<u64, Tensor>, id: u64, g: Tensor) -> Result<()> {
    match map.remove(&id) {
        Some(prev) => {
            // in place when `prev` is ours alone (it was just taken out of the map)
            let sum = crate::ops::elementwise::add_into(prev, &g)?;
            map.insert(id, sum);
        }
        None => {
            map.insert(id, g);
        }
    }
    Ok(())
}

/// Tensors reachable from `root` through recorded nodes, in post-order (inputs first).
fn topo_order(root: &Tensor) -> Vec<Tensor> {
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    // (tensor, children pushed?)
    let mut stack: Vec<(Tensor, bool)> = vec![(root.clone(), false)];
    while let Some((t, expanded)) = stack.pop() {
        if expanded {
            order.push(t);
            continue;
        }
        if !seen.insert(t.id()) {
            continue;
        }
        let node = t.node().cloned();
        stack.push((t, true));
        if let Some(node) = node {
            for inp in node.inputs.iter().rev() {
                if inp.is_tracked() && !seen.contains(&inp.id()) {
                    stack.push((inp.clone(), false));
                }
            }
        }
    }
    order
}

impl Tensor {
    /// Backward from a one-element tensor (seed 1). Returns the leaf gradients.
    pub fn backward(&self) -> Result<Gradients> {
        let mut g = Gradients::new();
        self.backward_into(&mut g)?;
        Ok(g)
    }

    /// Backward from a one-element tensor, adding into `grads`.
    pub fn backward_into(&self, grads: &mut Gradients) -> Result<()> {
        if self.numel() != 1 {
            return Err(Error::Autograd(format!(
                "backward() needs a one-element loss, got shape {:?}; use backward_with",
                self.shape()
            )));
        }
        let seed = crate::ops::full(self.gpu(), self.shape(), 1.0)?;
        self.backward_with(seed, grads)
    }

    /// Backward with an explicit output gradient (same shape as `self`).
    pub fn backward_with(&self, seed: Tensor, grads: &mut Gradients) -> Result<()> {
        if seed.shape() != self.shape() {
            return Err(Error::Autograd(format!(
                "backward seed shape {:?} differs from output shape {:?}",
                seed.shape(),
                self.shape()
            )));
        }
        if !seed.gpu().same_device(self.gpu()) {
            return Err(Error::Autograd("backward seed lives on another GPU context than the output".into()));
        }
        if !self.is_tracked() {
            return Err(Error::Autograd(
                "backward() on a tensor that does not require grad (no parameter reaches it, or it was built under no_grad)".into(),
            ));
        }
        let _ng = no_grad();
        if let Some(ls) = current_loss_scale() {
            // the leaf gradients of this pass alone, scaled, then unscaled into `grads`
            let mut fresh = Gradients::new();
            self.walk(crate::ops::scale(&seed, ls.scale())?, &mut fresh)?;
            let inv = 1.0 / ls.scale();
            for (id, g) in fresh.map {
                crate::ops::elementwise::abs_max_bits_into(&g, &ls.found)?;
                grads.accumulate(id, crate::ops::scale(&g, inv)?)?;
            }
            return Ok(());
        }
        self.walk(seed, grads)
    }

    /// The backward walk from `seed`, adding each leaf's gradient into `grads`.
    fn walk(&self, seed: Tensor, grads: &mut Gradients) -> Result<()> {
        if self.is_leaf() {
            return grads.accumulate(self.id(), seed);
        }
        let order = topo_order(self);
        let mut local: HashMap<u64, Tensor> = HashMap::new();
        local.insert(self.id(), seed);
        for t in order.iter().rev() {
            let Some(node) = t.node() else { continue };
            let Some(g) = local.remove(&t.id()) else { continue };
            let op = node.op.lock().map_err(|_| Error::Autograd("graph node poisoned".into()))?.take();
            let Some(op) = op else {
                return Err(Error::Autograd(format!(
                    "backward through `{}` a second time: its saved tensors were freed after the first backward",
                    node.name
                )));
            };
            let input_grads = op.backward(&g, &node.inputs)?;
            drop(op);
            if input_grads.len() != node.inputs.len() {
                return Err(Error::Autograd(format!(
                    "`{}` returned {} gradients for {} inputs",
                    node.name,
                    input_grads.len(),
                    node.inputs.len()
                )));
            }
            for (inp, ig) in node.inputs.iter().zip(input_grads) {
                let Some(ig) = ig else { continue };
                if !inp.is_tracked() {
                    continue;
                }
                if ig.shape() != inp.shape() {
                    return Err(Error::Autograd(format!(
                        "`{}` produced a gradient of shape {:?} for an input of shape {:?}",
                        node.name,
                        ig.shape(),
                        inp.shape()
                    )));
                }
                if inp.is_leaf() {
                    grads.accumulate(inp.id(), ig)?;
                } else {
                    accumulate(&mut local, inp.id(), ig)?;
                }
            }
        }
        Ok(())
    }
}
