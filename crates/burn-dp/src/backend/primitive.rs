//! The tensor primitives of [`PerSample`](super::PerSample): a float tensor is a dense tensor
//! with a batch tag or a deferred per-sample gradient; int, bool and quantized tensors are the
//! inner backend's with a batch tag ([`Tagged`]).

use burn_backend::quantization::QuantScheme;
use burn_backend::tensor::{BoolTensor, FloatTensor, IntTensor, QuantizedTensor};
use burn_backend::{Backend, DType, QTensorPrimitive, Shape, TensorMetadata};

use crate::rules::TermRef;

pub use super::pass::BatchId;

/// What the engine knows about how a tensor depends on the samples of the batch.
///
/// Every tensor of [`PerSample`](super::PerSample) carries one: float, int, bool and quantized
/// alike. Tags only grow along the graph ([`Tag::join`] keeps the worst); the engine rejects a
/// parameter gradient or a loss whose tag says samples were mixed (fail closed):
///
/// - [`Tag::Independent`]: made on the device (parameters initialised at random, zeros, ranges),
///   never the batch.
/// - [`Tag::Unmarked`]: host data (`*_from_data`) not marked as the batch. Its dimension-0 rows
///   *may* be the samples: when it has as many rows as the marked batch, it is taken to be the
///   same samples in the same order (a mask, labels, per-sample weights).
/// - [`Tag::PerSample`]: marked batch data ([`crate::batch`], embedding lookups), row `i` of
///   dimension 0 depends on sample `i` only.
/// - [`Tag::UnmarkedMixed`]: the rows of unmarked host data were combined along dimension 0
///   (`mask.sum()`); an error if those rows are the batch, i.e. when `rows` equals the batch size
///   of the per-sample losses.
/// - [`Tag::Mixed`]: marked batch data was combined along dimension 0 (for any batch size,
///   one included: BatchNorm statistics of one sample are still private data).
/// - [`Tag::Lost`]: a per-sample gradient went through an op without a per-sample rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// Does not depend on the batch (parameters, constants made on the device).
    Independent,
    /// Host data not marked as the batch, with `rows` rows in dimension 0.
    Unmarked {
        /// Size of dimension 0 (0 for a scalar).
        rows: usize,
        /// Uploaded while a physical batch was open: it may hold values computed from that batch
        /// on the host, so it may meet the batch but never become module state
        /// (`DpError::StateFromBatch`).
        in_pass: bool,
    },
    /// Row `i` of dimension 0 depends on sample `i` only, in a batch of `batch` samples.
    PerSample {
        /// Number of samples in the marked batch; `None` when not known (the tag of a deferred
        /// per-sample gradient, whose terms know their own sample count).
        batch: Option<usize>,
        /// Which physical batch the rows belong to ([`BatchId`]); `None` when not known (a
        /// deferred gradient). Rows of two batches never meet ([`Tag::join`]).
        id: Option<BatchId>,
    },
    /// Unmarked host data whose `rows` rows were combined along dimension 0 by `op`.
    UnmarkedMixed {
        /// Rows of the host tensor that were combined (0: several sizes met).
        rows: usize,
        /// The first op that combined them.
        op: &'static str,
    },
    /// Depends on several samples at once: `op` reduced, reordered or reshaped dimension 0.
    Mixed {
        /// The first op that mixed samples.
        op: &'static str,
    },
    /// A per-sample gradient went through `op`, which has no per-sample rule; only its batch sum
    /// survived.
    Lost {
        /// The op without a per-sample rule.
        op: &'static str,
    },
}

impl Tag {
    fn rank(self) -> u8 {
        match self {
            Tag::Independent => 0,
            Tag::Unmarked { .. } => 1,
            Tag::PerSample { .. } => 2,
            Tag::UnmarkedMixed { .. } => 3,
            Tag::Mixed { .. } => 4,
            Tag::Lost { .. } => 5,
        }
    }

    /// The tag of host data of this shape (`*_from_data`).
    ///
    /// While a physical batch of `P` rows is open ([`super::pass`]), host data whose dimension 0
    /// has `P` rows *is* that batch, marked or not (labels, one-hot encodings, masks, unmarked
    /// inputs): it is tagged [`Tag::PerSample`] of the open batch, so every later move or
    /// reduction of its rows is caught as for a marked input. Other host data uploaded then is a
    /// constant that must not become module state; host data uploaded outside a batch (loaded
    /// parameters) is a constant.
    pub fn host(shape: &Shape) -> Tag {
        let rows = shape.as_slice().first().copied().unwrap_or(0);
        match super::pass::open_batch() {
            Some(open) if open.inferred && shape.num_dims() > 0 && rows == open.rows => {
                Tag::PerSample {
                    batch: Some(rows),
                    id: Some(open.id),
                }
            }
            // Uploaded during a step the training loop opened: may hold values of the batch.
            Some(open) if open.inferred => Tag::Unmarked {
                rows,
                in_pass: true,
            },
            // No batch, or one opened implicitly by a mark outside a loop (whose end is not
            // known: public pre-training leaves one open): a constant, such as loaded weights.
            _ => Tag::Unmarked {
                rows,
                in_pass: false,
            },
        }
    }

    /// The tag of marked batch data of `rows` rows in batch `id`.
    pub fn batch(rows: usize, id: BatchId) -> Tag {
        Tag::PerSample {
            batch: Some(rows),
            id: Some(id),
        }
    }

    /// The worse of two tags.
    ///
    /// Marked batch data meeting unmarked host data whose rows were combined resolves here, where
    /// both sizes are known: the same number of rows means the host data was the batch (the
    /// result stays [`Tag::UnmarkedMixed`], an error at the loss); another number of rows means a
    /// constant of another size (a loaded parameter), and the result is per sample.
    pub fn join(self, other: Tag) -> Tag {
        match (self, other) {
            (Tag::PerSample { batch: a, id: ia }, Tag::PerSample { batch: b, id: ib }) => {
                // Rows of two physical batches (an activation kept from an earlier batch or
                // step) or of two sizes (a batch-of-one "prototype" broadcast to P rows) are
                // not the same samples: combining them row by row mixes samples.
                if matches!((ia, ib), (Some(x), Some(y)) if x != y) {
                    return Tag::Mixed {
                        op: "rows of two different physical batches meet",
                    };
                }
                if matches!((a, b), (Some(x), Some(y)) if x != y) {
                    return Tag::Mixed {
                        op: "batch tensors of different sizes meet",
                    };
                }
                Tag::PerSample {
                    batch: a.or(b),
                    id: ia.or(ib),
                }
            }
            (
                Tag::Unmarked {
                    rows: a,
                    in_pass: pa,
                },
                Tag::Unmarked {
                    rows: b,
                    in_pass: pb,
                },
            ) => Tag::Unmarked {
                rows: a.max(b),
                in_pass: pa || pb,
            },
            // Host data uploaded during the pass joined with the batch: the result is per sample
            // (it is not module state either way).
            (Tag::Unmarked { .. }, ps @ Tag::PerSample { .. })
            | (ps @ Tag::PerSample { .. }, Tag::Unmarked { .. }) => ps,
            (Tag::UnmarkedMixed { rows: a, op }, Tag::UnmarkedMixed { rows: b, .. }) => {
                Tag::UnmarkedMixed {
                    rows: if a == b { a } else { 0 },
                    op,
                }
            }
            (ps @ Tag::PerSample { batch, .. }, um @ Tag::UnmarkedMixed { rows, .. })
            | (um @ Tag::UnmarkedMixed { rows, .. }, ps @ Tag::PerSample { batch, .. }) => {
                if rows == 0 || batch.is_none_or(|b| b == 0 || b == rows) {
                    um
                } else {
                    ps
                }
            }
            _ if other.rank() > self.rank() => other,
            _ => self,
        }
    }

    /// Joins a list of tags ([`Tag::Independent`] when empty).
    pub fn join_all(tags: &[Tag]) -> Tag {
        tags.iter().fold(Tag::Independent, |acc, t| acc.join(*t))
    }

    /// Whether per-sample gradients built from data with this tag are exact: nothing marked was
    /// mixed and no gradient lost its rule. ([`Tag::UnmarkedMixed`] is judged at the loss, where
    /// the batch size is known: every value a gradient is built from is an input of an op on the
    /// loss's path, so the loss's tag holds it.)
    pub fn is_clean(self) -> bool {
        !matches!(self, Tag::Mixed { .. } | Tag::Lost { .. })
    }

    /// Whether a tensor with this tag is a constant for the batch: made on the device or unmarked
    /// host data (a loaded parameter, a scale with a parameter's shape).
    pub fn is_constant(self) -> bool {
        matches!(self, Tag::Independent | Tag::Unmarked { .. })
    }

    /// The tag after an op that works along `dim`: along dimension 0 it mixes samples.
    pub fn along_dim(self, dim: usize, op: &'static str) -> Tag {
        if dim == 0 {
            self.mix(op)
        } else {
            self
        }
    }

    /// The tag after an op that combines, reorders or moves the rows of dimension 0 (a full
    /// reduction, a reduction or scan along 0, a reshape across dimension 0, ...). Marked data
    /// is then mixed whatever the batch size; unmarked host data with more than one row is
    /// [`Tag::UnmarkedMixed`] (one row cannot mix with another).
    pub fn mix(self, op: &'static str) -> Tag {
        match self {
            // An empty batch has nothing to mix; inside the backward pass of one sample, a
            // gradient reshaped across dimension 0 (`[1, 1, d]` to `[d]`) is that sample's.
            Tag::PerSample {
                batch: None | Some(0),
                ..
            } => self,
            Tag::PerSample { batch: Some(1), .. } if super::in_scope() => self,
            Tag::PerSample { .. } => Tag::Mixed { op },
            Tag::Unmarked { rows, .. } if rows > 1 => Tag::UnmarkedMixed { rows, op },
            other => other,
        }
    }

    /// The tag of the *shared operand* of an op (the weight of a linear, convolution or
    /// embedding, the rank-2 right-hand side of a matmul, a scale or bias broadcast to the batch)
    /// and of a float tensor whose dimension 0 a layout op moves (reshape, expand, transpose,
    /// permute). Marked data there mixes samples; a float host tensor there is taken to be a model
    /// constant (a loaded parameter: `W.transpose()`, `gamma.unsqueeze()`) and stays
    /// [`Tag::Unmarked`] with its original rows.
    pub fn shared(self, op: &'static str) -> Tag {
        match self {
            Tag::Unmarked { .. } => self,
            other => other.mix(op),
        }
    }
}

/// An int, bool or quantized tensor of the inner backend with its batch [`Tag`].
#[derive(Clone, Debug)]
pub struct Tagged<T> {
    /// The inner tensor.
    pub tensor: T,
    /// How it depends on the samples.
    pub tag: Tag,
}

impl<T> Tagged<T> {
    /// Wraps an inner tensor.
    pub fn new(tensor: T, tag: Tag) -> Self {
        Tagged { tensor, tag }
    }

    /// The inner tensor and its tag.
    pub fn split(self) -> (T, Tag) {
        (self.tensor, self.tag)
    }
}

impl<T: TensorMetadata> TensorMetadata for Tagged<T> {
    fn dtype(&self) -> DType {
        self.tensor.dtype()
    }

    fn shape(&self) -> Shape {
        self.tensor.shape()
    }
}

// `acc_precision` and `propagation` keep burn's defaults: their types are not exported by
// burn-backend 0.21.
impl<T: QTensorPrimitive> QTensorPrimitive for Tagged<T> {
    fn scheme(&self) -> &QuantScheme {
        self.tensor.scheme()
    }

    fn default_scheme() -> QuantScheme {
        T::default_scheme()
    }
}

/// Int tensor primitive of [`PerSample`](super::PerSample).
pub type PsInt<B> = Tagged<IntTensor<B>>;
/// Bool tensor primitive of [`PerSample`](super::PerSample).
pub type PsBool<B> = Tagged<BoolTensor<B>>;
/// Quantized tensor primitive of [`PerSample`](super::PerSample).
pub type PsQuant<B> = Tagged<QuantizedTensor<B>>;

/// Unwraps an optional tagged argument (generated ops).
pub(crate) fn opt_split<T>(t: Option<Tagged<T>>) -> (Option<T>, Tag) {
    match t {
        Some(t) => (Some(t.tensor), t.tag),
        None => (None, Tag::Independent),
    }
}

/// Unwraps a list of tagged arguments (generated ops).
pub(crate) fn vec_split<T>(ts: Vec<Tagged<T>>) -> (Vec<T>, Tag) {
    let mut tag = Tag::Independent;
    let out = ts
        .into_iter()
        .map(|t| {
            tag = tag.join(t.tag);
            t.tensor
        })
        .collect();
    (out, tag)
}

/// A parameter gradient kept per sample, as the terms the rules cached.
#[derive(Clone, Debug)]
pub struct Deferred<B: Backend> {
    /// The batch-summed shape (what autodiff sees).
    pub shape: Shape,
    /// Float dtype of the gradient.
    pub dtype: DType,
    /// Device the terms live on.
    pub device: B::Device,
    /// The terms whose per-sample sum is the gradient.
    pub terms: Vec<TermRef<B>>,
    /// Why the per-sample values cannot be trusted, if they cannot.
    pub taint: Tag,
}

impl<B: Backend> Deferred<B> {
    /// A deferred gradient of batch-summed shape `shape` (the parameter's) made of one `term`,
    /// with the dtype and device of `like` (a tensor of the call, e.g. the upstream gradient).
    pub fn from_term(shape: Shape, like: &FloatTensor<B>, term: TermRef<B>, taint: Tag) -> Self {
        Deferred {
            shape,
            dtype: like.dtype(),
            device: B::float_device(like),
            terms: vec![term],
            taint,
        }
    }

    /// Number of samples of the terms (0 without terms).
    pub fn samples(&self) -> usize {
        self.terms.first().map(|t| t.samples()).unwrap_or(0)
    }
}

/// Float tensor primitive of the [`PerSample`](super::PerSample) backend.
#[derive(Clone, Debug)]
pub enum PsTensor<B: Backend> {
    /// An ordinary tensor of the inner backend with its batch tag.
    Dense {
        /// The inner tensor.
        tensor: FloatTensor<B>,
        /// How it depends on the samples.
        tag: Tag,
    },
    /// A per-sample gradient (only created inside a per-sample backward scope).
    Deferred(Box<Deferred<B>>),
}

impl<B: Backend> PsTensor<B> {
    /// Wraps a dense tensor.
    pub fn dense(tensor: FloatTensor<B>, tag: Tag) -> Self {
        PsTensor::Dense { tensor, tag }
    }

    /// The batch tag (a deferred gradient reports its taint, or `PerSample`).
    pub fn tag(&self) -> Tag {
        match self {
            PsTensor::Dense { tag, .. } => *tag,
            PsTensor::Deferred(d) => d.taint.join(Tag::PerSample {
                batch: None,
                id: None,
            }),
        }
    }

    /// The dense inner tensor and its tag. A deferred gradient is summed over its samples and
    /// tagged [`Tag::Lost`] with `op`: whatever `op` does, per-sample values are gone.
    pub fn into_dense(self, op: &'static str) -> (FloatTensor<B>, Tag) {
        match self {
            PsTensor::Dense { tensor, tag } => (tensor, tag),
            PsTensor::Deferred(d) => {
                let taint = d.taint.join(Tag::Lost { op });
                (crate::rules::batch_sum(*d), taint)
            }
        }
    }

    /// The inner tensor, summing a deferred gradient over samples without changing its meaning
    /// (reading values, moving devices).
    pub fn into_sum(self) -> FloatTensor<B> {
        match self {
            PsTensor::Dense { tensor, .. } => tensor,
            PsTensor::Deferred(d) => crate::rules::batch_sum(*d),
        }
    }
}

impl<B: Backend> TensorMetadata for PsTensor<B> {
    fn dtype(&self) -> DType {
        match self {
            PsTensor::Dense { tensor, .. } => tensor.dtype(),
            PsTensor::Deferred(d) => d.dtype,
        }
    }

    fn shape(&self) -> Shape {
        match self {
            PsTensor::Dense { tensor, .. } => tensor.shape(),
            PsTensor::Deferred(d) => d.shape.clone(),
        }
    }
}

/// Unwraps an optional float argument (generated ops).
pub(crate) fn opt_dense<B: Backend>(
    t: Option<PsTensor<B>>,
    op: &'static str,
) -> (Option<FloatTensor<B>>, Tag) {
    match t {
        Some(t) => {
            let (t, tag) = t.into_dense(op);
            (Some(t), tag)
        }
        None => (None, Tag::Independent),
    }
}

/// Unwraps a list of float arguments (generated ops).
pub(crate) fn vec_dense<B: Backend>(
    ts: Vec<PsTensor<B>>,
    op: &'static str,
) -> (Vec<FloatTensor<B>>, Tag) {
    let mut tag = Tag::Independent;
    let out = ts
        .into_iter()
        .map(|t| {
            let (t, g) = t.into_dense(op);
            tag = tag.join(g);
            t
        })
        .collect();
    (out, tag)
}
