//! Privacy accounting for DP-SGD: the (ε, δ) spent by the Poisson-subsampled Gaussian mechanism,
//! and the noise multiplier σ that reaches a target ε.
//!
//! * [`AccountantKind::Rdp`] — Rényi DP (Mironov, Talwar & Zhang 2019) with Opacus's default
//!   orders and the conversion of Balle et al. (2020), Thm. 21; agrees with Opacus's
//!   `RDPAccountant` to floating point. See [`rdp`].
//! * [`AccountantKind::Prv`] — numerical composition of privacy random variables (Gopi, Lee &
//!   Wutschitz 2021), ε with guaranteed `[lower, upper]` bounds; the tightest. See [`prv`].
//! * [`AccountantKind::Gdp`] — the Gaussian-DP central-limit approximation (Bu et al. 2020);
//!   an approximation, not a bound, so it only reports: calibration refuses it
//!   ([`AccountantError::NotAnUpperBound`]). See [`gdp`].
//!
//! The pure math lives in those modules; the stateful accountants implement [`Accountant`] and
//! keep a serialisable [`History`]. [`PrivacyAccountant`] is the serde-tagged union to store in
//! checkpoints; [`epsilon`] and [`calibrate_noise_multiplier`] are the one-call entry points.
//!
//! ```
//! use burn_dp_accountant::{Accountant, AccountantKind, PrivacyAccountant};
//! let mut acc = PrivacyAccountant::new(AccountantKind::Rdp);
//! acc.step(1.0, 0.01, 1000).unwrap();
//! let eps = acc.epsilon(1e-5).unwrap();
//! assert!((eps.epsilon - 2.1014).abs() < 1e-3);
//! ```

#![warn(missing_docs)]

pub mod calibration;
pub mod error;
mod fft;
pub mod gdp;
pub mod history;
pub mod prv;
pub mod rdp;
pub mod special;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use calibration::{calibrate_noise_multiplier, Calibration, CalibrationOptions, Schedule};
pub use error::{AccountantError, Result};
pub use history::{History, HistoryEntry};
pub use prv::{PrvEpsilon, PrvOptions};

/// Which accounting method to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccountantKind {
    /// Rényi DP ([`rdp`]).
    Rdp,
    /// Privacy random variables ([`prv`]).
    Prv,
    /// Gaussian DP, CLT approximation ([`gdp`]).
    Gdp,
}

impl AccountantKind {
    /// All kinds, in a stable order.
    pub const ALL: [AccountantKind; 3] = [Self::Rdp, Self::Prv, Self::Gdp];

    /// Whether the ε this accountant reports is an upper bound on the true ε (RDP, PRV), rather
    /// than an approximation that can under-report it (GDP). Only upper bounds may calibrate σ
    /// for a target ε or enforce a budget ([`AccountantError::NotAnUpperBound`]).
    pub fn is_upper_bound(self) -> bool {
        match self {
            Self::Rdp | Self::Prv => true,
            Self::Gdp => false,
        }
    }

    /// Lower-case name (`"rdp"`, `"prv"`, `"gdp"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rdp => "rdp",
            Self::Prv => "prv",
            Self::Gdp => "gdp",
        }
    }
}

/// `--accountant rdp|prv|gdp` in command lines built with clap (feature `clap`): the values are
/// [`AccountantKind::as_str`], the help of each says what it guarantees.
#[cfg(feature = "clap")]
impl clap::ValueEnum for AccountantKind {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            Self::Rdp => "Rényi DP (as Opacus's default accountant)",
            Self::Prv => "privacy random variables (tightest, with error bounds)",
            Self::Gdp => {
                "Gaussian DP central-limit approximation (not a guarantee: it never calibrates \
                 sigma or enforces a budget)"
            }
        };
        Some(clap::builder::PossibleValue::new(self.as_str()).help(help))
    }
}

impl fmt::Display for AccountantKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AccountantKind {
    type Err = AccountantError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| AccountantError::InvalidOption(format!("unknown accountant {s:?}")))
    }
}

/// Guaranteed bounds on ε (PRV accountant).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpsilonBounds {
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
}

/// The privacy spent at a given δ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Epsilon {
    /// Accountant that computed it.
    pub accountant: AccountantKind,
    /// The δ it refers to.
    pub delta: f64,
    /// The ε to report: a guarantee for RDP and PRV (PRV: the upper bound, as Opacus), the
    /// approximation for GDP.
    pub epsilon: f64,
    /// Point estimate (PRV); equal to `epsilon` for RDP and GDP.
    pub estimate: f64,
    /// PRV error bounds; `None` for RDP and GDP.
    pub bounds: Option<EpsilonBounds>,
    /// RDP order achieving the minimum; `None` for PRV and GDP (and an empty history).
    pub optimal_order: Option<f64>,
}

impl Epsilon {
    /// `true` when [`Epsilon::epsilon`] is an estimate rather than an upper bound (the GDP
    /// accountant): never publish it as a run's guarantee.
    pub fn is_estimate(&self) -> bool {
        self.accountant == AccountantKind::Gdp
    }
}

/// A stateful privacy accountant: records the mechanism's history and reports ε.
pub trait Accountant {
    /// Which method this is.
    fn kind(&self) -> AccountantKind;
    /// The recorded history.
    fn history(&self) -> &History;
    /// Mutable access to the history (e.g. to restore a checkpoint).
    fn history_mut(&mut self) -> &mut History;
    /// ε spent so far at `delta`.
    fn epsilon(&self, delta: f64) -> Result<Epsilon>;

    /// Records `steps` steps with noise multiplier σ and sampling rate q (validated; σ and q
    /// may change during training).
    fn step(&mut self, noise_multiplier: f64, sample_rate: f64, steps: u64) -> Result<()> {
        self.history_mut()
            .push(HistoryEntry::new(noise_multiplier, sample_rate, steps)?)
    }
}

/// RDP accountant (see [`rdp`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RdpAccountant {
    /// Recorded history.
    pub history: History,
    /// RDP orders α > 1 (default: Opacus's, [`rdp::default_orders`]).
    #[serde(default = "rdp::default_orders")]
    pub orders: Vec<f64>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        Self {
            history: History::new(),
            orders: rdp::default_orders(),
        }
    }
}

impl Accountant for RdpAccountant {
    fn kind(&self) -> AccountantKind {
        AccountantKind::Rdp
    }
    fn history(&self) -> &History {
        &self.history
    }
    fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }
    fn epsilon(&self, delta: f64) -> Result<Epsilon> {
        let (eps, order) = rdp::rdp_epsilon(&self.history, &self.orders, delta)?;
        Ok(Epsilon {
            accountant: AccountantKind::Rdp,
            delta,
            epsilon: eps,
            estimate: eps,
            bounds: None,
            optimal_order: Some(order).filter(|o| o.is_finite()),
        })
    }
}

/// PRV accountant (see [`prv`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PrvAccountant {
    /// Recorded history.
    pub history: History,
    /// Accuracy options.
    #[serde(default)]
    pub options: PrvOptions,
}

impl Accountant for PrvAccountant {
    fn kind(&self) -> AccountantKind {
        AccountantKind::Prv
    }
    fn history(&self) -> &History {
        &self.history
    }
    fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }
    fn epsilon(&self, delta: f64) -> Result<Epsilon> {
        let e = prv::prv_epsilon(&self.history, delta, &self.options)?;
        Ok(Epsilon {
            accountant: AccountantKind::Prv,
            delta,
            epsilon: e.upper,
            estimate: e.estimate,
            bounds: Some(EpsilonBounds {
                lower: e.lower,
                upper: e.upper,
            }),
            optimal_order: None,
        })
    }
}

/// GDP accountant (see [`gdp`]; an approximation).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GdpAccountant {
    /// Recorded history.
    pub history: History,
}

impl Accountant for GdpAccountant {
    fn kind(&self) -> AccountantKind {
        AccountantKind::Gdp
    }
    fn history(&self) -> &History {
        &self.history
    }
    fn history_mut(&mut self) -> &mut History {
        &mut self.history
    }
    fn epsilon(&self, delta: f64) -> Result<Epsilon> {
        let eps = gdp::gdp_epsilon(&self.history, delta)?;
        Ok(Epsilon {
            accountant: AccountantKind::Gdp,
            delta,
            epsilon: eps,
            estimate: eps,
            bounds: None,
            optimal_order: None,
        })
    }
}

/// Any accountant, chosen at run time. Serialises (serde) with a `"kind"` tag, e.g.
/// `{"kind":"prv","history":[{"noise_multiplier":1.0,"sample_rate":0.01,"steps":1000}],
/// "options":{"eps_error":0.01,"delta_error":null}}` — store it in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum PrivacyAccountant {
    /// RDP.
    Rdp(RdpAccountant),
    /// PRV.
    Prv(PrvAccountant),
    /// GDP.
    Gdp(GdpAccountant),
}

impl PrivacyAccountant {
    /// A fresh accountant of `kind` with default options.
    pub fn new(kind: AccountantKind) -> Self {
        Self::with_history(kind, History::new())
    }

    /// An accountant of `kind` with default options over an existing history.
    pub fn with_history(kind: AccountantKind, history: History) -> Self {
        match kind {
            AccountantKind::Rdp => Self::Rdp(RdpAccountant {
                history,
                ..Default::default()
            }),
            AccountantKind::Prv => Self::Prv(PrvAccountant {
                history,
                ..Default::default()
            }),
            AccountantKind::Gdp => Self::Gdp(GdpAccountant { history }),
        }
    }

    fn inner(&self) -> &dyn Accountant {
        match self {
            Self::Rdp(a) => a,
            Self::Prv(a) => a,
            Self::Gdp(a) => a,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn Accountant {
        match self {
            Self::Rdp(a) => a,
            Self::Prv(a) => a,
            Self::Gdp(a) => a,
        }
    }
}

impl Accountant for PrivacyAccountant {
    fn kind(&self) -> AccountantKind {
        self.inner().kind()
    }
    fn history(&self) -> &History {
        self.inner().history()
    }
    fn history_mut(&mut self) -> &mut History {
        self.inner_mut().history_mut()
    }
    fn epsilon(&self, delta: f64) -> Result<Epsilon> {
        self.inner().epsilon(delta)
    }
}

/// ε at `delta` of `history` under accountant `kind` with default options.
pub fn epsilon(kind: AccountantKind, history: &History, delta: f64) -> Result<Epsilon> {
    PrivacyAccountant::with_history(kind, history.clone()).epsilon(delta)
}

/// σ reaching `target_epsilon` at `delta` for `schedule` under accountant `kind`, with Opacus's
/// default search options (see [`calibrate_noise_multiplier`]).
pub fn noise_multiplier(
    kind: AccountantKind,
    target_epsilon: f64,
    delta: f64,
    schedule: Schedule,
) -> Result<Calibration> {
    calibrate_noise_multiplier(
        &PrivacyAccountant::new(kind),
        target_epsilon,
        delta,
        schedule,
        &CalibrationOptions::default(),
    )
}

#[cfg(test)]
mod tests;
