//! The per-sample engine: one backward pass, per-sample norms, clipped sums (book-keeping).
//!
//! ```text
//! losses [B] ──backward (rules on)──► deferred per-sample grads ──► ‖g_i‖ per group ──► c_i
//!                                                        └──────────► Σ_i c_i g_i per parameter
//! ```

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};

use crate::paths::{visit_params, ModulePath, ParamVisitor};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorPrimitive};
use burn_autodiff::Autodiff;
use burn_backend::tensor::FloatTensor;
use burn_backend::TensorMetadata;

use crate::backend::{self, Deferred, PerSample, PsTensor, Tag};
use crate::clip::{Clipping, ClippingFn, ClippingStyle};
use crate::error::DpError;
use crate::profile::{self, Phase};
use crate::rules::{self, NormMode};

/// The autodiff backend to train with: burn's `Autodiff` over the [`PerSample`] decorator.
pub type DpAutodiff<B> = Autodiff<PerSample<B>>;

/// Marks a model input as the batch: dimension 0 indexes samples.
///
/// Float inputs must be marked so that the engine can prove that no op mixes samples; token ids
/// need no mark (an `Embedding` lookup marks its output). Inside a training loop
/// ([`crate::PrivateTrainer`], burn-dp-train) every host tensor with the physical batch's rows is
/// taken to be the batch anyway; marking says so explicitly, and outside a loop it opens the
/// batch.
///
/// A tensor whose rows were already combined (`x - x.mean_dim(0)`, statistics computed from the
/// batch) stays mixed: marking cannot launder it, and the DP step refuses it. A tensor with
/// another number of rows than the open batch is refused the same way.
///
/// # Shapes
/// `x`: `[B, ...]`, one row of dimension 0 per sample; returned unchanged in value.
pub fn mark_batch<B: Backend, const D: usize>(
    x: Tensor<DpAutodiff<B>, D>,
) -> Tensor<DpAutodiff<B>, D> {
    Tensor::from_inner(batch_inner(x.inner()))
}

/// The former name of [`mark_batch`], kept until the next release (it collided with ordinary
/// variable names such as `let batch = ...`).
pub fn batch<B: Backend, const D: usize>(x: Tensor<DpAutodiff<B>, D>) -> Tensor<DpAutodiff<B>, D> {
    mark_batch(x)
}

/// [`mark_batch`] for a tensor of the non-autodiff `PerSample<B>` backend.
pub(crate) fn batch_inner<B: Backend, const D: usize>(
    x: Tensor<PerSample<B>, D>,
) -> Tensor<PerSample<B>, D> {
    let ps = match x.into_primitive() {
        TensorPrimitive::Float(PsTensor::Dense { tensor, tag }) => {
            let rows = tensor.shape().as_slice().first().copied().unwrap_or(0);
            let marked = backend::pass::mark(rows).unwrap_or(Tag::Mixed {
                op: "mark_batch (rows differ from the open batch)",
            });
            let tag = match tag {
                Tag::Independent | Tag::Unmarked { .. } => marked,
                Tag::PerSample { .. } => tag.join(marked),
                // Rows already combined stay combined: marking does not make them per sample.
                Tag::UnmarkedMixed { op, .. } | Tag::Mixed { op } | Tag::Lost { op } => {
                    Tag::Mixed { op }
                }
            };
            PsTensor::dense(tensor, tag)
        }
        TensorPrimitive::Float(other) => other,
        TensorPrimitive::QFloat(_) => unreachable!("model inputs are not quantized"),
    };
    Tensor::from_primitive(TensorPrimitive::Float(ps))
}

/// Wraps an inner-backend tensor as a batch-independent tensor of `PerSample<B>` (a constant,
/// a parameter value; tagged [`Tag::Independent`]).
pub(crate) fn wrap_independent<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Tensor<PerSample<B>, D> {
    Tensor::from_primitive(TensorPrimitive::Float(PsTensor::dense(
        x.into_primitive().tensor(),
        Tag::Independent,
    )))
}

/// Wraps an inner-backend tensor as a constant of `PerSample<B>`, whatever it holds.
///
/// **This voids the guarantee if `x` holds data of the batch**: the engine then treats it as a
/// public constant (a loaded parameter) and never checks how its rows were computed. Use it only
/// for values that do not depend on private data (benchmarks of random inputs, public tables).
pub fn wrap_independent_unchecked<B: Backend, const D: usize>(
    x: Tensor<B, D>,
) -> Tensor<PerSample<B>, D> {
    wrap_independent(x)
}

/// Unwraps a `PerSample<B>` tensor to the inner backend (a deferred gradient is summed): the
/// library's own reads (device, loss values for the non-finite mask), which never leave the device.
pub(crate) fn lower<B: Backend, const D: usize>(x: Tensor<PerSample<B>, D>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(
        x.into_primitive().tensor().into_sum(),
    ))
}

/// Settings of the per-sample engine.
#[derive(Debug, Clone, PartialEq)]
pub struct PerSampleConfig {
    /// Clipping function and style.
    pub clipping: Clipping,
    /// Ghost norm, instantiation, or the cost model's choice per layer.
    pub norm_mode: NormMode,
}

impl PerSampleConfig {
    /// Flat clipping with `function`, norms chosen by the cost model.
    pub fn new(function: ClippingFn) -> Self {
        PerSampleConfig {
            clipping: Clipping::flat(function),
            norm_mode: NormMode::Auto,
        }
    }

    /// Sets the clipping style.
    pub fn with_style(mut self, style: ClippingStyle) -> Self {
        self.clipping.style = style;
        self
    }

    /// Sets the norm mode.
    pub fn with_norm_mode(mut self, mode: NormMode) -> Self {
        self.norm_mode = mode;
        self
    }
}

/// What one per-sample backward pass produced.
pub struct ClippedGradients<B: Backend> {
    /// Number of samples `B`.
    pub batch_size: usize,
    /// `‖g_i‖` over all trainable parameters `[B]` (reported whatever the style).
    pub norms: Tensor<B, 1>,
    /// Per group (one for flat clipping): name, norms `[B]`, clipping function.
    pub groups: Vec<(String, Tensor<B, 1>, ClippingFn)>,
    /// `Σ_i c_i g_i` per trainable parameter (zero for a parameter no sample touched).
    pub sums: HashMap<ParamId, Tensor<B, 1>>,
    /// Shapes of the trainable parameters.
    pub shapes: HashMap<ParamId, Vec<usize>>,
    /// Module paths of the trainable parameters, in visiting order.
    pub params: Vec<(ParamId, String)>,
    /// Trainable parameters no sample's gradient reached.
    pub untouched: Vec<String>,
    /// L2 sensitivity of the clipped sum: `sqrt(Σ_groups R_g²)`.
    pub sensitivity: f64,
    /// `true` for the samples whose loss or per-sample gradient norm is not finite (NaN or ±∞),
    /// kept on the device. They contribute exactly zero to `sums` (their clipping factor is 0
    /// and their cached rows are replaced by zeros, on the device, whatever the mask holds), so
    /// a sample still moves the sum by at most its clipping bound. [`ClippedGradients::non_finite`]
    /// reads their indices.
    ///
    /// # Shapes
    /// `[B]`.
    pub non_finite_mask: Tensor<B, 1, Bool>,
    /// Whether the losses were multiplied by a physical batch's padding mask by the library
    /// ([`clipped_backward_masked`]); only such sums can be accumulated into a DP step.
    masked: bool,
}

impl<B: Backend> ClippedGradients<B> {
    /// The samples of [`ClippedGradients::non_finite_mask`], in batch order. Reads the mask back
    /// to the host: one device → host read (a synchronisation on an asynchronous device), which
    /// the training path never makes.
    pub fn non_finite(&self) -> Result<Vec<usize>, DpError> {
        read_mask(self.non_finite_mask.clone())
    }

    /// Whether these sums were computed by [`clipped_backward_masked`] (padding rows zeroed by the
    /// library), as a DP step requires.
    pub fn is_masked(&self) -> bool {
        self.masked
    }

    /// The clipped sums as burn gradients for an optimizer of `DpAutodiff<B>`.
    pub fn into_gradients<M: AutodiffModule<DpAutodiff<B>>>(self, model: &M) -> GradientsParams {
        register_gradients(self.sums, model)
    }
}

/// Turns flat per-parameter gradients into burn's `GradientsParams` for `model` (reshaped to each
/// parameter's shape); ids not in `model` are ignored.
pub fn register_gradients<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(
    sums: HashMap<ParamId, Tensor<B, 1>>,
    model: &M,
) -> GradientsParams {
    let mut out = GradientsParams::new();
    let mut visitor = Register::<B> {
        sums,
        out: &mut out,
    };
    model.visit(&mut visitor);
    out
}

struct Register<'a, B: Backend> {
    sums: HashMap<ParamId, Tensor<B, 1>>,
    out: &'a mut GradientsParams,
}

impl<B: Backend> ModuleVisitor<DpAutodiff<B>> for Register<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<DpAutodiff<B>, D>>) {
        if let Some(sum) = self.sums.remove(&param.id) {
            let dims: [usize; D] = param.val().dims();
            self.out
                .register::<PerSample<B>, D>(param.id, wrap_independent(sum.reshape(dims)));
        }
    }
}

/// One trainable parameter (and its gradient after backward).
pub(crate) struct Collected<B: Backend> {
    pub(crate) id: ParamId,
    pub(crate) path: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) device: B::Device,
    grad: Option<PsTensor<B>>,
}

struct Collect<'a, B: Backend> {
    grads: Option<&'a mut <DpAutodiff<B> as burn::tensor::backend::AutodiffBackend>::Gradients>,
    out: Vec<Collected<B>>,
}

/// The trainable parameters of `model`, with their module paths, in visiting order.
pub(crate) fn trainable<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(
    model: &M,
) -> Vec<Collected<B>> {
    let mut collect = Collect::<B> {
        grads: None,
        out: Vec::new(),
    };
    visit_params(model, &mut collect);
    collect.out
}

impl<B: Backend> ParamVisitor<DpAutodiff<B>> for Collect<'_, B> {
    fn visit<const D: usize>(
        &mut self,
        path: &ModulePath,
        param: &Param<Tensor<DpAutodiff<B>, D>>,
    ) {
        let value = param.val();
        if !value.is_require_grad() || self.out.iter().any(|c| c.id == param.id) {
            return;
        }
        let grad = self
            .grads
            .as_mut()
            .and_then(|g| value.grad_remove(g))
            .map(|g| g.into_primitive().tensor());
        let device = lower(value.clone().inner()).device();
        self.out.push(Collected {
            id: param.id,
            path: path.dotted(),
            shape: value.dims().to_vec(),
            device,
            grad,
        });
    }
}

/// A trainable parameter after a per-sample backward pass.
struct Resolved<B: Backend> {
    id: ParamId,
    path: String,
    shape: Vec<usize>,
    /// `None`: no sample's gradient reached it.
    grad: Option<Deferred<B>>,
}

/// Batch size, device, and every trainable parameter after the pass.
type Pass<B> = (usize, burn::tensor::Device<B>, Vec<Resolved<B>>);

/// Runs the per-sample backward pass and resolves every trainable parameter's gradient.
fn per_sample_pass<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(
    model: &M,
    losses: Tensor<DpAutodiff<B>, 1>,
) -> Result<Pass<B>, DpError> {
    // The batch closes with its backward pass, whatever happens: an activation kept from it is
    // another batch's data from now on.
    struct Close;
    impl Drop for Close {
        fn drop(&mut self) {
            backend::pass::close();
        }
    }
    let _close = Close;
    let dims = losses.dims();
    let b = dims[0];
    let loss_tag = losses.clone().inner().into_primitive().tensor().tag();
    // Refused before the backward pass, so that each error names its cause: the model already
    // holds batch data, the batch went to the host and back, or the losses mix samples (the
    // first op that mixed them, not the parameter whose gradient it reached first).
    crate::state::check_parameters(model, false)?;
    if let Some(op) = backend::pass::poisoned() {
        return Err(DpError::HostRead { op: op.to_string() });
    }
    check_loss_tag(loss_tag, b)?;
    let device = lower(losses.clone().inner()).device();
    // An empty batch has no gradient to take (and burn-flex 0.21's gemm dies on the empty
    // products of its backward pass).
    let mut grads = (b > 0).then(|| backend::with_scope(|| losses.sum().backward()));
    let mut collect = Collect::<B> {
        grads: grads.as_mut(),
        out: Vec::new(),
    };
    visit_params(model, &mut collect);
    let mut resolved = Vec::new();
    for c in collect.out {
        let grad = match c.grad {
            None => None,
            Some(g) => Some(resolve(g, &c.path, b)?),
        };
        resolved.push(Resolved {
            id: c.id,
            path: c.path,
            shape: c.shape,
            grad,
        });
    }
    // State the forward wrote into the model from the batch (BatchNorm's running statistics)
    // would be published without noise, whatever the batch size.
    crate::state::check_module_state(model)?;
    Ok((b, device, resolved))
}

/// The error, if any, that the per-sample losses' tag means for a batch of `b` samples.
fn check_loss_tag(tag: Tag, b: usize) -> Result<(), DpError> {
    match tag {
        // Losses of another batch than the one the training loop opened (kept from an earlier
        // batch and returned again).
        Tag::PerSample { id: Some(id), .. }
            if backend::pass::open_batch().is_some_and(|open| open.inferred && open.id != id) =>
        {
            Err(DpError::LossMixesSamples {
                op: "rows of two different physical batches meet (the losses)".into(),
            })
        }
        Tag::PerSample { .. } => Ok(()),
        // An empty batch holds no sample's data.
        Tag::Independent | Tag::Unmarked { .. } | Tag::UnmarkedMixed { .. } if b == 0 => Ok(()),
        // Host data whose rows were combined meets marked data in a join, which resolves it: a
        // different number of rows is a constant and leaves `PerSample`. What is left here has
        // the batch's rows, or never met the marked batch.
        Tag::UnmarkedMixed { rows, op } if rows == b || rows == 0 => {
            Err(DpError::LossUsesUnmarkedBatch {
                op: op.to_string(),
                rows: b,
            })
        }
        Tag::Independent | Tag::Unmarked { .. } | Tag::UnmarkedMixed { .. } => {
            Err(DpError::UnmarkedBatch)
        }
        Tag::Mixed { op } | Tag::Lost { op } => {
            Err(DpError::LossMixesSamples { op: op.to_string() })
        }
    }
}

/// Per-sample gradients of every trainable parameter, instantiated (for inspection and tests;
/// training uses [`clipped_backward`], which never materialises them).
///
/// # Shapes
/// `losses`: `[B]`; each returned tensor: `[B, numel]` (row `i`: sample `i`'s gradient, flattened in
/// the parameter's layout).
pub fn per_sample_gradients<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(
    model: &M,
    losses: Tensor<DpAutodiff<B>, 1>,
) -> Result<Vec<(ParamId, String, Tensor<B, 2>)>, DpError> {
    let (b, device, resolved) = per_sample_pass(model, losses)?;
    Ok(resolved
        .into_iter()
        .map(|r| {
            let numel: usize = r.shape.iter().product();
            let t = match r.grad {
                Some(d) if b > 0 => rules::flat::<B>(rules::instantiate(&d)),
                _ => Tensor::<B, 2>::zeros([b, numel], &device),
            };
            (r.id, r.path, t)
        })
        .collect())
}

/// Runs backward on per-sample losses and returns per-sample norms and clipped sums.
///
/// This is the one call that replaces `loss.backward()` in a training loop: one backward pass, no
/// loop over samples. Every trainable parameter of `model` must get its gradient through a rule of
/// [`rules::RULES`]; anything else is an error naming the parameter.
///
/// A sample whose loss or gradient norm is not finite (a NaN or ±∞ anywhere in its gradient
/// makes its norm non-finite) is clipped to zero: it contributes exactly nothing, and is marked in
/// [`ClippedGradients::non_finite_mask`]. The clipping function stays bounded by its `R`, so the
/// sensitivity holds and one bad sample cannot turn every parameter into NaN.
///
/// Nothing is read back to the host: norms, the non-finite mask and the sums stay on the device
/// (no synchronisation of an asynchronous device per physical batch).
///
/// # Shapes
/// `losses`: `[B]`, one loss per sample (their sum is differentiated).
pub fn clipped_backward<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(
    config: &PerSampleConfig,
    model: &M,
    losses: Tensor<DpAutodiff<B>, 1>,
) -> Result<ClippedGradients<B>, DpError> {
    config.clipping.validate()?;
    let backward = profile::start::<B>(Phase::Backward, &losses.device());
    let loss_values = lower(losses.clone().inner());
    let (b, device, mut resolved) = per_sample_pass(model, losses)?;
    backward.end();
    let untouched = resolved
        .iter()
        .filter(|r| b > 0 && r.grad.is_none())
        .map(|r| r.path.clone())
        .collect();
    let ids: Vec<(ParamId, &str)> = resolved.iter().map(|r| (r.id, r.path.as_str())).collect();
    let style_groups = groups_of(&config.clipping, &ids)?;
    let zeros = || Tensor::<B, 1>::zeros([b], &device);

    // Per-sample squared norms, per parameter (keeping instantiated per-sample gradients).
    let norms_phase = profile::start::<B>(Phase::Norms, &device);
    let mut instantiated: Vec<Option<FloatTensor<B>>> = Vec::with_capacity(resolved.len());
    let sq: Vec<Tensor<B, 1>> = resolved
        .iter()
        .map(|r| match &r.grad {
            Some(d) if b > 0 => {
                let n = rules::sq_norms(d, config.norm_mode);
                instantiated.push(n.instantiated);
                n.sq
            }
            _ => {
                instantiated.push(None);
                zeros()
            }
        })
        .collect();
    let total = sq.iter().fold(zeros(), |acc, s| acc + s.clone());
    norms_phase.end();

    // Samples with a non-finite loss or norm (a NaN or ±∞ anywhere in a gradient reaches the
    // norm) are excluded: clipping factor 0 and their rows zeroed (NaN · 0 would still be NaN).
    // The mask stays on the device and is applied to every batch, whatever it holds: deciding
    // on the host whether any sample is bad would be a device → host read (a synchronisation)
    // per physical batch. For finite samples the masked values are the inputs, bit for bit.
    let non_finite_phase = profile::start::<B>(Phase::NonFinite, &device);
    let non_finite_mask = total
        .clone()
        .is_finite()
        .bool_and(loss_values.is_finite())
        .bool_not();
    let drop = (b > 0).then(|| non_finite_mask.clone().into_primitive());
    if let Some(drop) = &drop {
        for r in resolved.iter_mut() {
            if let Some(d) = &r.grad {
                r.grad = Some(rules::zero_samples(d, drop));
            }
        }
        for inst in instantiated.iter_mut() {
            if let Some(t) = inst.take() {
                *inst = Some(rules::zero_rows::<B>(t, drop));
            }
        }
    }
    non_finite_phase.end();

    // Per group: norms, clipping factors, sensitivity.
    let factors_phase = profile::start::<B>(Phase::Factors, &device);
    let mut groups = Vec::new();
    let mut factors = Vec::new();
    let mut group_of = vec![0usize; resolved.len()];
    for (gi, (name, members, function)) in style_groups.iter().enumerate() {
        let norms = members
            .iter()
            .fold(zeros(), |acc, &i| acc + sq[i].clone())
            .sqrt();
        for &i in members {
            group_of[i] = gi;
        }
        let mut c = function.factors(norms.clone());
        if let Some(drop) = &drop {
            c = c.mask_fill(Tensor::<B, 1, Bool>::from_primitive(drop.clone()), 0.0);
        }
        factors.push(c);
        groups.push((name.clone(), norms, *function));
    }
    factors_phase.end();
    let sensitivity = groups_sensitivity(&style_groups);

    // Clipped sums (book-keeping: one weighted product per cached term).
    let sums_phase = profile::start::<B>(Phase::ClippedSums, &device);
    let mut sums = HashMap::new();
    let mut shapes = HashMap::new();
    let mut params = Vec::new();
    for (i, (r, inst)) in resolved.into_iter().zip(instantiated).enumerate() {
        let numel: usize = r.shape.iter().product();
        let sum = match r.grad {
            Some(d) if b > 0 => {
                let t: FloatTensor<B> = rules::clipped_sum(&d, &factors[group_of[i]], inst);
                Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(B::float_reshape(
                    t,
                    [numel].into(),
                )))
            }
            _ => Tensor::<B, 1>::zeros([numel], &device),
        };
        sums.insert(r.id, sum);
        shapes.insert(r.id, r.shape);
        params.push((r.id, r.path));
    }
    sums_phase.end();
    Ok(ClippedGradients {
        batch_size: b,
        norms: total.sqrt(),
        groups,
        sums,
        shapes,
        params,
        untouched,
        sensitivity,
        non_finite_mask,
        masked: false,
    })
}

/// [`clipped_backward`] on the per-sample losses of one physical batch, with its padding rows
/// zeroed by the library: the losses are checked as the user returned them (the mask is a
/// constant here, not a mark of the batch), then multiplied by `batch.mask`. This is the only
/// form a DP step accumulates ([`crate::DpOptimizer::backward`]).
///
/// # Shapes
/// `losses`: `[P]`, one loss per row of `batch` (`P = batch.indices.len()`).
pub fn clipped_backward_masked<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(
    config: &PerSampleConfig,
    model: &M,
    losses: Tensor<DpAutodiff<B>, 1>,
    batch: &crate::sampling::PhysicalBatch,
) -> Result<ClippedGradients<B>, DpError> {
    let rows = batch.mask.len();
    if losses.dims() != [rows] || batch.indices.len() != rows {
        return Err(DpError::LossShape {
            shape: losses.dims().to_vec(),
        });
    }
    let device = losses.device();
    // Uploaded on the inner backend and wrapped as a constant: the loop's own mask is not the
    // user's marking of the batch (an unmarked loss stays unmarked).
    let mask = Tensor::<B, 1>::from_data(
        burn::tensor::TensorData::new(batch.mask.clone(), [rows]),
        &device,
    );
    let mask = Tensor::<DpAutodiff<B>, 1>::from_inner(wrap_independent(mask));
    let mut clipped = clipped_backward(config, model, losses * mask)?;
    clipped.masked = true;
    Ok(clipped)
}

/// The indices of the `true` entries of `mask` `[B]`, read to the host (one device → host read;
/// none for an empty mask).
pub(crate) fn read_mask<B: Backend>(mask: Tensor<B, 1, Bool>) -> Result<Vec<usize>, DpError> {
    if mask.dims()[0] == 0 {
        return Ok(Vec::new());
    }
    Ok(backend::transfer::download_inner(mask.int())
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| DpError::InvalidConfig(format!("reading the non-finite mask: {e:?}")))?
        .iter()
        .enumerate()
        .filter(|(_, &bad)| bad != 0)
        .map(|(i, _)| i)
        .collect())
}

/// Turns a parameter's gradient into per-sample terms, or the error that says why it cannot be.
fn resolve<B: Backend>(g: PsTensor<B>, path: &str, b: usize) -> Result<Deferred<B>, DpError> {
    let fail = |tag: Tag| -> DpError {
        match tag {
            Tag::Mixed { op } => DpError::MixedSamples {
                param: path.to_string(),
                op: op.to_string(),
            },
            Tag::Lost { op } => DpError::NoPerSampleRule {
                param: path.to_string(),
                reason: format!("its gradient passes through `{op}`, which has no per-sample rule"),
            },
            _ => unreachable!("only unclean tags fail"),
        }
    };
    match g {
        PsTensor::Deferred(d) => {
            if !d.taint.is_clean() {
                return Err(fail(d.taint));
            }
            if let Some(t) = d.terms.iter().find(|t| t.samples() != b) {
                return Err(DpError::BatchMismatch { param: path.to_string(), expected: b, found: t.samples() });
            }
            Ok(*d)
        }
        PsTensor::Dense { tag, .. } if !tag.is_clean() => Err(fail(tag)),
        // One sample: the ordinary gradient is that sample's gradient.
        PsTensor::Dense { tensor, .. } if b == 1 => {
            let shape = tensor.shape();
            let (dtype, device) = (tensor.dtype(), B::float_device(&tensor));
            let per_sample = B::float_reshape(tensor, rules::batched_shape(1, &shape));
            Ok(Deferred { shape, dtype, device, terms: vec![rules::batched::BatchedTerm::new_ref(per_sample)], taint: Tag::Independent })
        }
        PsTensor::Dense { tensor, .. } if b == 0 => {
            let shape = tensor.shape();
            let (dtype, device) = (tensor.dtype(), B::float_device(&tensor));
            let per_sample = B::float_zeros(rules::batched_shape(0, &shape), &device, dtype.into());
            Ok(Deferred { shape, dtype, device, terms: vec![rules::batched::BatchedTerm::new_ref(per_sample)], taint: Tag::Independent })
        }
        PsTensor::Dense { .. } => Err(DpError::NoPerSampleRule {
            param: path.to_string(),
            reason: "its gradient was computed by an op without a per-sample rule (e.g. a plain matmul with a rank-2 weight)".into(),
        }),
    }
}

type Groups = Vec<(String, Vec<usize>, ClippingFn)>;

/// The L2 sensitivity `sqrt(Σ_groups R_g²)` of a clipped sum over these trainable parameters:
/// what [`clipped_backward`] reports for the same clipping and parameters (both go through the
/// same grouping and [`groups_sensitivity`]), used for the noise of an empty logical batch.
pub fn sensitivity(clipping: &Clipping, params: &[(ParamId, &str)]) -> Result<f64, DpError> {
    Ok(groups_sensitivity(&groups_of(clipping, params)?))
}

/// `sqrt(Σ_groups R_g²)`: each sample's clipped contribution has norm at most `R_g` in group `g`
/// (a group no parameter falls in still counts, which only over-estimates).
fn groups_sensitivity(groups: &Groups) -> f64 {
    groups
        .iter()
        .map(|(_, _, f)| f.sensitivity().powi(2))
        .sum::<f64>()
        .sqrt()
}

fn groups_of(clipping: &Clipping, params: &[(ParamId, &str)]) -> Result<Groups, DpError> {
    match &clipping.style {
        ClippingStyle::Flat => Ok(vec![(
            "all".to_string(),
            (0..params.len()).collect(),
            clipping.function,
        )]),
        ClippingStyle::PerLayer => {
            let mut out: Groups = Vec::new();
            for (i, (_, path)) in params.iter().enumerate() {
                let layer = path
                    .rsplit_once('.')
                    .map(|(l, _)| l.to_string())
                    .unwrap_or_default();
                match out.iter_mut().find(|(n, _, _)| *n == layer) {
                    Some((_, members, _)) => members.push(i),
                    None => out.push((layer, vec![i], clipping.function)),
                }
            }
            Ok(out)
        }
        ClippingStyle::Groups(groups) => {
            let mut out: Groups = groups
                .iter()
                .map(|g| (g.name.clone(), Vec::new(), g.clipping))
                .collect();
            for (i, (id, path)) in params.iter().enumerate() {
                let gi = groups
                    .iter()
                    .position(|g| g.selector.matches(id, path))
                    .ok_or_else(|| {
                        DpError::Selection(format!(
                            "trainable parameter `{path}` is in no clipping group"
                        ))
                    })?;
                out[gi].1.push(i);
            }
            Ok(out)
        }
    }
}
