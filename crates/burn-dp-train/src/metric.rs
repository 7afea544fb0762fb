//! The train step's output and the privacy metrics the Learner shows: ε spent and σ.
//!
//! A private train step reports only public quantities: the privacy spent after the step (ε at
//! the run's δ, σ, the step count). No loss, norm, sample count or prediction of the private
//! batch reaches a metric, a logger or the dashboard: those are computed from the private data
//! without noise (with a Poisson batch of one example, a batch loss is one person's loss).
//! Measure the model on held-out data with the Learner's validation metrics instead.

use std::sync::{Arc, OnceLock};

use burn_train::metric::{
    format_float, Adaptor, ItemLazy, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric,
    NumericAttributes, NumericEntry, SerializedEntry,
};

/// The privacy spent after one DP step, as the accountant reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacySpent {
    /// ε spent so far at `delta`.
    pub epsilon: f64,
    /// δ of the run.
    pub delta: f64,
    /// The noise multiplier σ of the step.
    pub noise_multiplier: f64,
    /// DP steps accounted so far.
    pub steps: u64,
}

/// What a private train step gives the Learner for its metrics: the privacy spent once the
/// optimizer has taken the step (filled by the optimizer; read when the Learner's metric
/// thread syncs the item, which it does after the step).
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
}

/// The synced form of [`PrivateStepOutput`]: the privacy spent after the step, `None` if the
/// step was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivateStepReport {
    /// ε, δ, σ and the step count after the step.
    pub spent: Option<PrivacySpent>,
}

impl ItemLazy for PrivateStepOutput {
    type ItemSync = PrivateStepReport;

    fn sync(self) -> PrivateStepReport {
        PrivateStepReport {
            spent: self.report.get().copied(),
        }
    }
}

impl Adaptor<PrivateStepReport> for PrivateStepReport {
    fn adapt(&self) -> PrivateStepReport {
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

/// ε spent so far (at the run's δ), after each DP step: the accountant's value, the same that
/// [`crate::PrivateTraining::epsilon`] returns. Register it as a *training* metric
/// (`metric_train_numeric`, done by [`crate::PrivateTraining::register`]).
#[derive(Debug, Clone)]
pub struct EpsilonMetric {
    name: MetricName,
    latest: Latest,
}

impl EpsilonMetric {
    /// The metric's name on the dashboard and in the logs.
    pub const NAME: &'static str = "Epsilon";

    /// A new ε metric.
    pub fn new() -> Self {
        EpsilonMetric {
            name: Arc::new(Self::NAME.to_string()),
            latest: Latest::new(),
        }
    }
}

impl Default for EpsilonMetric {
    fn default() -> Self {
        Self::new()
    }
}

impl Metric for EpsilonMetric {
    type Input = PrivateStepReport;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn description(&self) -> Option<String> {
        Some("privacy spent so far: ε at the run's δ (DP accountant)".into())
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }

    fn update(&mut self, item: &PrivateStepReport, _: &MetricMetadata) -> SerializedEntry {
        self.latest.update(item.spent.map(|s| s.epsilon), 4)
    }

    fn clear(&mut self) {}
}

impl Numeric for EpsilonMetric {
    fn value(&self) -> NumericEntry {
        NumericEntry::Value(self.latest.value)
    }

    fn running_value(&self) -> NumericEntry {
        NumericEntry::Value(self.latest.value)
    }
}

/// The noise multiplier σ of each DP step (noise std = σ · clipping bound).
#[derive(Debug, Clone)]
pub struct NoiseMultiplierMetric {
    name: MetricName,
    latest: Latest,
}

impl NoiseMultiplierMetric {
    /// The metric's name on the dashboard and in the logs.
    pub const NAME: &'static str = "Noise multiplier";

    /// A new σ metric.
    pub fn new() -> Self {
        NoiseMultiplierMetric {
            name: Arc::new(Self::NAME.to_string()),
            latest: Latest::new(),
        }
    }
}

impl Default for NoiseMultiplierMetric {
    fn default() -> Self {
        Self::new()
    }
}

impl Metric for NoiseMultiplierMetric {
    type Input = PrivateStepReport;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn description(&self) -> Option<String> {
        Some("noise multiplier σ of the DP step (noise std = σ · clipping bound)".into())
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: true,
        }
        .into()
    }

    fn update(&mut self, item: &PrivateStepReport, _: &MetricMetadata) -> SerializedEntry {
        self.latest
            .update(item.spent.map(|s| s.noise_multiplier), 4)
    }

    fn clear(&mut self) {}
}

impl Numeric for NoiseMultiplierMetric {
    fn value(&self) -> NumericEntry {
        NumericEntry::Value(self.latest.value)
    }

    fn running_value(&self) -> NumericEntry {
        NumericEntry::Value(self.latest.value)
    }
}
