//! The DP step, once: one process or many ("a world of size 1 is a group").
//!
//! ```text
//! finish(lr, model, reducer):
//!     check the budget                                   (refused: nothing changes)
//!     draw:      reserve a step of the noise stream
//!     for every trainable parameter, in visiting order:
//!         part = Σ c_i g_i (zeros after an empty batch) + N(0, σ²R²) on the reducer's share
//!     account the step                                    (the noised parts leave the process)
//!     parts = reducer.reduce(parts)                       (identity for one process)
//!     inner step on parts / (q·N)
//! ```
//!
//! One process is the identity [`SingleProcess`] with every element's noise
//! ([`NoiseShare::all`]); a data-parallel peer adds its [`NoiseShare`] and sums the parts over the
//! peers. The values are the same either way: an element's noise is a pure function of (key,
//! step, element), so a fixed-seed run on K peers adds what one process adds.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ParamId};
use burn::optim::Optimizer;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use super::{DeviceStepStats, DpOptimizer, DpStep, LastStep, NoiseShare};
use crate::engine::{self, DpAutodiff};
use crate::error::DpError;
use crate::noise::chacha::{blocks_for, NORMALS_PER_BLOCK};
use crate::noise::NoiseBackend;
use crate::profile::{self, Phase};

/// How the noised clipped sums of one process become the step's sum: the identity for one
/// process, an all-reduce over the peers of a data-parallel run. Reducers compose: a decorator
/// (burn-dp-distributed's replica check) wraps another and adds parts of its own.
pub trait Reducer<B: Backend> {
    /// What a failed reduction is, and what the step using this reducer returns (the step's own
    /// refusals convert from [`DpError`]): [`DpError`] for one process, the transport's typed
    /// error for peers.
    type Error: From<DpError>;

    /// The part of the noise this process adds.
    fn share(&self) -> NoiseShare;

    /// The element-wise sum over the peers of every part (one process: `parts` unchanged).
    /// Every peer calls it with the same shapes in the same order.
    ///
    /// # Shapes
    /// `parts`: one `[numel_k]` per trainable parameter, in the model's visiting order; returns
    /// the same shapes.
    fn reduce(&mut self, parts: Vec<Tensor<B, 1>>) -> Result<Vec<Tensor<B, 1>>, Self::Error>;
}

/// One process: all the noise, nothing to reduce.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl<B: Backend> Reducer<B> for SingleProcess {
    type Error = DpError;

    fn share(&self) -> NoiseShare {
        NoiseShare::all()
    }

    fn reduce(&mut self, parts: Vec<Tensor<B, 1>>) -> Result<Vec<Tensor<B, 1>>, DpError> {
        Ok(parts)
    }
}

/// A data-parallel peer whose transport sums one flat buffer: the parts are concatenated into
/// `[Σ_k numel_k]`, summed by the closure (whose error is the step's), and cut back.
pub struct FlatAllReduce<F> {
    share: NoiseShare,
    all_reduce: Option<F>,
}

impl<F> FlatAllReduce<F> {
    /// Peer `share` whose flat buffer `all_reduce` sums over the peers.
    pub fn new(share: NoiseShare, all_reduce: F) -> Self {
        FlatAllReduce {
            share,
            all_reduce: Some(all_reduce),
        }
    }
}

impl<B, F, E> Reducer<B> for FlatAllReduce<F>
where
    B: Backend,
    F: FnOnce(Tensor<B, 1>) -> Result<Tensor<B, 1>, E>,
    E: From<DpError>,
{
    type Error = E;

    fn share(&self) -> NoiseShare {
        self.share
    }

    fn reduce(&mut self, parts: Vec<Tensor<B, 1>>) -> Result<Vec<Tensor<B, 1>>, E> {
        let all_reduce = self
            .all_reduce
            .take()
            .ok_or_else(|| DpError::AllReduce("a flat all-reduce reduces one step".into()))?;
        split_flat(all_reduce, parts)
    }
}

/// Concatenates `parts` into one flat buffer, sums it with `all_reduce`, and cuts the result
/// back into parts of the same lengths (a returned buffer of another length is
/// [`DpError::AllReduce`]).
///
/// # Shapes
/// `parts`: `[numel_k]` each; `all_reduce` takes and returns `[Σ_k numel_k]`.
fn split_flat<B: Backend, E: From<DpError>>(
    all_reduce: impl FnOnce(Tensor<B, 1>) -> Result<Tensor<B, 1>, E>,
    parts: Vec<Tensor<B, 1>>,
) -> Result<Vec<Tensor<B, 1>>, E> {
    let numels: Vec<usize> = parts.iter().map(|p| p.dims()[0]).collect();
    let len: usize = numels.iter().sum();
    let reduced = all_reduce(Tensor::cat(parts, 0))?;
    if reduced.dims() != [len] {
        return Err(DpError::AllReduce(format!(
            "the reduced buffer has shape {:?}, expected [{len}]",
            reduced.dims()
        ))
        .into());
    }
    let mut offset = 0;
    Ok(numels
        .into_iter()
        .map(|n| {
            let part = reduced.clone().narrow(0, offset, n);
            offset += n;
            part
        })
        .collect())
}

impl<O, B: NoiseBackend> DpOptimizer<O, B> {
    /// The DP step on the accumulated logical batch (none: an empty Poisson batch, whose update
    /// is noise only): draw the noise of the reducer's share → add it to the clipped sums → account
    /// → reduce → scale by the expected logical batch size `q·N` → inner step. It closes the
    /// logical batch [`DpStep::draw`] opened (if one did).
    ///
    /// Refused before anything changes (the logical batch stays open, the step is not
    /// accounted): a drawn batch with physical batches not yet accumulated
    /// ([`DpError::StepOutOfOrder`]), a budget that one more step would exceed, a model that
    /// trains no parameter or other parameters than the accumulated ones, an invalid noise std,
    /// an invalid share. The step is accounted before `reducer.reduce` (the noised parts leave the
    /// process there): if the reduction fails, ε counts the step, the model is unchanged and the
    /// batch is dropped.
    pub fn finish<M, R>(&mut self, lr: f64, model: M, reducer: &mut R) -> Result<M, R::Error>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        O: Optimizer<M, DpAutodiff<B>>,
        R: Reducer<B>,
    {
        let (parts, device) = self.step.noised_sums(&model, reducer)?;
        // 4. scale by the expected logical batch size, then the inner optimizer's step
        let step_phase = profile::start::<B>(Phase::OptimizerStep, &device);
        let update: HashMap<ParamId, Tensor<B, 1>> = parts
            .into_iter()
            .map(|(id, part)| (id, part.div_scalar(self.expected_batch_size)))
            .collect();
        let grads = engine::register_gradients(update, &model);
        let model = self.inner.step(lr, model, grads);
        step_phase.end();
        Ok(model)
    }
}

impl<B: NoiseBackend> DpStep<B> {
    /// Steps 1–3 of [`DpOptimizer::finish`], up to the update's scaling: every trainable
    /// parameter's clipped sum plus this process's share of the noise, accounted, then summed over
    /// the peers; with the device of the first parameter.
    #[allow(clippy::type_complexity)]
    fn noised_sums<M, R>(
        &mut self,
        model: &M,
        reducer: &mut R,
    ) -> Result<(Vec<(ParamId, Tensor<B, 1>)>, B::Device), R::Error>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        R: Reducer<B>,
    {
        if self
            .drawn
            .is_some_and(|d| d.accumulated < d.physical_batches)
        {
            return Err(self
                .out_of_order(
                    "the step before every physical batch of the drawn logical batch was accumulated",
                )
                .into());
        }
        let share = reducer.share();
        share.validate()?;
        self.privacy.check_next_step()?;
        let params = engine::trainable::<B, M>(model);
        if params.is_empty() {
            return Err(DpError::InvalidConfig("the model trains no parameter".into()).into());
        }
        let ids: Vec<(ParamId, &str)> = params.iter().map(|p| (p.id, p.path.as_str())).collect();
        let sensitivity = match &self.accumulated {
            Some(a) => {
                if let Some(p) = params.iter().find(|p| !a.sums.contains_key(&p.id)) {
                    return Err(DpError::ParamMismatch(format!(
                        "trainable parameter `{}` has no accumulated gradient",
                        p.path
                    ))
                    .into());
                }
                if a.sums.len() != params.len() {
                    return Err(DpError::ParamMismatch(
                        "gradients hold parameters the model does not train".into(),
                    )
                    .into());
                }
                a.sensitivity
            }
            None => engine::sensitivity(&self.per_sample.clipping, &ids)?,
        };
        let std = self.privacy.noise_multiplier * sensitivity;
        let std_f32 = std as f32;
        if !(std_f32.is_finite() && std_f32 > 0.0) {
            return Err(DpError::InvalidConfig(format!(
                "the noise std σ·R = {std} is not a positive f32"
            ))
            .into());
        }
        // Draw: the step of the noise stream is reserved before anything is drawn, never reused.
        let step = self.noise.begin_step()?;
        let mut acc = self.accumulated.take();
        let device = params[0].device.clone();
        let noise_phase = profile::start::<B>(Phase::Noise, &device);
        let mut first_block = 0u64;
        let mut parts = Vec::with_capacity(params.len());
        for p in &params {
            let numel: usize = p.shape.iter().product();
            // 1. the clipped sum, in f32
            let clipped = match acc.as_mut().and_then(|a| a.sums.remove(&p.id)) {
                Some(s) => s.cast(DType::F32),
                None => Tensor::<B, 1>::zeros([numel], (&p.device, DType::F32)),
            };
            // 2. noise N(0, σ²R²) on this process's share of the elements, drawn on the
            //    parameter's device at the blocks of the stream they have in a single process
            let mine = share.elements(numel);
            let part = if mine.is_empty() {
                clipped
            } else {
                let noise = self.noise.gaussian::<B>(
                    step,
                    first_block + (mine.start / NORMALS_PER_BLOCK) as u64,
                    mine.len(),
                    std_f32,
                    &p.device,
                );
                if mine.len() == numel {
                    clipped + noise
                } else {
                    let noised = clipped.clone().slice(mine.clone()) + noise;
                    clipped.slice_assign(mine, noised)
                }
            };
            first_block += blocks_for(numel);
            parts.push(part);
        }
        noise_phase.end();
        self.privacy.record_step()?;
        let drawn = self.drawn.take();
        self.last_step = Some(LastStep {
            stats: acc.map_or_else(DeviceStepStats::empty, |a| a.stats),
            drawn: drawn.map(|d| (d.samples, d.physical_batches)),
        });
        // 3. the sum over the peers (one process: the parts themselves)
        let parts = reducer.reduce(parts)?;
        if parts.len() != params.len() {
            return Err(DpError::AllReduce(format!(
                "the reducer returned {} parts for {} parameters",
                parts.len(),
                params.len()
            ))
            .into());
        }
        Ok((params.iter().map(|p| p.id).zip(parts).collect(), device))
    }
}
