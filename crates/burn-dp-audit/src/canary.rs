//! Gradient canaries on the real pipeline (white box).
//!
//! The model is a bias-free `Linear(d → 1)` whose per-sample loss is its output, so a sample's
//! gradient with respect to the weight *is* its input. Canary `j` is the input `10·R·e_j` (R the
//! clipping sensitivity): after clipping it contributes `≈ R·e_j` to the sum, whatever else is in
//! the batch. Background examples live in the last [`BACKGROUND_DIM`] coordinates, orthogonal to
//! every canary. The noise is i.i.d. per coordinate, so the projections of the released update on
//! `e_1 … e_m` are `m` independent observations of the same two-world experiment: one DP step of
//! the real pipeline (engine, clipping, noise, scaling, SGD; Poisson sampling when `q < 1`)
//! audits `m` canaries at once (Nasr et al. 2023 use one Dirac canary per run; orthogonal
//! canaries with independent inclusion keep every observation exact and independent).
//!
//! The observer sees every intermediate model and scores canary `j` by
//! `Σ_t (θ_{t−1} − θ_t)_j · E[|batch|] / (lr · R)`: about `steps·c` with the canary (`c` the
//! clipped fraction, ≈ 1), 0 without, plus `N(0, steps·σ²)` noise.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::SgdConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burn_dp_accountant::{Accountant, AccountantKind, Epsilon};
use rand::Rng;

use burn_dp::{
    mark_batch, ClippingFn, DpAutodiff, DpError, NoiseBackend, NoiseSource, PerSampleConfig,
    PrivacyState, PrivateSetup, PrivateTrainer,
};

use crate::scores::Scores;

/// Coordinates reserved for the background examples.
pub const BACKGROUND_DIM: usize = 8;
/// A canary's input norm in units of the clipping sensitivity R (so clipping always bites).
pub const CANARY_SCALE: f64 = 10.0;
/// Learning rate of the audited SGD steps (any value: the observer divides it out).
pub const AUDIT_LR: f64 = 1.0;

/// A bias-free `Linear(d → 1)` whose per-sample loss is its output: each sample's gradient with
/// respect to the weight is its input.
#[derive(Module, Debug)]
pub struct LinearProbe<B: Backend> {
    /// The weight `[d, 1]`.
    pub linear: Linear<B>,
}

impl<B: Backend> LinearProbe<B> {
    /// A probe over `inputs` coordinates.
    pub fn new(inputs: usize, device: &B::Device) -> Self {
        LinearProbe {
            linear: LinearConfig::new(inputs, 1).with_bias(false).init(device),
        }
    }

    /// The per-sample losses (the outputs).
    ///
    /// # Shapes
    /// `x`: `[B, d]` → `[B]`.
    pub fn losses(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        let b = x.dims()[0];
        self.linear.forward(x).reshape([b])
    }

    /// The weight, flattened (`d` values).
    pub fn weights(&self) -> Vec<f32> {
        self.linear
            .weight
            .val()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default()
    }
}

/// One audited pipeline: what is trained, how, and with how many canaries.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientCanaryConfig {
    /// Clipping function (flat clipping).
    pub clipping: ClippingFn,
    /// Noise multiplier σ of the DP optimizer.
    pub noise_multiplier: f64,
    /// Poisson sampling rate q (1: every example in every step).
    pub sample_rate: f64,
    /// DP steps per run (the observer sees every intermediate model).
    pub steps: u64,
    /// δ of the claim and of the bounds.
    pub delta: f64,
    /// Accountant of the claimed ε.
    pub accountant: AccountantKind,
    /// Orthogonal canaries per run, each included with probability ½.
    pub canaries: usize,
    /// Background examples (always included in the data set).
    pub background: usize,
    /// Rows per physical batch.
    pub physical_batch_size: usize,
}

/// What one run of the pipeline released, as the observer scores it.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryRun {
    /// Whether each canary was in the data set.
    pub membership: Vec<bool>,
    /// Each canary's score (higher: more likely in).
    pub scores: Vec<f64>,
}

impl GradientCanaryConfig {
    /// The trade-off curve of the audited mechanism: Gaussian without subsampling (q = 1).
    pub fn trade_off(&self) -> crate::TradeOff {
        if self.sample_rate >= 1.0 {
            crate::TradeOff::Gaussian
        } else {
            crate::TradeOff::Unknown
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), DpError> {
        self.clipping.validate()?;
        burn_dp_accountant::history::validate_noise_multiplier(self.noise_multiplier)?;
        burn_dp_accountant::history::validate_sample_rate(self.sample_rate)?;
        burn_dp_accountant::history::validate_delta(self.delta)?;
        if self.steps == 0 || self.canaries == 0 || self.background == 0 {
            return Err(DpError::InvalidConfig(format!(
                "an audit needs steps, canaries and background examples > 0, got {}, {}, {}",
                self.steps, self.canaries, self.background
            )));
        }
        if self.physical_batch_size == 0 {
            return Err(DpError::InvalidConfig(
                "physical batch size must be positive".into(),
            ));
        }
        Ok(())
    }

    /// Input dimension d of the probe: one coordinate per canary plus the background's.
    pub fn dim(&self) -> usize {
        self.canaries + BACKGROUND_DIM
    }

    /// The clipping sensitivity R.
    pub fn sensitivity(&self) -> f64 {
        self.clipping.sensitivity()
    }

    /// What the DP step divides by: `q · (background + canaries)`, a public constant that does
    /// not depend on which canaries are in.
    pub fn expected_batch_size(&self) -> f64 {
        self.sample_rate * (self.background + self.canaries) as f64
    }

    /// The ε the accountant claims for one run (`steps` steps at σ, q) at δ.
    pub fn claimed_epsilon(&self) -> Result<Epsilon, DpError> {
        self.validate()?;
        let mut state = self.privacy_state()?;
        state
            .accountant
            .step(self.noise_multiplier, self.sample_rate, self.steps)?;
        state.epsilon()
    }

    /// The privacy state of the DP optimizer of one run.
    pub fn privacy_state(&self) -> Result<PrivacyState, DpError> {
        PrivacyState::with_noise_multiplier(
            self.noise_multiplier,
            self.sample_rate,
            self.delta,
            self.accountant,
        )
    }

    /// Canary `j`'s input: `CANARY_SCALE · R · e_j` (`d` values).
    pub fn canary_input(&self, j: usize) -> Vec<f32> {
        let mut x = vec![0.0; self.dim()];
        x[j] = (CANARY_SCALE * self.sensitivity()) as f32;
        x
    }

    /// Background example `i`'s input (public, deterministic): zero on the canary coordinates,
    /// norms spread over `[0.25 R, 4 R]` so that Abadi clipping bites on some and not others.
    pub fn background_input(&self, i: usize) -> Vec<f32> {
        let mut x = vec![0.0; self.dim()];
        let mut norm_sq = 0.0f64;
        for (k, v) in x[self.canaries..].iter_mut().enumerate() {
            let u = ((i * BACKGROUND_DIM + k) as f64 * 0.618_034 + 0.1).fract() - 0.5;
            *v = u as f32;
            norm_sq += u * u;
        }
        let target = self.sensitivity() * 0.25 * 16f64.powf((i as f64 * 0.377).fract());
        let scale = target / norm_sq.sqrt().max(1e-12);
        for v in &mut x[self.canaries..] {
            *v = (*v as f64 * scale) as f32;
        }
        x
    }

    /// The data set of a run: background examples, then the canaries that are in.
    pub fn dataset(&self, membership: &[bool]) -> Vec<Vec<f32>> {
        (0..self.background)
            .map(|i| self.background_input(i))
            .chain(
                membership
                    .iter()
                    .enumerate()
                    .filter(|(_, &m)| m)
                    .map(|(j, _)| self.canary_input(j)),
            )
            .collect()
    }

    /// The rows `indices` of `data` as a marked batch `[rows, d]`.
    pub fn inputs<B: Backend>(
        &self,
        data: &[Vec<f32>],
        indices: &[usize],
        device: &B::Device,
    ) -> Tensor<DpAutodiff<B>, 2> {
        let flat: Vec<f32> = indices
            .iter()
            .flat_map(|&i| data[i].iter().copied())
            .collect();
        mark_batch(Tensor::from_data(
            TensorData::new(flat, [indices.len(), self.dim()]),
            device,
        ))
    }

    /// The observer's scores of one step: `(θ_before − θ_after)_j · E[|batch|] / (lr · R)` for
    /// each canary j.
    pub fn score_step(&self, before: &[f32], after: &[f32]) -> Vec<f64> {
        let scale = self.expected_batch_size() / (AUDIT_LR * self.sensitivity());
        (0..self.canaries)
            .map(|j| (before[j] as f64 - after[j] as f64) * scale)
            .collect()
    }

    /// Draws which canaries are in (each with probability ½, from the OS-seeded generator).
    pub fn draw_membership(&self) -> Vec<bool> {
        let mut rng = rand::rng();
        (0..self.canaries).map(|_| rng.random_bool(0.5)).collect()
    }

    /// One run of the real pipeline: Poisson sampling over the data set, per-sample clipping by
    /// the engine, the DP optimizer's noise and SGD step, `steps` times; the observer scores
    /// every step. Noise and sampling are OS-seeded.
    pub fn run<B: NoiseBackend>(
        &self,
        membership: &[bool],
        device: &B::Device,
    ) -> Result<CanaryRun, DpError> {
        self.validate()?;
        if membership.len() != self.canaries {
            return Err(DpError::InvalidConfig(format!(
                "membership has {} entries for {} canaries",
                membership.len(),
                self.canaries
            )));
        }
        // Every canary has a row; an absent one is weighted 0, so it contributes exactly nothing
        // to the clipped sum (as if it were not in the data set) while the data set size, and so
        // the public divisor q·N, is the same in both worlds.
        let data = self.dataset(&vec![true; self.canaries]);
        let weights: Vec<f32> = (0..data.len())
            .map(|i| match i.checked_sub(self.background) {
                Some(j) if !membership[j] => 0.0,
                _ => 1.0,
            })
            .collect();
        let mut trainer = PrivateTrainer::new(
            LinearProbe::<DpAutodiff<B>>::new(self.dim(), device),
            SgdConfig::new().init::<DpAutodiff<B>, LinearProbe<DpAutodiff<B>>>(),
            PrivateSetup {
                per_sample: PerSampleConfig::new(self.clipping),
                privacy: self.privacy_state()?,
                dataset_size: data.len(),
                physical_batch_size: self.physical_batch_size,
                noise: NoiseSource::Os,
            },
        )?;
        let mut scores = vec![0.0; self.canaries];
        // ANCHOR: audited_step
        for _ in 0..self.steps {
            let before = trainer.model().weights();
            trainer.step(AUDIT_LR, |model, indices| {
                let x = self.inputs::<B>(&data, indices, device);
                let w: Vec<f32> = indices.iter().map(|&i| weights[i]).collect();
                let w = Tensor::from_data(TensorData::new(w, [indices.len()]), device);
                model.losses(x) * w
            })?;
            for (s, d) in scores
                .iter_mut()
                .zip(self.score_step(&before, &trainer.model().weights()))
            {
                *s += d;
            }
        }
        // ANCHOR_END: audited_step
        Ok(CanaryRun {
            membership: membership.to_vec(),
            scores,
        })
    }
}

impl CanaryRun {
    /// The scores split by world.
    pub fn into_scores(self) -> Scores {
        let mut out = Scores::default();
        for (m, s) in self.membership.into_iter().zip(self.scores) {
            if m {
                out.with.push(s);
            } else {
                out.without.push(s);
            }
        }
        out
    }
}

/// Runs the pipeline `runs` times with fresh memberships and collects every canary's score,
/// calling `progress` after each run. Runs on the calling thread: burn-autodiff 0.21 can drop
/// another thread's graph during a concurrent backward pass (tracel-ai/burn#5573), so parallel
/// audits use processes (the `burn-dp audit --jobs` command does).
pub fn collect_scores<B: NoiseBackend>(
    config: &GradientCanaryConfig,
    runs: usize,
    device: &B::Device,
    mut progress: impl FnMut(usize),
) -> Result<Scores, DpError> {
    let mut scores = Scores::default();
    for r in 0..runs {
        let membership = config.draw_membership();
        scores.extend(config.run::<B>(&membership, device)?.into_scores());
        progress(r + 1);
    }
    Ok(scores)
}
