//! The float tensor primitive of [`PerSample`](super::PerSample): a dense tensor with a batch tag,
//! or a deferred per-sample gradient.

use burn_backend::ops::ConvOptions;
use burn_backend::tensor::{FloatTensor, IntTensor};
use burn_backend::{Backend, DType, Shape, TensorMetadata};

/// What the engine knows about how a dense tensor depends on the samples of the batch.
///
/// Tags only grow along the graph ([`Tag::join`] keeps the worst); a tag other than
/// [`Tag::Independent`] or [`Tag::PerSample`] on anything a parameter gradient is built from makes
/// that gradient a typed error (fail closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// Does not depend on the batch (parameters, constants).
    Independent,
    /// Row `i` of dimension 0 depends on sample `i` only, in a batch of `batch` samples (with one
    /// sample nothing can mix).
    PerSample {
        /// Number of samples in the marked batch.
        batch: usize,
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
            Tag::PerSample { .. } => 1,
            Tag::Mixed { .. } => 2,
            Tag::Lost { .. } => 3,
        }
    }

    /// The worse of two tags.
    pub fn join(self, other: Tag) -> Tag {
        if let (Tag::PerSample { batch: a }, Tag::PerSample { batch: b }) = (self, other) {
            return Tag::PerSample { batch: a.max(b) };
        }
        if other.rank() > self.rank() {
            other
        } else {
            self
        }
    }

    /// Joins a list of tags ([`Tag::Independent`] when empty).
    pub fn join_all(tags: &[Tag]) -> Tag {
        tags.iter().fold(Tag::Independent, |acc, t| acc.join(*t))
    }

    /// Whether per-sample information is intact.
    pub fn is_clean(self) -> bool {
        matches!(self, Tag::Independent | Tag::PerSample { .. })
    }

    /// The tag after an op that works along `dim`: along dimension 0 it mixes samples.
    pub fn along_dim(self, dim: usize, op: &'static str) -> Tag {
        if dim == 0 {
            self.mix(op)
        } else {
            self
        }
    }

    /// The tag after an op that mixes every row of dimension 0 (a full reduction, a reshape
    /// across dimension 0, ...).
    pub fn mix(self, op: &'static str) -> Tag {
        match self {
            Tag::PerSample { batch } if batch > 1 => Tag::Mixed { op },
            other => other,
        }
    }
}

/// One side of an outer-product gradient term: `[B, T, n]` dense, or one-hot ids `[B, T]` over `n`
/// classes (an embedding), never materialised.
#[derive(Clone, Debug)]
pub enum Factor<B: Backend> {
    /// Dense factor `[B, T, n]`.
    Dense(FloatTensor<B>),
    /// One-hot factor given by ids `[B, T]` over `n` classes.
    OneHot {
        /// Token ids `[B, T]`.
        ids: IntTensor<B>,
        /// Number of classes (embedding rows).
        n: usize,
    },
}

impl<B: Backend> Factor<B> {
    /// Number of samples `B`.
    pub fn samples(&self) -> usize {
        match self {
            Factor::Dense(t) => t.shape()[0],
            Factor::OneHot { ids, .. } => ids.shape()[0],
        }
    }
    /// Width `n` of the factor.
    pub fn width(&self) -> usize {
        match self {
            Factor::Dense(t) => t.shape()[2],
            Factor::OneHot { n, .. } => *n,
        }
    }
    /// Positions `T` per sample.
    pub fn positions(&self) -> usize {
        match self {
            Factor::Dense(t) => t.shape()[1],
            Factor::OneHot { ids, .. } => ids.shape()[1],
        }
    }
}

/// Which convolution a [`Term::Conv`] came from.
#[derive(Clone, Debug)]
pub enum ConvKind {
    /// `conv1d`, options kept as given.
    D1(ConvOptions<1>),
    /// `conv2d`.
    D2(ConvOptions<2>),
}

/// One contribution to a parameter's per-sample gradient, cached by a rule during backward.
#[derive(Clone, Debug)]
pub enum Term<B: Backend> {
    /// `G_i = Σ_t left_itᵀ right_it`, a `[p, q]` matrix per sample (Linear, Embedding, and their
    /// transposes).
    Outer {
        /// `[B, T, p]` (or one-hot).
        left: Factor<B>,
        /// `[B, T, q]` (or one-hot).
        right: Factor<B>,
    },
    /// The weight gradient of a convolution: input `x`, upstream `grad`, and the weight (for shape).
    Conv {
        /// Layer input `[B, C_in, ...]`.
        x: FloatTensor<B>,
        /// Weight `[C_out, C_in / groups, k...]`.
        weight: FloatTensor<B>,
        /// Upstream gradient `[B, C_out, ...]`.
        grad: FloatTensor<B>,
        /// Convolution options.
        kind: ConvKind,
    },
    /// Per-sample gradients already instantiated: `[B, ...shape]`.
    Batched(FloatTensor<B>),
}

impl<B: Backend> Term<B> {
    /// Number of samples `B` the term holds.
    pub fn samples(&self) -> usize {
        match self {
            Term::Outer { left, .. } => left.samples(),
            Term::Conv { x, .. } => x.shape()[0],
            Term::Batched(t) => t.shape()[0],
        }
    }
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
    pub terms: Vec<Term<B>>,
    /// Why the per-sample values cannot be trusted, if they cannot.
    pub taint: Tag,
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
            PsTensor::Deferred(d) => d.taint.join(Tag::PerSample { batch: 0 }),
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

/// Unwraps an optional float argument.
pub fn opt_dense<B: Backend>(
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

/// Unwraps a list of float arguments.
pub fn vec_dense<B: Backend>(ts: Vec<PsTensor<B>>, op: &'static str) -> (Vec<FloatTensor<B>>, Tag) {
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
