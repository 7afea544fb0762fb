//! The DP step: one object that owns the inner optimizer (any burn `Optimizer`), the Poisson
//! sampler and the privacy state, and takes one logical step at a time (Abadi et al. 2016,
//! Algorithm 1; Bu et al. 2023 for automatic clipping):
//!
//! ```text
//! draw()                          check the budget, draw a Poisson logical batch at rate q
//! for each physical batch:
//!     clip_and_accumulate(...)    open the batch, losses · mask, clip: S += Σ_i c_i g_i
//! finish(lr, model, reducer)      S += N(0, σ² R² I) on the reducer's share    (add noise)
//!                                 account; S = reducer.reduce(S)               (peers: all-reduce)
//!                                 g = S / E[|logical batch|] = S / (q·N)       (scale)
//!                                 θ = inner.step(lr, θ, g)                     (inner step)
//! ```
//!
//! Out-of-order use (a second draw before the step, a physical batch without a draw, a step
//! before every physical batch is accumulated) is a typed [`DpError`]. [`crate::PrivateTrainer`]
//! is this loop plus the model; burn-dp-train's Learner session drives the same object.
//!
//! ```text
//! DpOptimizer<O, B> ─┬─ inner: O            the burn optimizer the noised gradient goes to
//!                    └─ DpStep<B>           everything else (Deref: its methods are the object's)
//!                        ├─ PoissonSampler   draws the logical batches at rate q
//!                        ├─ PrivacyState     σ, q, δ, the accountant, the budget
//!                        ├─ NoiseGenerator   the noise stream
//!                        └─ the open logical batch: drawn, clipped sums, statistics
//! ```
//!
//! [`DpStep`] is the part that does not depend on the inner optimizer's type, so that code that
//! does not know it (burn-dp-train's data loader) can clip and accumulate.
//!
//! | file            | concern                                                        |
//! |-----------------|----------------------------------------------------------------|
//! | `mod.rs`        | the object, its construction and accessors                     |
//! | `step.rs`       | draw, clip and accumulate (the one copy of the loop body)      |
//! | `finish.rs`     | the DP step proper: noise, account, reduce, scale, inner step  |
//! | `share.rs`      | the noise shares of data-parallel peers                        |
//! | `stats.rs`      | what a step did: reports and (private) statistics              |
//! | `checkpoint.rs` | saving and restoring what the object owns                      |

use std::collections::HashMap;

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_dp_accountant::Epsilon;

use crate::engine::PerSampleConfig;
use crate::error::DpError;
use crate::noise::{NoiseGenerator, NoiseSource};
use crate::privacy::PrivacyState;
use crate::sampling::PoissonSampler;

mod checkpoint;
mod finish;
mod share;
mod stats;
mod step;

pub use checkpoint::DpCheckpointState;
pub use finish::{FlatAllReduce, Reducer, SingleProcess};
pub use share::NoiseShare;
pub use stats::{BatchStats, BatchStatsValues, PrivacySpent, StepReport, StepStats};

use stats::DeviceStepStats;

/// The DP step of one run: owns the inner optimizer `O` (e.g. burn's `Sgd`, `Adam`, `AdamW`
/// adaptors) and the [`DpStep`] (the [`PoissonSampler`], the [`PrivacyState`], the noise stream),
/// and runs [`DpStep::draw`] → [`DpStep::clip_and_accumulate`] per physical batch →
/// [`DpOptimizer::finish`] (see the [module](self) docs). The model is the caller's. The
/// [`DpStep`]'s methods are callable on it directly (`Deref`).
pub struct DpOptimizer<O, B: Backend> {
    inner: O,
    step: DpStep<B>,
}

/// Everything of a [`DpOptimizer`] but its inner optimizer: the sampler, the privacy state, the
/// noise stream and the open logical batch. Reached through the `DpOptimizer` (`Deref`).
pub struct DpStep<B: Backend> {
    per_sample: PerSampleConfig,
    privacy: PrivacyState,
    expected_batch_size: f64,
    noise: NoiseGenerator,
    sampler: PoissonSampler,
    /// The logical batch drawn and not yet stepped on.
    drawn: Option<Drawn>,
    /// Clipped sums of the physical batches accumulated since the last step.
    accumulated: Option<Accumulated<B>>,
    /// The last logical batch stepped on: its statistics, still on the device.
    last_step: Option<LastStep<B>>,
}

impl<O, B: Backend> std::ops::Deref for DpOptimizer<O, B> {
    type Target = DpStep<B>;

    fn deref(&self) -> &DpStep<B> {
        &self.step
    }
}

impl<O, B: Backend> std::ops::DerefMut for DpOptimizer<O, B> {
    fn deref_mut(&mut self) -> &mut DpStep<B> {
        &mut self.step
    }
}

/// A logical batch between `draw` and `finish`.
#[derive(Debug, Clone, Copy)]
struct Drawn {
    /// Its DP step index.
    step: u64,
    /// Examples drawn.
    samples: usize,
    /// Physical batches it is cut into, and those accumulated so far.
    physical_batches: usize,
    accumulated: usize,
}

/// Clipped sums accumulated over the physical batches of one logical batch.
struct Accumulated<B: Backend> {
    sums: HashMap<ParamId, Tensor<B, 1>>,
    sensitivity: f64,
    stats: DeviceStepStats<B>,
}

/// The last logical batch stepped on.
struct LastStep<B: Backend> {
    stats: DeviceStepStats<B>,
    /// `(samples, physical batches)` when it was drawn by [`DpOptimizer::draw`].
    drawn: Option<(usize, usize)>,
}

impl<O, B: Backend> DpOptimizer<O, B> {
    /// The DP step around `inner` that draws its logical batches with `sampler`.
    ///
    /// The sampling rate has one source: the sampler's q must be the q `privacy` accounts for
    /// ([`DpError::SamplingMismatch`] otherwise), and the noisy sum is divided by the sampler's
    /// expected logical batch size `q·N` ([`PoissonSampler::expected_batch_size`]).
    pub fn new(
        inner: O,
        per_sample: PerSampleConfig,
        privacy: PrivacyState,
        sampler: PoissonSampler,
        noise: NoiseSource,
    ) -> Result<Self, DpError> {
        per_sample.clipping.validate()?;
        sampler.check_sample_rate(privacy.sample_rate)?;
        let expected_batch_size = sampler.expected_batch_size();
        Ok(DpOptimizer {
            inner,
            step: DpStep {
                per_sample,
                privacy,
                expected_batch_size,
                noise: NoiseGenerator::new(noise)?,
                sampler,
                drawn: None,
                accumulated: None,
                last_step: None,
            },
        })
    }

    /// The wrapped optimizer (for its record, when checkpoints are written by other means than
    /// [`DpOptimizer::save_checkpoint`], e.g. burn-train's `Learner` through `burn-dp-train`).
    pub fn inner(&self) -> &O {
        &self.inner
    }

    /// Replaces the wrapped optimizer (to restore its state from a record). σ, q, δ, the
    /// accountant, the noise stream, the sampler and an open logical batch are unchanged.
    pub fn set_inner(&mut self, inner: O) {
        self.inner = inner;
    }
}

impl<B: Backend> DpStep<B> {
    /// The privacy state (σ, q, δ, history).
    pub fn privacy(&self) -> &PrivacyState {
        &self.privacy
    }

    /// ε spent so far at the run's δ.
    pub fn epsilon(&self) -> Result<Epsilon, DpError> {
        self.privacy.epsilon()
    }

    /// The privacy spent so far: steps accounted, ε at the run's δ, σ.
    pub fn privacy_spent(&self) -> Result<PrivacySpent, DpError> {
        Ok(PrivacySpent {
            steps: self.privacy.steps(),
            epsilon: self.epsilon()?,
            noise_multiplier: self.privacy.noise_multiplier,
        })
    }

    /// The sampler the logical batches are drawn with.
    pub fn sampler(&self) -> &PoissonSampler {
        &self.sampler
    }

    /// The per-sample settings: clipping function and style, norm mode.
    pub fn per_sample_config(&self) -> &PerSampleConfig {
        &self.per_sample
    }

    /// Whether the noise comes from a fixed seed (not private against the seed holder).
    pub fn is_fixed_seed(&self) -> bool {
        self.noise.is_fixed_seed()
    }

    /// The noise step the next DP step will draw (the noise stream's position).
    pub fn next_noise_step(&self) -> u64 {
        self.noise.next_step()
    }
}
