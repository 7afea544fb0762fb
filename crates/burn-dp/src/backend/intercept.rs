//! The ops `PerSample` implements by hand (`HAND_WRITTEN` in `tools/gen_backend.py`; the rule
//! ops of `rules/table.rs` are hooked by the generated `ops/`). Everything not here is forwarded
//! by the generated `ops/`.
//!
//! - `float_sum_dim` offers `sum_dim(·, 0)` of a dense gradient to the rules (parameters broadcast
//!   over the batch, [`crate::rules::batched::SumOverBatch`]) like the generated hooks do.
//! - Ops that keep a deferred gradient deferred: `float_add`/`float_sub` (gradient accumulation,
//!   tied parameters), `float_sum_dim`, `float_reshape`, `float_swap_dims`, `float_permute`,
//!   `float_transpose`, `float_expand`, `float_slice`, `float_slice_assign`, `float_flip`,
//!   `float_neg`, `float_mul_scalar`, `float_div_scalar`, and `float_mul` / `float_div` by a
//!   batch-independent tensor. Any other op on a deferred gradient sums it over the batch and
//!   tags the result [`Tag::Lost`].
//! - Forward tagging that needs shapes (rules in [`super::layout`]): `float_matmul`, `float_flip`,
//!   `float_reshape`, `float_expand`, `float_slice`, `float_slice_assign`, `float_swap_dims`,
//!   `float_permute`; `embedding` (token ids are the batch entering the model: its output is
//!   [`Tag::PerSample`], joined with the ids' own tag).
//! - Host transfers are counted in [`super::transfer`] (`float_into_data` here, the others in the
//!   generated ops).
//! - Data access that must not lose a deferred gradient: `float_into_data`, `float_device`,
//!   `float_to_device`, `float_is_require_grad`; and ops returning structs of tensors.

use core::future::Future;

use burn_backend::ops::{
    DeformConv2dBackward, DeformConvOptions, MaxPool1dBackward, MaxPool1dWithIndices,
    MaxPool2dBackward, MaxPool2dWithIndices,
};
use burn_backend::quantization::{QuantScheme, QuantizationParametersPrimitive};
use burn_backend::tensor::FloatTensor;
use burn_backend::{Backend, ExecutionError, Scalar, Shape, Slice, TensorData, TensorMetadata};

use super::primitive::{opt_dense, Deferred, PsInt, PsQuant, PsTensor, Tag, Tagged};
use super::{layout, transfer, PerSample};
use crate::rules::batched::{map_batched, BatchedTerm};
use crate::rules::{self, batched_shape, OpArg, OpCall, TermRef};

type Ps<B> = PsTensor<B>;

fn wrap<B: Backend>(d: Deferred<B>) -> Ps<B> {
    PsTensor::Deferred(Box::new(d))
}

fn full() -> Slice {
    Slice {
        start: 0,
        end: None,
        step: 1,
    }
}

/// `[1, ...shape]`: a batch-independent tensor given a batch axis of size 1, to broadcast against
/// a per-sample `[B, ...]` form.
fn with_batch_axis<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    B::float_reshape(x, batched_shape(1, &shape))
}

fn samples<B: Backend>(d: &Deferred<B>) -> usize {
    d.samples()
}

/// A deferred gradient combined with a dense tensor (tagged `other`) by an op without a per-sample
/// rule. A batch-summed gradient meeting per-sample activations means the forward pass reduced over
/// the batch (e.g. BatchNorm statistics): samples mixed.
fn lost<B: Backend>(
    d: Deferred<B>,
    other: Tag,
    op: &'static str,
    f: impl FnOnce(FloatTensor<B>) -> FloatTensor<B>,
) -> Ps<B> {
    let why = match other {
        Tag::Mixed { .. } => other,
        Tag::PerSample {
            batch: Some(batch), ..
        } if batch > 1 => Tag::Mixed { op },
        _ => Tag::Lost { op },
    };
    let tag = d.taint.join(why);
    PsTensor::dense(f(rules::batch_sum(d)), tag)
}

// ---------------------------------------------------------------- forward

/// Token ids are the batch entering the model: the output is [`Tag::PerSample`] of the open
/// physical batch ([`super::pass::mark`]), joined with the ids' own tag (ids reordered across the
/// batch stay mixed) and the table's as a shared operand.
pub fn embedding<B: Backend>(weights: Ps<B>, indices: PsInt<B>) -> Ps<B> {
    let (w, tw) = weights.into_dense("embedding");
    let (indices, ti) = indices.split();
    let batch = indices.shape().as_slice().first().copied().unwrap_or(0);
    let marked = super::pass::mark(batch).unwrap_or(Tag::Mixed {
        op: "embedding (token ids whose rows are not the open batch's)",
    });
    let tag = marked.join(ti).join(tw.shared("embedding"));
    PsTensor::dense(B::embedding(w, indices), tag)
}

// ---------------------------------------------------------------- deferred-aware ops

/// Adds two deferred gradients: same shape keeps the terms side by side (exact tied weights);
/// different shapes broadcast their per-sample forms.
fn add_deferred<B: Backend>(mut a: Deferred<B>, b: Deferred<B>) -> Ps<B> {
    if samples(&a) != samples(&b) {
        let tag = a.taint.join(b.taint).join(Tag::Lost {
            op: "float_add (different batch sizes)",
        });
        let sum = B::float_add(rules::batch_sum(a), rules::batch_sum(b));
        return PsTensor::dense(sum, tag);
    }
    if a.shape == b.shape {
        a.terms.extend(b.terms);
        a.taint = a.taint.join(b.taint);
        return wrap(a);
    }
    let pb = rules::instantiate(&b);
    let taint = a.taint.join(b.taint);
    let mut out = map_batched(a, |pa| B::float_add(pa, pb));
    out.taint = taint;
    wrap(out)
}

/// Adds a dense tensor to a deferred gradient. With one sample the dense tensor is that sample's
/// gradient; otherwise its per-sample split is unknown.
fn add_dense<B: Backend>(d: Deferred<B>, x: FloatTensor<B>, tx: Tag) -> Ps<B> {
    if samples(&d) == 1 && tx.is_clean() && x.shape() == d.shape {
        let mut d = d;
        d.terms.push(BatchedTerm::new_ref(with_batch_axis::<B>(x)));
        return wrap(d);
    }
    lost(
        d,
        tx,
        "float_add (a gradient without a per-sample rule)",
        |s| B::float_add(s, x),
    )
}

pub fn float_add<B: Backend>(lhs: Ps<B>, rhs: Ps<B>) -> Ps<B> {
    match (lhs, rhs) {
        (PsTensor::Dense { tensor: a, tag: ta }, PsTensor::Dense { tensor: b, tag: tb }) => {
            PsTensor::dense(B::float_add(a, b), ta.join(tb))
        }
        (PsTensor::Deferred(a), PsTensor::Deferred(b)) => add_deferred(*a, *b),
        (PsTensor::Deferred(d), PsTensor::Dense { tensor, tag })
        | (PsTensor::Dense { tensor, tag }, PsTensor::Deferred(d)) => add_dense(*d, tensor, tag),
    }
}

pub fn float_sub<B: Backend>(lhs: Ps<B>, rhs: Ps<B>) -> Ps<B> {
    match (lhs, rhs) {
        (PsTensor::Dense { tensor: a, tag: ta }, PsTensor::Dense { tensor: b, tag: tb }) => {
            PsTensor::dense(B::float_sub(a, b), ta.join(tb))
        }
        (lhs, rhs) => float_add(lhs, float_neg(rhs)),
    }
}

/// Applies a linear map (negation, scaling by a scalar) to every term: to one of its factors when
/// the term can ([`rules::PerSampleTerm::map_linear`]), else to its instantiated form.
fn scale<B: Backend>(mut d: Deferred<B>, f: impl Fn(FloatTensor<B>) -> FloatTensor<B>) -> Ps<B> {
    let shape = d.shape.clone();
    d.terms = d
        .terms
        .iter()
        .map(|t| {
            t.map_linear(&f).unwrap_or_else(|| {
                BatchedTerm::new_ref(f(rules::instantiate_term(t.as_ref(), &shape)))
            })
        })
        .collect();
    wrap(d)
}

pub fn float_neg<B: Backend>(t: Ps<B>) -> Ps<B> {
    match t {
        PsTensor::Dense { tensor, tag } => PsTensor::dense(B::float_neg(tensor), tag),
        PsTensor::Deferred(d) => scale(*d, |x| B::float_neg(x)),
    }
}

pub fn float_mul_scalar<B: Backend>(t: Ps<B>, s: Scalar) -> Ps<B> {
    match t {
        PsTensor::Dense { tensor, tag } => PsTensor::dense(B::float_mul_scalar(tensor, s), tag),
        PsTensor::Deferred(d) => scale(*d, |x| B::float_mul_scalar(x, s)),
    }
}

pub fn float_div_scalar<B: Backend>(t: Ps<B>, s: Scalar) -> Ps<B> {
    match t {
        PsTensor::Dense { tensor, tag } => PsTensor::dense(B::float_div_scalar(tensor, s), tag),
        PsTensor::Deferred(d) => scale(*d, |x| B::float_div_scalar(x, s)),
    }
}

/// `deferred ∘ dense` for an elementwise `op`: exact per sample when the dense side does not depend
/// on the batch (a parameter transformed before it is broadcast).
fn elementwise<B: Backend>(
    d: Deferred<B>,
    x: FloatTensor<B>,
    tx: Tag,
    name: &'static str,
    op: impl Fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
) -> Ps<B> {
    if tx.is_constant() && x.shape().num_dims() == d.shape.num_dims() {
        let shifted = with_batch_axis::<B>(x);
        wrap(map_batched(d, |ps| op(ps, shifted)))
    } else {
        lost(d, tx, name, |s| op(s, x))
    }
}

pub fn float_mul<B: Backend>(lhs: Ps<B>, rhs: Ps<B>) -> Ps<B> {
    match (lhs, rhs) {
        (PsTensor::Dense { tensor: a, tag: ta }, PsTensor::Dense { tensor: b, tag: tb }) => {
            PsTensor::dense(B::float_mul(a, b), ta.join(tb))
        }
        (PsTensor::Deferred(d), PsTensor::Dense { tensor, tag })
        | (PsTensor::Dense { tensor, tag }, PsTensor::Deferred(d)) => {
            elementwise(*d, tensor, tag, "float_mul", |a, b| B::float_mul(a, b))
        }
        (PsTensor::Deferred(a), PsTensor::Deferred(b)) => {
            let tag = a.taint.join(b.taint).join(Tag::Lost { op: "float_mul" });
            PsTensor::dense(
                B::float_mul(rules::batch_sum(*a), rules::batch_sum(*b)),
                tag,
            )
        }
    }
}

pub fn float_div<B: Backend>(lhs: Ps<B>, rhs: Ps<B>) -> Ps<B> {
    match (lhs, rhs) {
        (PsTensor::Dense { tensor: a, tag: ta }, PsTensor::Dense { tensor: b, tag: tb }) => {
            PsTensor::dense(B::float_div(a, b), ta.join(tb))
        }
        (PsTensor::Deferred(d), PsTensor::Dense { tensor, tag }) => {
            elementwise(*d, tensor, tag, "float_div", |a, b| B::float_div(a, b))
        }
        (lhs, rhs) => {
            let (a, ta) = lhs.into_dense("float_div");
            let (b, tb) = rhs.into_dense("float_div");
            PsTensor::dense(B::float_div(a, b), ta.join(tb))
        }
    }
}

pub fn float_sum_dim<B: Backend>(t: Ps<B>, dim: usize) -> Ps<B> {
    match t {
        PsTensor::Dense { tensor, tag } => {
            let call = OpCall::new(
                "float_sum_dim",
                vec![
                    ("tensor", OpArg::Float(&tensor, tag)),
                    ("dim", OpArg::Value(&dim)),
                ],
            );
            if let Some(out) = rules::dispatch::<B>(&call) {
                return out;
            }
            PsTensor::dense(
                B::float_sum_dim(tensor, dim),
                tag.along_dim(dim, "float_sum_dim"),
            )
        }
        PsTensor::Deferred(d) => wrap(map_batched(*d, |ps| B::float_sum_dim(ps, dim + 1))),
    }
}

pub fn float_reshape<B: Backend>(t: Ps<B>, shape: Shape) -> Ps<B> {
    match t {
        PsTensor::Dense { tensor, tag } => {
            let tag = layout::reshape(&tensor.shape(), &shape, tag, true, "float_reshape");
            PsTensor::dense(B::float_reshape(tensor, shape), tag)
        }
        PsTensor::Deferred(d) if d.shape == shape => PsTensor::Deferred(d),
        PsTensor::Deferred(d) => {
            let b = samples(&d);
            wrap(map_batched(*d, |ps| {
                B::float_reshape(ps, batched_shape(b, &shape))
            }))
        }
    }
}

/// A 2-D deferred gradient transposed by transposing its terms
/// ([`rules::PerSampleTerm::transposed`]), or `None` when a term cannot.
fn transpose_terms<B: Backend>(d: &Deferred<B>) -> Option<Deferred<B>> {
    if d.shape.num_dims() != 2 {
        return None;
    }
    let terms = d
        .terms
        .iter()
        .map(|t| t.transposed())
        .collect::<Option<Vec<TermRef<B>>>>()?;
    Some(Deferred {
        shape: Shape::new([d.shape[1], d.shape[0]]),
        dtype: d.dtype,
        device: d.device.clone(),
        terms,
        taint: d.taint,
    })
}

pub fn float_swap_dims<B: Backend>(t: Ps<B>, dim1: usize, dim2: usize) -> Ps<B> {
    match t {
        PsTensor::Dense { tensor, tag } => {
            let tag = layout::swap_dims(dim1, dim2, tag, true, "float_swap_dims");
            PsTensor::dense(B::float_swap_dims(tensor, dim1, dim2), tag)
        }
        PsTensor::Deferred(d) => match transpose_terms(&d).filter(|_| dim1 != dim2) {
            Some(t) => wrap(t),
            None => wrap(map_batched(*d, |ps| {
                B::float_swap_dims(ps, dim1 + 1, dim2 + 1)
            })),
        },
    }
}

pub fn float_transpose<B: Backend>(t: Ps<B>) -> Ps<B> {
    let rank = t.shape().num_dims();
    float_swap_dims(t, rank - 2, rank - 1)
}

pub fn float_permute<B: Backend>(t: Ps<B>, axes: &[usize]) -> Ps<B> {
    match t {
        PsTensor::Dense { tensor, tag } => {
            let tag = layout::permute(axes, tag, true, "float_permute");
            PsTensor::dense(B::float_permute(tensor, axes), tag)
        }
        PsTensor::Deferred(d) => match transpose_terms(&d).filter(|_| axes == [1, 0]) {
            Some(t) => wrap(t),
            None => {
                let mut shifted = vec![0];
                shifted.extend(axes.iter().map(|a| a + 1));
                wrap(map_batched(*d, |ps| B::float_permute(ps, &shifted)))
            }
        },
    }
}

pub fn float_flip<B: Backend>(t: Ps<B>, axes: &[usize]) -> Ps<B> {
    match t {
        PsTensor::Dense { tensor, tag } => {
            let tag = layout::flip(axes, tag, "float_flip");
            PsTensor::dense(B::float_flip(tensor, axes), tag)
        }
        PsTensor::Deferred(d) => {
            let shifted: Vec<usize> = axes.iter().map(|a| a + 1).collect();
            wrap(map_batched(*d, |ps| B::float_flip(ps, &shifted)))
        }
    }
}

pub fn float_expand<B: Backend>(t: Ps<B>, shape: Shape) -> Ps<B> {
    match t {
        PsTensor::Dense { tensor, tag } => {
            let tag = layout::expand(&tensor.shape(), &shape, tag, true, "float_expand");
            PsTensor::dense(B::float_expand(tensor, shape), tag)
        }
        PsTensor::Deferred(d) => {
            let b = samples(&d);
            wrap(map_batched(*d, |ps| {
                B::float_expand(ps, batched_shape(b, &shape))
            }))
        }
    }
}

fn shifted_slices(slices: &[Slice]) -> Vec<Slice> {
    let mut out = vec![full()];
    out.extend_from_slice(slices);
    out
}

pub fn float_slice<B: Backend>(t: Ps<B>, slices: &[Slice]) -> Ps<B> {
    match t {
        PsTensor::Dense { tensor, tag } => {
            let tag = layout::slice(&tensor.shape(), slices, tag, "float_slice");
            PsTensor::dense(B::float_slice(tensor, slices), tag)
        }
        PsTensor::Deferred(d) => {
            let shifted = shifted_slices(slices);
            wrap(map_batched(*d, |ps| B::float_slice(ps, &shifted)))
        }
    }
}

/// `slice_assign`, as autodiff uses it to route a gradient into a slice of zeros (the backward of
/// `slice`) or to zero a slice of a gradient (the backward of `slice_assign`). A batch-independent
/// dense side is taken to be that zero tensor.
pub fn float_slice_assign<B: Backend>(t: Ps<B>, slices: &[Slice], value: Ps<B>) -> Ps<B> {
    let shifted = shifted_slices(slices);
    match (t, value) {
        (PsTensor::Dense { tensor, tag }, PsTensor::Dense { tensor: v, tag: tv }) => {
            let tag = layout::slice_assign(&tensor.shape(), slices, tag, tv, "float_slice_assign");
            PsTensor::dense(B::float_slice_assign(tensor, slices, v), tag)
        }
        (PsTensor::Dense { tensor, tag }, PsTensor::Deferred(v)) if tag.is_constant() => {
            let b = samples(&v);
            let shape = batched_shape(b, &tensor.shape());
            let (dtype, device) = (tensor.dtype(), B::float_device(&tensor));
            let pv = rules::instantiate(&v);
            let base = B::float_zeros(shape.clone(), &device, dtype.into());
            let ps = B::float_slice_assign(base, &shifted, pv);
            wrap(Deferred {
                shape: tensor.shape(),
                terms: vec![BatchedTerm::new_ref(ps)],
                ..*v
            })
        }
        (PsTensor::Deferred(d), PsTensor::Dense { tensor: v, tag }) if tag.is_constant() => {
            let b = samples(&d);
            let vshape = batched_shape(b, &v.shape());
            let v = B::float_expand(with_batch_axis::<B>(v), vshape);
            wrap(map_batched(*d, |ps| B::float_slice_assign(ps, &shifted, v)))
        }
        (PsTensor::Deferred(d), PsTensor::Deferred(v)) if samples(&d) == samples(&v) => {
            let pv = rules::instantiate(&v);
            let taint = d.taint.join(v.taint);
            let mut out = map_batched(*d, |ps| B::float_slice_assign(ps, &shifted, pv));
            out.taint = taint;
            wrap(out)
        }
        (t, value) => {
            let (a, ta) = t.into_dense("float_slice_assign");
            let (v, tv) = value.into_dense("float_slice_assign");
            PsTensor::dense(B::float_slice_assign(a, slices, v), ta.join(tv))
        }
    }
}

pub fn float_matmul<B: Backend>(lhs: Ps<B>, rhs: Ps<B>) -> Ps<B> {
    let (a, ta) = lhs.into_dense("float_matmul");
    let (b, tb) = rhs.into_dense("float_matmul");
    // A rank-2 right-hand side contracts its dimension 0: with per-sample rows, samples mix.
    let tag = layout::matmul(&a.shape(), &b.shape(), ta, tb, true, "float_matmul");
    PsTensor::dense(matmul_or_zeros::<B>(a, b), tag)
}

pub fn linear<B: Backend>(x: Ps<B>, weight: Ps<B>, bias: Option<Ps<B>>) -> Ps<B> {
    let (x, t_x) = x.into_dense("linear");
    let (weight, t_weight) = weight.into_dense("linear");
    let (bias, t_bias) = opt_dense(bias, "linear");
    let tag = Tag::join_all(&[t_x, t_weight.shared("linear"), t_bias.shared("linear")]);
    // An empty batch: the zero output of its shape, without the backend (burn-flex 0.21's gemm
    // dies on an empty product, see `matmul_or_zeros`).
    let xs = x.shape();
    if xs.num_elements() == 0 {
        let mut dims: Vec<usize> = (0..xs.num_dims() - 1).map(|i| xs[i]).collect();
        dims.push(weight.shape()[1]);
        let (dtype, device) = (x.dtype(), B::float_device(&x));
        return PsTensor::dense(
            B::float_zeros(Shape::from(dims), &device, dtype.into()),
            tag,
        );
    }
    PsTensor::dense(B::linear(x, weight, bias), tag)
}

/// `B::float_matmul`, except that a product with an empty operand (an empty batch, a zero-width
/// contraction) is the zero tensor of the product's shape without calling the backend:
/// burn-flex 0.21's batched gemm dies with SIGSEGV on a `[0, T, d]` left-hand side.
///
/// # Shapes
/// `a`: `[..batch_a, m, k]`, `b`: `[..batch_b, k, n]` (same rank, batch dimensions broadcast);
/// returns `[..batch, m, n]`.
pub(crate) fn matmul_or_zeros<B: Backend>(a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
    let (sa, sb) = (a.shape(), b.shape());
    if sa.num_elements() != 0 && sb.num_elements() != 0 {
        return B::float_matmul(a, b);
    }
    let rank = sa.num_dims();
    let mut dims: Vec<usize> = (0..rank.saturating_sub(2))
        .map(|i| if sa[i] == 1 { sb[i] } else { sa[i] })
        .collect();
    dims.push(sa[rank - 2]);
    dims.push(sb[rank - 1]);
    let (dtype, device) = (a.dtype(), B::float_device(&a));
    B::float_zeros(Shape::from(dims), &device, dtype.into())
}

// ---------------------------------------------------------------- data and metadata

pub fn float_into_data<B: Backend>(
    t: Ps<B>,
) -> impl Future<Output = Result<TensorData, ExecutionError>> + Send {
    super::pass::host_read(t.tag(), "float_into_data");
    transfer::downloaded(B::float_into_data(t.into_sum()))
}

pub fn float_device<B: Backend>(t: &Ps<B>) -> B::Device {
    match t {
        PsTensor::Dense { tensor, .. } => B::float_device(tensor),
        PsTensor::Deferred(d) => d.device.clone(),
    }
}

pub fn float_to_device<B: Backend>(t: Ps<B>, device: &B::Device) -> Ps<B> {
    match t {
        PsTensor::Dense { tensor, tag } => PsTensor::dense(B::float_to_device(tensor, device), tag),
        PsTensor::Deferred(d) if &d.device == device => PsTensor::Deferred(d),
        PsTensor::Deferred(d) => lost(*d, Tag::Independent, "float_to_device", |s| {
            B::float_to_device(s, device)
        }),
    }
}

pub fn float_is_require_grad<B: Backend>(t: &Ps<B>) -> bool {
    match t {
        PsTensor::Dense { tensor, .. } => B::float_is_require_grad(tensor),
        PsTensor::Deferred(_) => false,
    }
}

// ---------------------------------------------------------------- ops returning structs

pub fn max_pool1d_with_indices<B: Backend>(
    x: Ps<B>,
    kernel_size: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil_mode: bool,
) -> MaxPool1dWithIndices<PerSample<B>> {
    let (x, tag) = x.into_dense("max_pool1d_with_indices");
    let out = B::max_pool1d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode);
    MaxPool1dWithIndices::new(
        PsTensor::dense(out.output, tag),
        Tagged::new(out.indices, tag),
    )
}

#[allow(clippy::too_many_arguments)]
pub fn max_pool1d_with_indices_backward<B: Backend>(
    x: Ps<B>,
    kernel_size: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil_mode: bool,
    output_grad: Ps<B>,
    indices: PsInt<B>,
) -> MaxPool1dBackward<PerSample<B>> {
    let (indices, ti) = indices.split();
    let (x, tx) = x.into_dense("max_pool1d_with_indices_backward");
    let (g, tg) = output_grad.into_dense("max_pool1d_with_indices_backward");
    let out = B::max_pool1d_with_indices_backward(
        x,
        kernel_size,
        stride,
        padding,
        dilation,
        ceil_mode,
        g,
        indices,
    );
    MaxPool1dBackward::new(PsTensor::dense(out.x_grad, tx.join(tg).join(ti)))
}

pub fn max_pool2d_with_indices<B: Backend>(
    x: Ps<B>,
    kernel_size: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
) -> MaxPool2dWithIndices<PerSample<B>> {
    let (x, tag) = x.into_dense("max_pool2d_with_indices");
    let out = B::max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode);
    MaxPool2dWithIndices::new(
        PsTensor::dense(out.output, tag),
        Tagged::new(out.indices, tag),
    )
}

#[allow(clippy::too_many_arguments)]
pub fn max_pool2d_with_indices_backward<B: Backend>(
    x: Ps<B>,
    kernel_size: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    ceil_mode: bool,
    output_grad: Ps<B>,
    indices: PsInt<B>,
) -> MaxPool2dBackward<PerSample<B>> {
    let (indices, ti) = indices.split();
    let (x, tx) = x.into_dense("max_pool2d_with_indices_backward");
    let (g, tg) = output_grad.into_dense("max_pool2d_with_indices_backward");
    let out = B::max_pool2d_with_indices_backward(
        x,
        kernel_size,
        stride,
        padding,
        dilation,
        ceil_mode,
        g,
        indices,
    );
    MaxPool2dBackward::new(PsTensor::dense(out.x_grad, tx.join(tg).join(ti)))
}

/// Deformable convolution has no per-sample rule: its parameter gradients come back dense, which
/// the engine rejects for trainable parameters.
#[allow(clippy::too_many_arguments)]
pub fn deform_conv2d_backward<B: Backend>(
    x: Ps<B>,
    offset: Ps<B>,
    weight: Ps<B>,
    mask: Option<Ps<B>>,
    bias: Option<Ps<B>>,
    output_grad: Ps<B>,
    options: DeformConvOptions<2>,
) -> DeformConv2dBackward<PerSample<B>> {
    const OP: &str = "deform_conv2d_backward";
    let (x, t1) = x.into_dense(OP);
    let (offset, t2) = offset.into_dense(OP);
    let (weight, t3) = weight.into_dense(OP);
    let (mask, t4) = opt_dense(mask, OP);
    let (bias, t5) = opt_dense(bias, OP);
    let (g, t6) = output_grad.into_dense(OP);
    let tag = Tag::join_all(&[t1, t2, t3, t4, t5, t6]).mix(OP);
    let out = B::deform_conv2d_backward(x, offset, weight, mask, bias, g, options);
    DeformConv2dBackward::new(
        PsTensor::dense(out.x_grad, tag),
        PsTensor::dense(out.offset_grad, tag),
        PsTensor::dense(out.weight_grad, tag),
        out.mask_grad.map(|t| PsTensor::dense(t, tag)),
        out.bias_grad.map(|t| PsTensor::dense(t, tag)),
    )
}

pub fn quantize<B: Backend>(
    tensor: Ps<B>,
    scheme: &QuantScheme,
    qparams: QuantizationParametersPrimitive<PerSample<B>>,
) -> PsQuant<B> {
    let (t, tt) = tensor.into_dense("quantize");
    let (scales, ts) = qparams.scales.into_dense("quantize");
    let q = B::quantize(t, scheme, QuantizationParametersPrimitive { scales });
    // The scales are computed from the tensor's values (per block): they share its tag.
    Tagged::new(q, tt.join(ts))
}
