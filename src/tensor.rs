//! GPU tensors: contiguous storage from the buffer pool, a shape, a dtype, and (when
//! gradients are recorded) the node that produced it.
use crate::autograd::{BackwardOp, Node};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, Storage};
use std::sync::Arc;

/// Element type of the storage. `F16` is stored packed two per 32-bit word (IEEE half),
/// so it works on every device; kernels unpack with `unpack2x16float`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float, the dtype of every computation.
    F32,
    /// 16-bit IEEE half, two per 32-bit word (storage only: kernels compute in f32).
    F16,
    /// 32-bit unsigned integer: labels, indices, bit masks.
    U32,
}

impl DType {
    /// Bytes per element (2 for `F16`; buffers round the total up to 4).
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 => 2,
        }
    }
}

pub(crate) struct TensorInner {
    pub(crate) id: u64,
    pub(crate) gpu: Gpu,
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: DType,
    pub(crate) storage: Arc<Storage>,
    pub(crate) requires_grad: bool,
    pub(crate) node: Option<Arc<Node>>,
}

/// A tensor on the GPU. Clones share storage (cheap).
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<TensorInner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor#{}({:?}, {:?}{})", self.id(), self.0.shape, self.0.dtype, if self.0.requires_grad { ", grad" } else { "" })
    }
}

/// Number of elements of `shape` (1 for `[]`). Does not check for overflow; see
/// `limits::checked_numel`.
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

impl Tensor {
    fn wrap(gpu: &Gpu, shape: Vec<usize>, dtype: DType, storage: Arc<Storage>, requires_grad: bool, node: Option<Arc<Node>>) -> Tensor {
        Tensor(Arc::new(TensorInner { id: gpu.next_id(), gpu: gpu.clone(), shape, dtype, storage, requires_grad, node }))
    }

    /// Uninitialised tensor (contents are whatever the pooled buffer held).
    pub fn empty(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let bytes = crate::limits::checked_numel(shape, "tensor shape")?
            .checked_mul(dtype.size_bytes())
            .ok_or_else(|| Error::shape("Tensor::empty", format!("shape {shape:?} of {dtype:?} overflows the byte count")))?
            .div_ceil(4)
            * 4;
        let storage = gpu.alloc(bytes as u64).map_err(|e| match e {
            Error::Other(m) => Error::shape("Tensor::empty", format!("shape {shape:?} of {dtype:?}: {m}")),
            e => e.during(format_args!("allocating a tensor of shape {shape:?}")),
        })?;
        Ok(Self::wrap(gpu, shape.to_vec(), dtype, storage, false, None))
    }

    /// An f32 tensor of zeros (a buffer clear, no kernel).
    pub fn zeros(gpu: &Gpu, shape: &[usize]) -> Result<Tensor> {
        Self::zeros_dtype(gpu, shape, DType::F32)
    }

    /// A tensor of zeros of any dtype.
    pub fn zeros_dtype(gpu: &Gpu, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let t = Self::empty(gpu, shape, dtype)?;
        gpu.clear(t.buffer(), 0, t.byte_len())?;
        Ok(t)
    }

    fn check_len(op: &'static str, shape: &[usize], len: usize) -> Result<()> {
        if numel(shape) != len {
            return Err(Error::shape(op, format!("shape {shape:?} holds {} elements, data has {len}", numel(shape))));
        }
        Ok(())
    }

    /// Upload f32 data.
    pub fn from_slice(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Self::check_len("from_slice", shape, data.len())?;
        let t = Self::empty(gpu, shape, DType::F32)?;
        gpu.upload(t.buffer(), 0, bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// Upload f32 data as f16 storage.
    pub fn from_slice_f16(gpu: &Gpu, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Self::check_len("from_slice_f16", shape, data.len())?;
        let h: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x)).collect();
        let t = Self::empty(gpu, shape, DType::F16)?;
        gpu.upload(t.buffer(), 0, bytemuck::cast_slice(&h))?;
        Ok(t)
    }

    /// Upload u32 data (labels, indices).
    pub fn from_u32(gpu: &Gpu, data: &[u32], shape: &[usize]) -> Result<Tensor> {
        Self::check_len("from_u32", shape, data.len())?;
        let t = Self::empty(gpu, shape, DType::U32)?;
        gpu.upload(t.buffer(), 0, bytemuck::cast_slice(data))?;
        Ok(t)
    }

    /// A new leaf sharing this tensor's storage.
    fn leaf(&self, requires_grad: bool) -> Tensor {
        Tensor(Arc::new(TensorInner {
            id: self.0.gpu.next_id(),
            gpu: self.0.gpu.clone(),
            shape: self.0.shape.clone(),
            dtype: self.0.dtype,
            storage: self.0.storage.clone(),
            requires_grad,
            node: None,
        }))
    }

    /// A trainable leaf: same storage, gradients recorded for it.
    pub fn requires_grad(&self) -> Tensor {
        self.leaf(true)
    }

    /// The same tensor for the graph (id, shape, dtype, grad flag, producing node) without
    /// its data: what a graph node keeps of its inputs. Backward rules read only this
    /// metadata of their inputs (data they need they save themselves), so an intermediate's
    /// buffer goes back to the pool as soon as nothing but the graph refers to it, as in
    /// PyTorch, instead of living until the backward. Reading its data panics.
    pub(crate) fn graph_handle(&self) -> Tensor {
        let pool = self.0.storage.pool.clone();
        Tensor(Arc::new(TensorInner {
            id: self.0.id,
            gpu: self.0.gpu.clone(),
            shape: self.0.shape.clone(),
            dtype: self.0.dtype,
            storage: Arc::new(Storage { range: None, id: None, bytes: 0, serial: 0, pool }),
            requires_grad: self.0.requires_grad,
            node: self.0.node.clone(),
        }))
    }

    /// Same storage, cut from the graph.
    pub fn detach(&self) -> Tensor {
        self.leaf(false)
    }

    /// Result of an op: records a graph node when gradients are on and an input needs one.
    pub(crate) fn from_op(
        gpu: &Gpu,
        shape: Vec<usize>,
        dtype: DType,
        storage: Arc<Storage>,
        inputs: &[&Tensor],
        op: impl FnOnce() -> Box<dyn BackwardOp>,
    ) -> Tensor {
        let track = crate::autograd::records(inputs);
        let node = track.then(|| Arc::new(Node::new(inputs.iter().map(|t| t.graph_handle()).collect(), op())));
        Self::wrap(gpu, shape, dtype, storage, track, node)
    }

    /// Wrap a freshly computed output tensor (from `Tensor::empty`) as the result of an op.
    pub(crate) fn with_grad_fn(self, inputs: &[&Tensor], op: impl FnOnce() -> Box<dyn BackwardOp>) -> Tensor {
        let gpu = self.0.gpu.clone();
        let inner = Arc::try_unwrap(self.0).unwrap_or_else(|a| TensorInner {
            id: a.id,
            gpu: a.gpu.clone(),
            shape: a.shape.clone(),
            dtype: a.dtype,
            storage: a.storage.clone(),
            requires_grad: false,
            node: None,
        });
        Self::from_op(&gpu, inner.shape, inner.dtype, inner.storage, inputs, op)
    }

    /// Identity in the graph and in [`crate::Gradients`]: clones share it, `detach` and
    /// `requires_grad` make a new one.
    pub fn id(&self) -> u64 {
        self.0.id
    }
    /// The context the tensor lives on.
    pub fn gpu(&self) -> &Gpu {
        &self.0.gpu
    }
    /// Size of each dimension.
    pub fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    /// Number of dimensions.
    pub fn dims(&self) -> usize {
        self.0.shape.len()
    }
    /// Size of dimension `i`; panics when `i >= dims()`.
    pub fn dim(&self, i: usize) -> usize {
        self.0.shape[i]
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        numel(&self.0.shape)
    }
    /// Element type of the storage.
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    /// True when gradients flow to this tensor: a leaf from [`Tensor::requires_grad`], or an op's
    /// result recorded while one of its inputs was tracked.
    pub fn is_tracked(&self) -> bool {
        self.0.requires_grad
    }
    /// True when no op node produced this tensor: uploads, `requires_grad`, `detach`, and op
    /// results that recorded none (gradients off, or no tracked input).
    pub fn is_leaf(&self) -> bool {
        self.0.node.is_none()
    }
    /// The device range holding the data (a block of a pooled segment; what launches bind).
    /// Panics on a graph handle, which has no data.
    pub fn buffer(&self) -> &crate::gpu::BufferRange {
        self.0.storage.buffer()
    }
    /// The pooled storage, shared by clones and by `detach`/`requires_grad` views.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.0.storage
    }
    /// Bytes of element data (rounded up to 4).
    pub fn byte_len(&self) -> u64 {
        ((self.numel() * self.0.dtype.size_bytes()).div_ceil(4) * 4) as u64
    }
    pub(crate) fn node(&self) -> Option<&Arc<Node>> {
        self.0.node.as_ref()
    }

    /// Download as f32 (f16 storage is widened).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        let bytes = self.0.gpu.read_bytes(self.buffer(), 0, self.byte_len()).map_err(|e| e.during(format_args!("reading back a tensor of shape {:?}", self.shape())))?;
        Ok(match self.0.dtype {
            DType::F32 => bytemuck::pod_collect_to_vec(&bytes),
            DType::F16 => {
                let h: Vec<half::f16> = bytemuck::pod_collect_to_vec(&bytes);
                h[..self.numel()].iter().map(|x| x.to_f32()).collect()
            }
            DType::U32 => {
                return Err(Error::DType { op: "to_vec", msg: "tensor holds u32; use to_vec_u32".into() });
            }
        })
    }

    /// Download u32 data; a `DType` error for other dtypes.
    pub fn to_vec_u32(&self) -> Result<Vec<u32>> {
        if self.0.dtype != DType::U32 {
            return Err(Error::DType { op: "to_vec_u32", msg: format!("tensor holds {:?}", self.0.dtype) });
        }
        let bytes = self.0.gpu.read_bytes(self.buffer(), 0, self.byte_len())?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }

    /// The single value of a one-element tensor.
    pub fn item(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::shape("item", format!("needs one element, shape is {:?}", self.shape())));
        }
        Ok(self.to_vec()?[0])
    }

    /// Same data, new shape (a view: no copy). One dimension may be `usize::MAX` (inferred).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        let mut shape = shape.to_vec();
        let known: usize = shape.iter().filter(|&&d| d != usize::MAX).product();
        let holes = shape.iter().filter(|&&d| d == usize::MAX).count();
        if holes > 1 || (holes == 1 && (known == 0 || self.numel() % known != 0)) {
            return Err(Error::shape("reshape", format!("cannot infer {:?} from {:?}", shape, self.shape())));
        }
        if holes == 1 {
            for d in shape.iter_mut() {
                if *d == usize::MAX {
                    *d = self.numel() / known;
                }
            }
        }
        if numel(&shape) != self.numel() {
            return Err(Error::shape("reshape", format!("{:?} ({} elements) to {:?}", self.shape(), self.numel(), shape)));
        }
        let from = self.shape().to_vec();
        Ok(Tensor::from_op(&self.0.gpu, shape, self.0.dtype, self.0.storage.clone(), &[self], || {
            Box::new(ReshapeBack { from })
        }))
    }

    /// Copy into fresh storage (same shape, not tracked).
    pub fn deep_copy(&self) -> Result<Tensor> {
        let t = Tensor::empty(&self.0.gpu, self.shape(), self.0.dtype)?;
        self.0.gpu.copy(self.buffer(), 0, t.buffer(), 0, self.byte_len())?;
        Ok(t)
    }

    /// Overwrite this tensor's storage with `src`'s contents (same shape and dtype). In
    /// place: used for parameters, never recorded.
    pub fn assign(&self, src: &Tensor) -> Result<()> {
        if src.shape() != self.shape() || src.dtype() != self.dtype() {
            return Err(Error::shape("assign", format!("{:?} {:?} into {:?} {:?}", src.shape(), src.dtype(), self.shape(), self.dtype())));
        }
        self.0.gpu.copy(src.buffer(), 0, self.buffer(), 0, self.byte_len())
    }

    /// Overwrite this tensor's storage from host data.
    pub fn write(&self, data: &[f32]) -> Result<()> {
        if self.dtype() != DType::F32 {
            return Err(Error::DType { op: "write", msg: format!("tensor holds {:?}", self.dtype()) });
        }
        Self::check_len("write", self.shape(), data.len())?;
        self.0.gpu.upload(self.buffer(), 0, bytemuck::cast_slice(data)).map_err(|e| e.during(format_args!("writing a tensor of shape {:?}", self.shape())))
    }
}

struct ReshapeBack {
    from: Vec<usize>,
}
impl BackwardOp for ReshapeBack {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn backward(&self, grad: &Tensor, _inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(grad.reshape(&self.from)?)])
    }
}
