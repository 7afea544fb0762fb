//! The train step's output and the privacy metrics the Learner shows: ε spent and σ.
//!
//! A private train step reports only public quantities: the privacy spent after the step (ε at
//! the run's δ, σ, the step count). No loss, norm, sample count or prediction of the private
//! batch reaches a metric, a logger or the dashboard: those are computed from the private data
//! without noise (with a Poisson batch of one example, a batch loss is one person's loss).
//! Measure the model on held-out data with the Learner's validation metrics instead.

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use burn_dp::PrivacySpent;
use burn_train::metric::{
    format_float, Adaptor, ItemLazy, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};

/// What a private train step gives the Learner for its metrics: the privacy spent once the
/// optimizer has taken the step ([`PrivacySpent`], filled by the optimizer; the Learner's metric
/// thread reads it after the step). It is its own synced item: the metrics read the same cell.
#[derive(Debug, Clone)]
pub struct PrivateStepOutput {
    pub(crate) report: Arc<OnceLock<PrivacySpent>>,
}

impl PrivateStepOutput {
    /// The output of a step that failed (no privacy report; the session is stopped).
    pub(crate) fn failed() -> Self {
        PrivateStepOutput {
            report: Arc::new(OnceLock::new()),
        }
    }

    /// The privacy spent after the step: steps, ε at the run's δ, σ (`None` if the step was
    /// refused, or is not taken yet).
    pub fn spent(&self) -> Option<&PrivacySpent> {
        self.report.get()
    }
}

impl ItemLazy for PrivateStepOutput {
    type ItemSync = PrivateStepOutput;

    fn sync(self) -> PrivateStepOutput {
        self
    }
}

impl Adaptor<PrivateStepOutput> for PrivateStepOutput {
    fn adapt(&self) -> PrivateStepOutput {
        self.clone()
    }
}

/// The latest value of a quantity that only grows or stays (ε, σ): an epoch's "running" value
/// is the latest too, not a mean.
#[derive(Debug, Clone)]
struct Latest {
    value: f64,
}

impl Latest {
    fn new() -> Self {
        Latest { value: f64::NAN }
    }

    fn update(&mut self, value: Option<f64>, precision: usize) -> SerializedEntry {
        self.value = value.unwrap_or(f64::NAN);
        let formatted = match value {
            Some(v) => format_float(v, precision),
            None => "refused".to_string(),
        };
        SerializedEntry::new(formatted, NumericEntry::Value(self.value).serialize())
    }
}

/// A quantity of [`PrivacySpent`] that a [`PrivacyMetric`] shows: [`EpsilonSpent`] or
/// [`StepNoiseMultiplier`].
pub trait PrivacyQuantity: std::fmt::Debug + Clone + Send + Sync + 'static {
    /// The metric's name on the dashboard and in the logs.
    const NAME: &'static str;
    /// The metric's description.
    const DESCRIPTION: &'static str;
    /// Whether a larger value is better (more noise: more private).
    const HIGHER_IS_BETTER: bool;
    /// The quantity in a step's report.
    fn of(spent: &PrivacySpent) -> f64;
}

/// ε spent so far at the run's δ: the accountant's value, the same that
/// [`crate::PrivateTraining::epsilon`] returns.
#[derive(Debug, Clone, Copy)]
pub struct EpsilonSpent;

impl PrivacyQuantity for EpsilonSpent {
    const NAME: &'static str = "Epsilon";
    const DESCRIPTION: &'static str = "privacy spent so far: ε at the run's δ (DP accountant)";
    const HIGHER_IS_BETTER: bool = false;
    fn of(spent: &PrivacySpent) -> f64 {
        spent.epsilon.epsilon
    }
}

/// The noise multiplier σ of each DP step (noise std = σ · clipping bound).
#[derive(Debug, Clone, Copy)]
pub struct StepNoiseMultiplier;

impl PrivacyQuantity for StepNoiseMultiplier {
    const NAME: &'static str = "Noise multiplier";
    const DESCRIPTION: &'static str =
        "noise multiplier σ of the DP step (noise std = σ · clipping bound)";
    const HIGHER_IS_BETTER: bool = true;
    fn of(spent: &PrivacySpent) -> f64 {
        spent.noise_multiplier
    }
}

/// The burn-train metric of a privacy quantity `Q` after each DP step, its latest value (an
/// epoch's "running" value is the latest too, not a mean); "refused" when the step was refused.
/// Register it as a *training* metric (`metric_train_numeric`, done by
/// [`crate::PrivateTraining::register`] for [`EpsilonMetric`] and [`NoiseMultiplierMetric`]).
#[derive(Debug, Clone)]
pub struct PrivacyMetric<Q: PrivacyQuantity> {
    name: MetricName,
    latest: Latest,
    quantity: PhantomData<Q>,
}

/// ε spent so far (at the run's δ), after each DP step.
pub type EpsilonMetric = PrivacyMetric<EpsilonSpent>;
/// The noise multiplier σ of each DP step.
pub type NoiseMultiplierMetric = PrivacyMetric<StepNoiseMultiplier>;

impl<Q: PrivacyQuantity> PrivacyMetric<Q> {
    /// The metric's name on the dashboard and in the logs.
    pub const NAME: &'static str = Q::NAME;

    /// A new metric of `Q`.
    pub fn new() -> Self {
        PrivacyMetric {
            name: Arc::new(Q::NAME.to_string()),
            latest: Latest::new(),
            quantity: PhantomData,
        }
    }
}

impl<Q: PrivacyQuantity> Default for PrivacyMetric<Q> {
    fn default() -> Self {
        Self::new()
    }
}

impl<Q: PrivacyQuantity> Metric for PrivacyMetric<Q> {
    type Input = PrivateStepOutput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn description(&self) -> Option<String> {
        Some(Q::DESCRIPTION.into())
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: Q::HIGHER_IS_BETTER,
        }
        .into()
    }

    fn update(&mut self, item: &PrivateStepOutput, _: &MetricMetadata) -> SerializedEntry {
        self.latest.update(item.spent().map(Q::of), 4)
    }

    fn clear(&mut self) {}
}

impl<Q: PrivacyQuantity> Numeric for PrivacyMetric<Q> {
    fn value(&self) -> NumericEntry {
        NumericEntry::Value(self.latest.value)
    }

    fn running_value(&self) -> NumericEntry {
        NumericEntry::Value(self.latest.value)
    }
}
