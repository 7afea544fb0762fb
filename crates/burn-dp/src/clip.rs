//! Clipping functions and styles.

use burn::module::ParamId;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::DpError;

/// How a per-sample gradient of norm `‖g_i‖` is scaled before summation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum ClippingFn {
    /// Automatic clipping (Bu et al. 2023, "Automatic clipping: differentially private deep
    /// learning made easier and stronger", eq. 3): `c_i = 1 / (‖g_i‖ + γ)`; sensitivity `R = 1`.
    Automatic {
        /// Stability constant γ > 0 (fastDP uses 0.01).
        gamma: f64,
    },
    /// Abadi et al. 2016 ("Deep learning with differential privacy", Algorithm 1):
    /// `c_i = min(1, C / (‖g_i‖ + 1e-6))`; sensitivity `R = C`.
    Abadi {
        /// Clipping threshold C > 0.
        max_norm: f64,
    },
}

impl ClippingFn {
    /// Automatic clipping with fastDP's γ = 0.01.
    pub const AUTOMATIC: ClippingFn = ClippingFn::Automatic { gamma: 0.01 };

    /// Checks the constants.
    pub fn validate(&self) -> Result<(), DpError> {
        match *self {
            ClippingFn::Automatic { gamma } if !(gamma > 0.0 && gamma.is_finite()) => {
                Err(DpError::InvalidClipping(format!(
                    "automatic clipping needs gamma > 0, got {gamma}"
                )))
            }
            ClippingFn::Abadi { max_norm } if !(max_norm > 0.0 && max_norm.is_finite()) => {
                Err(DpError::InvalidClipping(format!(
                    "Abadi clipping needs max_norm > 0, got {max_norm}"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The per-sample factors `c_i` for norms `[B]`.
    ///
    /// # Shapes
    /// `norms`: `[B]` → `[B]`.
    pub fn factors<B: Backend>(&self, norms: Tensor<B, 1>) -> Tensor<B, 1> {
        match *self {
            ClippingFn::Automatic { gamma } => norms.add_scalar(gamma).recip(),
            ClippingFn::Abadi { max_norm } => norms
                .add_scalar(1e-6)
                .recip()
                .mul_scalar(max_norm)
                .clamp_max(1.0),
        }
    }

    /// The bound R on each sample's clipped contribution (the L2 sensitivity of the sum).
    pub fn sensitivity(&self) -> f64 {
        match *self {
            ClippingFn::Automatic { .. } => 1.0,
            ClippingFn::Abadi { max_norm } => max_norm,
        }
    }
}

/// Which parameters a selection names.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamSelector {
    /// Every parameter.
    All,
    /// Parameters with these ids.
    Ids(Vec<ParamId>),
    /// Parameters whose module path (e.g. `blocks.0.attn.query.weight`) starts with this prefix.
    PathPrefix(String),
    /// Parameters whose module path ends with this suffix (e.g. `.bias`).
    PathSuffix(String),
    /// The parameter with exactly this module path.
    PathExact(String),
    /// Any of these selectors.
    AnyOf(Vec<ParamSelector>),
}

impl ParamSelector {
    /// Whether the parameter `(id, path)` is selected.
    pub fn matches(&self, id: &ParamId, path: &str) -> bool {
        match self {
            ParamSelector::All => true,
            ParamSelector::Ids(ids) => ids.contains(id),
            ParamSelector::PathPrefix(p) => path.starts_with(p.as_str()),
            ParamSelector::PathSuffix(s) => path.ends_with(s.as_str()),
            ParamSelector::PathExact(p) => path == p,
            ParamSelector::AnyOf(all) => all.iter().any(|s| s.matches(id, path)),
        }
    }
}

/// A group of parameters clipped together with its own clipping function.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    /// A name for reports.
    pub name: String,
    /// Which parameters belong to it (the first group that matches wins).
    pub selector: ParamSelector,
    /// Its clipping function and threshold.
    pub clipping: ClippingFn,
}

/// How parameters are grouped for clipping.
#[derive(Debug, Clone, PartialEq)]
pub enum ClippingStyle {
    /// One norm over all trainable parameters.
    Flat,
    /// One norm per layer (parameters sharing a parent module, e.g. a Linear's weight and
    /// bias), each clipped with the same function; sensitivity `R·√layers`.
    PerLayer,
    /// Explicit groups, each with its own function; every trainable parameter must fall in one.
    Groups(Vec<ParamGroup>),
}

/// Clipping: a function and a style.
#[derive(Debug, Clone, PartialEq)]
pub struct Clipping {
    /// Function for [`ClippingStyle::Flat`] and [`ClippingStyle::PerLayer`].
    pub function: ClippingFn,
    /// Grouping.
    pub style: ClippingStyle,
}

impl Clipping {
    /// Flat clipping with `function`.
    pub fn flat(function: ClippingFn) -> Self {
        Clipping {
            function,
            style: ClippingStyle::Flat,
        }
    }

    /// Checks every function in the configuration.
    pub fn validate(&self) -> Result<(), DpError> {
        self.function.validate()?;
        if let ClippingStyle::Groups(groups) = &self.style {
            if groups.is_empty() {
                return Err(DpError::InvalidClipping("no clipping groups given".into()));
            }
            for g in groups {
                g.clipping.validate()?;
            }
        }
        Ok(())
    }
}
