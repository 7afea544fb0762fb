//! Auditing with one training run (Steinke, Nasr and Jagielski 2023): `m` canaries, each in the
//! training set with probability ½ independently; after one run the auditor guesses "in" for the
//! `k₊` highest-scoring canaries and "out" for the `k₋` lowest, abstains on the rest, and the
//! number of correct guesses becomes an ε lower bound by their Theorem 5.2
//! ([`crate::one_run_epsilon_lower_bound`]).
//!
//! The black-box pipeline here trains a small classifier (an MLP) with the real DP pipeline on a
//! synthetic, public data set (Gaussian clusters); the canaries are extra examples with random
//! labels (input-space canaries, as in Steinke et al. 2023, §6), scored by minus their loss.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::optim::SgdConfig;
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_dp_accountant::{Accountant, AccountantKind, Epsilon};
use rand::Rng;
use serde::{Deserialize, Serialize};

use burn_dp::{
    mark_batch, ClippingFn, DpAutodiff, DpError, NoiseBackend, NoiseSource, PerSampleConfig,
    PrivacyState, PrivateSetup, PrivateTrainer,
};

use crate::stats::one_run_epsilon_lower_bound;

/// The guesses of a one-run audit and the bound they give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OneRunBound {
    /// Canaries m.
    pub canaries: u64,
    /// Guesses made r = k₊ + k₋.
    pub guesses: u64,
    /// Correct guesses v.
    pub correct: u64,
    /// The ε lower bound at δ with the given confidence.
    pub epsilon_lower_bound: f64,
}

/// Guesses "in" for the `k_in` highest scores and "out" for the `k_out` lowest (ties broken by
/// index), counts the correct ones, and converts them into an ε lower bound.
pub fn one_run_bound(
    scores: &[f64],
    membership: &[bool],
    k_in: usize,
    k_out: usize,
    delta: f64,
    confidence: f64,
) -> Result<OneRunBound, DpError> {
    let m = scores.len();
    if membership.len() != m || k_in + k_out > m {
        return Err(DpError::InvalidConfig(format!(
            "one-run audit: {m} scores, {} memberships, {k_in} + {k_out} guesses",
            membership.len()
        )));
    }
    if let Some(s) = scores.iter().find(|s| !s.is_finite()) {
        return Err(DpError::InvalidConfig(format!(
            "a score is not finite: {s}"
        )));
    }
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let correct = order[..k_in].iter().filter(|&&i| membership[i]).count()
        + order[m - k_out..]
            .iter()
            .filter(|&&i| !membership[i])
            .count();
    let (m, r, v) = (m as u64, (k_in + k_out) as u64, correct as u64);
    Ok(OneRunBound {
        canaries: m,
        guesses: r,
        correct: v,
        epsilon_lower_bound: one_run_epsilon_lower_bound(m, r, v, delta, confidence)?,
    })
}

/// A small classifier: `Linear(f → h) → ReLU → Linear(h → c)`.
#[derive(Module, Debug)]
pub struct SmallClassifier<B: Backend> {
    hidden: Linear<B>,
    out: Linear<B>,
}

impl<B: Backend> SmallClassifier<B> {
    /// A classifier for `features` inputs, `hidden` units and `classes` outputs.
    pub fn new(features: usize, hidden: usize, classes: usize, device: &B::Device) -> Self {
        SmallClassifier {
            hidden: LinearConfig::new(features, hidden).init(device),
            out: LinearConfig::new(hidden, classes).init(device),
        }
    }

    /// Cross-entropy per sample.
    ///
    /// # Shapes
    /// `x`: `[B, f]`, `y`: `[B]` → `[B]`.
    pub fn losses(&self, x: Tensor<B, 2>, y: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let b = y.dims()[0];
        log_softmax(self.out.forward(relu(self.hidden.forward(x))), 1)
            .gather(1, y.reshape([b, 1]))
            .reshape([b])
            .neg()
    }
}

/// The black-box one-run audit: settings of the training run and of the guesses.
#[derive(Debug, Clone, PartialEq)]
pub struct BlackBoxConfig {
    /// Clipping function (flat).
    pub clipping: ClippingFn,
    /// Noise multiplier σ.
    pub noise_multiplier: f64,
    /// Poisson sampling rate q.
    pub sample_rate: f64,
    /// DP steps.
    pub steps: u64,
    /// δ.
    pub delta: f64,
    /// Accountant of the claimed ε.
    pub accountant: AccountantKind,
    /// Learning rate of SGD.
    pub learning_rate: f64,
    /// Ordinary training examples (synthetic, public).
    pub examples: usize,
    /// Canaries m (random labels), each in with probability ½.
    pub canaries: usize,
    /// "In" guesses k₊ (highest scores).
    pub guesses_in: usize,
    /// "Out" guesses k₋ (lowest scores).
    pub guesses_out: usize,
    /// Rows per physical batch.
    pub physical_batch_size: usize,
}

/// Features and classes of the synthetic task.
const FEATURES: usize = 16;
const CLASSES: usize = 4;
const HIDDEN: usize = 32;

/// One example of the synthetic task: a Gaussian cluster per class (deterministic in `seed`).
fn synthetic_example(seed: u64, label: usize) -> Vec<f32> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..FEATURES)
        .map(|f| {
            let centre = if f % CLASSES == label { 1.5 } else { 0.0 };
            let z: f64 = rng.sample(rand_distr::StandardNormal);
            (centre + z) as f32
        })
        .collect()
}

/// The outcome of the black-box audit.
#[derive(Debug, Clone, PartialEq)]
pub struct BlackBoxOutcome {
    /// Which canaries were in.
    pub membership: Vec<bool>,
    /// Each canary's score (minus its loss after training).
    pub scores: Vec<f64>,
    /// The bound from the guesses.
    pub bound: OneRunBound,
    /// The accountant's ε for the run.
    pub claimed: Epsilon,
}

impl BlackBoxConfig {
    /// The ε the accountant claims for the run.
    pub fn claimed_epsilon(&self) -> Result<Epsilon, DpError> {
        let mut state = PrivacyState::with_noise_multiplier(
            self.noise_multiplier,
            self.sample_rate,
            self.delta,
            self.accountant,
        )?;
        state
            .accountant
            .step(self.noise_multiplier, self.sample_rate, self.steps)?;
        state.epsilon()
    }

    /// Trains once with the real pipeline and audits the canaries (`progress` after each step).
    /// Membership, noise and sampling are OS-seeded; the data are public and fixed.
    pub fn run<B: NoiseBackend>(
        &self,
        device: &B::Device,
        confidence: f64,
        mut progress: impl FnMut(u64),
    ) -> Result<BlackBoxOutcome, DpError> {
        self.clipping.validate()?;
        if self.examples == 0 || self.canaries == 0 || self.steps == 0 {
            return Err(DpError::InvalidConfig(
                "examples, canaries and steps must be positive".into(),
            ));
        }
        let claimed = self.claimed_epsilon()?;
        let mut rng = rand::rng();
        let membership: Vec<bool> = (0..self.canaries).map(|_| rng.random_bool(0.5)).collect();
        // Examples: label i % CLASSES; canaries: fresh inputs with a label that is not theirs.
        let mut xs: Vec<Vec<f32>> = Vec::new();
        let mut ys: Vec<i64> = Vec::new();
        for i in 0..self.examples {
            xs.push(synthetic_example(i as u64, i % CLASSES));
            ys.push((i % CLASSES) as i64);
        }
        let canary = |j: usize| {
            let true_label = j % CLASSES;
            let x = synthetic_example(1_000_000 + j as u64, true_label);
            let y = ((true_label + 1 + j / CLASSES % (CLASSES - 1)) % CLASSES) as i64;
            (x, y)
        };
        // Every canary has a row; an absent one is weighted 0 (it contributes exactly nothing, as
        // if it were not in the data set) and the data set size q·N divides by is public.
        let mut weights = vec![1.0f32; self.examples];
        for (j, &m) in membership.iter().enumerate() {
            let (x, y) = canary(j);
            xs.push(x);
            ys.push(y);
            weights.push(if m { 1.0 } else { 0.0 });
        }
        let tensors = |rows: &[usize], xs: &[Vec<f32>], ys: &[i64]| {
            let flat: Vec<f32> = rows.iter().flat_map(|&i| xs[i].clone()).collect();
            let y: Vec<i64> = rows.iter().map(|&i| ys[i]).collect();
            (
                mark_batch(Tensor::<DpAutodiff<B>, 2>::from_data(
                    TensorData::new(flat, [rows.len(), FEATURES]),
                    device,
                )),
                Tensor::<DpAutodiff<B>, 1, Int>::from_data(
                    TensorData::new(y, [rows.len()]),
                    device,
                ),
            )
        };
        let privacy = PrivacyState::with_noise_multiplier(
            self.noise_multiplier,
            self.sample_rate,
            self.delta,
            self.accountant,
        )?;
        type Dp<B> = DpAutodiff<B>;
        let mut trainer = PrivateTrainer::new(
            SmallClassifier::<Dp<B>>::new(FEATURES, HIDDEN, CLASSES, device),
            SgdConfig::new().init::<Dp<B>, SmallClassifier<Dp<B>>>(),
            PrivateSetup {
                per_sample: PerSampleConfig::new(self.clipping),
                privacy,
                dataset_size: xs.len(),
                physical_batch_size: self.physical_batch_size,
                noise: NoiseSource::Os,
            },
        )?;
        for step in 0..self.steps {
            trainer.step(self.learning_rate, |model, indices| {
                let (x, y) = tensors(indices, &xs, &ys);
                let w: Vec<f32> = indices.iter().map(|&i| weights[i]).collect();
                let w = Tensor::from_data(TensorData::new(w, [indices.len()]), device);
                model.losses(x, y) * w
            })?;
            progress(step + 1);
        }
        let model = trainer.into_model();
        // Score every canary (in or out) by minus its loss under the final model.
        let (cx, cy): (Vec<Vec<f32>>, Vec<i64>) = (0..self.canaries).map(canary).unzip();
        let rows: Vec<usize> = (0..self.canaries).collect();
        let (x, y) = tensors(&rows, &cx, &cy);
        let scores: Vec<f64> = model
            .losses(x, y)
            .neg()
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .map_err(|e| DpError::InvalidConfig(format!("reading scores: {e:?}")))?;
        let bound = one_run_bound(
            &scores,
            &membership,
            self.guesses_in,
            self.guesses_out,
            self.delta,
            confidence,
        )?;
        Ok(BlackBoxOutcome {
            membership,
            scores,
            bound,
            claimed,
        })
    }
}
