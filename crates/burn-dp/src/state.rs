//! The model's own tensors (parameters and buffers) around a DP step: what they may hold before
//! the step ([`check_parameters`]), what the forward may not write into them
//! ([`check_module_state`]), how a refused step puts them back ([`ModuleSnapshot`]), and how a
//! user says that earlier training used public data only ([`declare_public`]).

use std::any::Any;
use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};

use crate::backend::{PsTensor, Tag};
use crate::engine::DpAutodiff;
use crate::error::DpError;
use crate::paths::{visit_params, ModulePath, ParamVisitor};

fn tag_of<B: Backend, const D: usize>(t: &Tensor<DpAutodiff<B>, D>) -> Tag {
    t.clone().inner().into_primitive().tensor().tag()
}

/// The module path and tag of the first float tensor of `model` that `bad` rejects.
struct Find<F> {
    trainable_only: bool,
    bad: F,
    found: Option<(String, Tag)>,
}

impl<B: Backend, F: FnMut(Tag) -> bool> ParamVisitor<DpAutodiff<B>> for Find<F> {
    fn visit<const D: usize>(
        &mut self,
        path: &ModulePath,
        param: &Param<Tensor<DpAutodiff<B>, D>>,
    ) {
        if self.found.is_some() {
            return;
        }
        let value = param.val();
        if self.trainable_only && !value.is_require_grad() {
            return;
        }
        let tag = tag_of(&value);
        if (self.bad)(tag) {
            self.found = Some((path.dotted(), tag));
        }
    }
}

fn find<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(
    model: &M,
    trainable_only: bool,
    bad: impl FnMut(Tag) -> bool,
) -> Option<(String, Tag)> {
    let mut find = Find {
        trainable_only,
        bad,
        found: None,
    };
    visit_params(model, &mut find);
    find.found
}

fn op_of(tag: Tag) -> &'static str {
    match tag {
        Tag::Independent => "none",
        Tag::Unmarked { .. } => "a host upload during the pass",
        Tag::PerSample { .. } => "a copy of per-sample data",
        Tag::UnmarkedMixed { op, .. } | Tag::Mixed { op } | Tag::Lost { op } => op,
    }
}

/// Refuses a model whose parameters (with `all`, every float tensor, buffers included) hold
/// values computed from batch data outside a DP step: an ordinary `backward()` and optimizer step
/// on `DpAutodiff` (public pre-training on the same backend), or a tensor copied from a batch.
/// Parameters made on the device or loaded from the host are constants.
pub(crate) fn check_parameters<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(
    model: &M,
    all: bool,
) -> Result<(), DpError> {
    match find(model, !all, |t| !t.is_constant()) {
        None => Ok(()),
        Some((param, tag)) => Err(DpError::ParameterFromBatch {
            param,
            op: op_of(tag).to_string(),
        }),
    }
}

/// Rejects a model holding a tensor computed from batch data after the forward: module state
/// updated in the forward (BatchNorm's running mean and variance in training mode, any buffer
/// written from activations, or from values computed on the host while the batch was open) is
/// private data outside the clipped, noised sum. Parameters and buffers made on the device or
/// loaded from the host before the batch are constants; anything else is an error.
pub(crate) fn check_module_state<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(
    model: &M,
) -> Result<(), DpError> {
    // `RunningState` keeps per-thread updates until it syncs; turning a clone into a record syncs
    // the shared state (as BatchNorm's own forward does), so the visit below sees the update.
    let _ = model.clone().into_record();
    let bad = |t: Tag| !matches!(t, Tag::Independent | Tag::Unmarked { in_pass: false, .. });
    match find(model, false, bad) {
        None => Ok(()),
        Some((param, tag)) => Err(DpError::StateFromBatch {
            param,
            op: op_of(tag).to_string(),
        }),
    }
}

/// The float tensors of a model at one moment (handles, no copies), to put back the state that a
/// refused step's forward wrote into it.
///
/// burn's `RunningState` (BatchNorm's running mean and variance) is shared between clones of a
/// module, so a forward that the engine then refuses has already written batch statistics into
/// the model the caller holds; [`ModuleSnapshot::restore`] writes the values back.
pub struct ModuleSnapshot {
    values: HashMap<ParamId, Box<dyn Any + Send>>,
}

struct Take<'a> {
    values: &'a mut HashMap<ParamId, Box<dyn Any + Send>>,
}

impl<B: Backend> ModuleVisitor<DpAutodiff<B>> for Take<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<DpAutodiff<B>, D>>) {
        self.values.insert(param.id, Box::new(param.val()));
    }
}

struct Put<'a> {
    values: &'a HashMap<ParamId, Box<dyn Any + Send>>,
}

impl<B: Backend> ModuleMapper<DpAutodiff<B>> for Put<'_> {
    fn map_float<const D: usize>(
        &mut self,
        param: Param<Tensor<DpAutodiff<B>, D>>,
    ) -> Param<Tensor<DpAutodiff<B>, D>> {
        let old = self
            .values
            .get(&param.id)
            .and_then(|v| v.downcast_ref::<Tensor<DpAutodiff<B>, D>>())
            .cloned();
        match old {
            Some(old) => param.map(|_| old),
            None => param,
        }
    }
}

impl ModuleSnapshot {
    /// The current values of every float tensor of `model` (parameters and buffers).
    pub fn take<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(model: &M) -> Self {
        let mut values = HashMap::new();
        model.visit(&mut Take {
            values: &mut values,
        });
        ModuleSnapshot { values }
    }

    /// Puts the snapshot's values back into the state that `model` shares with its clones
    /// (`RunningState` buffers); pending per-thread updates are synced first, then overwritten.
    pub fn restore<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(&self, model: &M) {
        let _ = model.clone().into_record();
        let _ = model.clone().map(&mut Put {
            values: &self.values,
        });
    }
}

struct Public;

impl<B: Backend> ModuleMapper<DpAutodiff<B>> for Public {
    fn map_float<const D: usize>(
        &mut self,
        param: Param<Tensor<DpAutodiff<B>, D>>,
    ) -> Param<Tensor<DpAutodiff<B>, D>> {
        param.map(|t| {
            let require_grad = t.is_require_grad();
            let inner = match t.inner().into_primitive() {
                TensorPrimitive::Float(PsTensor::Dense { tensor, .. }) => {
                    PsTensor::dense(tensor, Tag::Independent)
                }
                TensorPrimitive::Float(other) => other,
                TensorPrimitive::QFloat(_) => unreachable!("parameters are not quantized here"),
            };
            let t = Tensor::from_inner(Tensor::from_primitive(TensorPrimitive::Float(inner)));
            if require_grad {
                t.require_grad()
            } else {
                t
            }
        })
    }
}

/// Declares that every parameter and buffer of `model` holds public information only: values
/// fitted to **public** data by ordinary (non-private) training on `DpAutodiff`, which the DP
/// step otherwise refuses ([`DpError::ParameterFromBatch`]) because it cannot tell public batches
/// from private ones.
///
/// **This is a statement by the caller.** If any of that training saw private data, the model
/// already holds it without clipping or noise, and the (ε, δ) reported later does not cover it.
/// Private fine-tuning from the start (inside [`crate::PrivateTrainer`]) needs no declaration.
pub fn declare_public<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(model: M) -> M {
    model.map(&mut Public)
}
