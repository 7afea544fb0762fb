//! The accountant state: the history of (σ, q, steps) entries of the Poisson-subsampled
//! Gaussian mechanism, plus input validation shared by every accountant.

use serde::{Deserialize, Serialize};

use crate::error::{AccountantError, Result};

/// `steps` consecutive applications of the Poisson-subsampled Gaussian mechanism with noise
/// multiplier `noise_multiplier` (σ, noise std / clipping norm) and sampling rate `sample_rate`
/// (q, the probability that each example is in a batch).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Noise multiplier σ > 0.
    pub noise_multiplier: f64,
    /// Poisson sampling rate q ∈ (0, 1].
    pub sample_rate: f64,
    /// Number of steps ≥ 1.
    pub steps: u64,
}

impl HistoryEntry {
    /// A validated entry.
    pub fn new(noise_multiplier: f64, sample_rate: f64, steps: u64) -> Result<Self> {
        let entry = Self {
            noise_multiplier,
            sample_rate,
            steps,
        };
        entry.validate()?;
        Ok(entry)
    }

    /// Checks σ > 0 (finite), q ∈ (0, 1] and steps ≥ 1.
    pub fn validate(&self) -> Result<()> {
        validate_noise_multiplier(self.noise_multiplier)?;
        validate_sample_rate(self.sample_rate)?;
        if self.steps == 0 {
            return Err(AccountantError::ZeroSteps);
        }
        Ok(())
    }
}

/// The privacy-relevant history of a training run, in order. Serialises (serde) as a JSON
/// array of entries, so it can be stored in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct History {
    entries: Vec<HistoryEntry>,
}

impl History {
    /// An empty history (nothing spent yet).
    pub fn new() -> Self {
        Self::default()
    }

    /// A history from entries, each validated.
    pub fn from_entries(entries: impl IntoIterator<Item = HistoryEntry>) -> Result<Self> {
        let mut history = Self::new();
        for entry in entries {
            history.push(entry)?;
        }
        Ok(history)
    }

    /// Appends `entry` after validating it; merges it into the last entry when σ and q are
    /// unchanged (as Opacus's PRV accountant does), so a long run stays one entry.
    pub fn push(&mut self, entry: HistoryEntry) -> Result<()> {
        entry.validate()?;
        match self.entries.last_mut() {
            Some(last)
                if last.noise_multiplier == entry.noise_multiplier
                    && last.sample_rate == entry.sample_rate =>
            {
                last.steps = last.steps.saturating_add(entry.steps);
            }
            _ => self.entries.push(entry),
        }
        Ok(())
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[HistoryEntry] {
        &self.entries
    }

    /// Whether no step was recorded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total number of steps over all entries.
    pub fn total_steps(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| e.steps)
            .fold(0, u64::saturating_add)
    }

    /// Re-validates every entry (useful after deserialising a checkpoint).
    pub fn validate(&self) -> Result<()> {
        self.entries.iter().try_for_each(HistoryEntry::validate)
    }
}

/// σ must be finite and > 0.
pub fn validate_noise_multiplier(sigma: f64) -> Result<()> {
    if sigma.is_finite() && sigma > 0.0 {
        Ok(())
    } else {
        Err(AccountantError::InvalidNoiseMultiplier(sigma))
    }
}

/// q must be in (0, 1].
pub fn validate_sample_rate(q: f64) -> Result<()> {
    if q > 0.0 && q <= 1.0 {
        Ok(())
    } else {
        Err(AccountantError::InvalidSampleRate(q))
    }
}

/// δ must be in (0, 1).
pub fn validate_delta(delta: f64) -> Result<()> {
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(AccountantError::InvalidDelta(delta))
    }
}
