//! LoRA adapters (Hu et al. 2021, "LoRA: Low-rank adaptation of large language models",
//! eq. 3: `h = W₀x + (α/r)·B A x`) for the linear layers of a model, selected by module path.
//!
//! A [`LoraLinear`] is a linear layer (the base weight and bias, torch names `….weight`,
//! `….bias`) that may carry an adapter: `lora_a` (`in → r`, Kaiming-uniform as in PEFT) and
//! `lora_b` (`r → out`, zeros, so a fresh adapter leaves the model unchanged), both bias-free
//! burn [`Linear`]s. Their per-sample gradients come from burn-dp's linear rule like any other
//! `Linear`'s: exact, in one backward pass, ghost norm or instantiation chosen by cost.
//!
//! DP-LoRA trains only the adapters: `burn_dp::freeze(model, &adapters_policy(false))`
//! ([`adapters_policy`]`(true)` trains the biases too). [`adapters`] saves and loads the adapters on their own and merges them into
//! the base weights for export.

pub mod adapters;

use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn_dp::{FreezePolicy, ParamSelector};
use serde::{Deserialize, Serialize};

/// The torch-name suffixes of adapter parameters (`model.layers.0.self_attn.q_proj.lora_a.weight`).
pub const ADAPTER_SUFFIXES: [&str; 2] = [".lora_a.weight", ".lora_b.weight"];

/// Whether the parameter named `name` (torch name or burn module path) belongs to an adapter.
pub fn is_adapter_param(name: &str) -> bool {
    ADAPTER_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// The freezing policy of LoRA fine-tuning: the adapters train (and, with `with_biases`, every
/// bias, as `FreezePolicy::BiasOnly` selects them), everything else is frozen. For
/// `burn_dp::freeze`, which reports what trains and refuses a model without adapters.
pub fn adapters_policy(with_biases: bool) -> FreezePolicy {
    let mut selectors: Vec<ParamSelector> = ADAPTER_SUFFIXES
        .iter()
        .map(|s| ParamSelector::PathSuffix(s.to_string()))
        .collect();
    if with_biases {
        selectors.push(FreezePolicy::BiasOnly.selector());
    }
    FreezePolicy::Select(ParamSelector::AnyOf(selectors))
}

/// Which linear layers get an adapter, of what rank and scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r` of the update `B A`.
    pub rank: usize,
    /// `α`: the update is scaled by `α / r` (PEFT's `lora_alpha`).
    pub alpha: f64,
    /// Module paths of the layers to adapt. A target matches a layer whose path equals it or
    /// ends with `.` + it: `q_proj` adapts every layer's query projection (as PEFT's
    /// `target_modules`), `model.layers.0.self_attn.q_proj` only the first.
    pub targets: Vec<String>,
}

impl LoraConfig {
    /// Rank `rank`, `α = alpha`, adapting the layers `targets` (see [`LoraConfig::targets`]).
    pub fn new(rank: usize, alpha: f64, targets: &[&str]) -> Self {
        Self {
            rank,
            alpha,
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }
    }

    /// The scale `α / r` of the update.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    /// Whether the layer at module path `path` is a target.
    pub fn matches(&self, path: &str) -> bool {
        self.targets.iter().any(|t| target_matches(t, path))
    }

    /// A typed error for a rank of 0, a non-finite or zero α, or no target.
    pub fn validate(&self) -> Result<(), LoraError> {
        if self.rank == 0 || !self.alpha.is_finite() || self.alpha == 0.0 {
            return Err(LoraError::Config(format!(
                "rank {} must be positive and alpha {} a finite non-zero number (PEFT's \
                 default is alpha = 2 * rank)",
                self.rank, self.alpha
            )));
        }
        if self.targets.is_empty() {
            return Err(LoraError::Config(
                "no target layer: name the layers to adapt, e.g. [\"q_proj\", \"v_proj\"]".into(),
            ));
        }
        Ok(())
    }
}

fn target_matches(target: &str, path: &str) -> bool {
    path == target
        || path
            .strip_suffix(target)
            .is_some_and(|head| head.ends_with('.'))
}

/// What can go wrong adding adapters to a model.
#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    /// The LoRA configuration is invalid.
    #[error("invalid LoRA configuration: {0}")]
    Config(String),
    /// A target names no adaptable layer of the model.
    #[error(
        "LoRA target `{target}` matches no adaptable layer; adaptable layers end in: {available}"
    )]
    NoMatch {
        /// The target.
        target: String,
        /// The names adaptable layers end with.
        available: String,
    },
    /// A target layer has an adapter already.
    #[error("layer `{path}` has a LoRA adapter already (merge it first with `merge_adapters`)")]
    AlreadyAdapted {
        /// The layer's module path.
        path: String,
    },
}

/// A linear layer that may carry a LoRA adapter: `y = x W + b + (α/r)·(x A) B`.
///
/// With no adapter it is exactly a burn [`Linear`] (same op, same parameter names).
///
/// # Shapes
/// - `weight`: `[in, out]` (burn layout; torch stores `[out, in]`), `bias`: `[out]`
/// - `lora_a`: `Linear` `[in, r]`, `lora_b`: `Linear` `[r, out]`
/// - forward: `[..., in] -> [..., out]`
#[derive(Module, Debug)]
pub struct LoraLinear<B: Backend> {
    /// Base weight `[in, out]`.
    pub weight: Param<Tensor<B, 2>>,
    /// Base bias `[out]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Down projection `A` of the adapter (`in → r`, no bias); set together with `lora_b`.
    pub lora_a: Option<Linear<B>>,
    /// Up projection `B` of the adapter (`r → out`, no bias).
    pub lora_b: Option<Linear<B>>,
    /// `α / r` (0 without an adapter).
    pub lora_scale: f64,
}

impl<B: Backend> From<Linear<B>> for LoraLinear<B> {
    fn from(linear: Linear<B>) -> Self {
        Self {
            weight: linear.weight,
            bias: linear.bias,
            lora_a: None,
            lora_b: None,
            lora_scale: 0.0,
        }
    }
}

impl<B: Backend> LoraLinear<B> {
    /// A layer `d_input → d_output` without adapter, initialised as burn's [`LinearConfig`].
    pub fn new(d_input: usize, d_output: usize, bias: bool, device: &B::Device) -> Self {
        LinearConfig::new(d_input, d_output)
            .with_bias(bias)
            .init(device)
            .into()
    }

    /// `[in, out]` of the base weight (lazy shapes: nothing is allocated).
    pub fn dims(&self) -> [usize; 2] {
        let s = self.weight.lazy_shape();
        [s[0], s[1]]
    }

    /// Whether the layer carries an adapter.
    pub fn has_adapter(&self) -> bool {
        self.lora_a.is_some() && self.lora_b.is_some()
    }

    /// The rank of the adapter, if any.
    pub fn rank(&self) -> Option<usize> {
        self.lora_a.as_ref().map(|a| a.weight.lazy_shape()[1])
    }

    /// The layer with a fresh adapter of rank `rank` and scale `alpha / rank`: `A` Kaiming-uniform
    /// (bound `1/√in`, as PEFT), `B` zeros.
    pub fn with_adapter(mut self, rank: usize, alpha: f64, device: &B::Device) -> Self {
        let [d_in, d_out] = self.dims();
        self.lora_a = Some(LinearConfig::new(d_in, rank).with_bias(false).init(device));
        self.lora_b = Some(
            LinearConfig::new(rank, d_out)
                .with_bias(false)
                .with_initializer(Initializer::Zeros)
                .init(device),
        );
        self.lora_scale = alpha / rank as f64;
        self
    }

    /// The layer without its adapter, the update `(α/r)·A B` added to the base weight (for
    /// export: the result is an ordinary linear layer, as fast as one).
    pub fn merged(self) -> Self {
        let Self {
            weight,
            bias,
            lora_a,
            lora_b,
            lora_scale,
        } = self;
        let weight = match (lora_a, lora_b) {
            (Some(a), Some(b)) => {
                let delta = a.weight.val().matmul(b.weight.val()).mul_scalar(lora_scale);
                weight.map(|w| {
                    let require_grad = w.is_require_grad();
                    (w + delta).detach().set_require_grad(require_grad)
                })
            }
            _ => weight,
        };
        Self {
            weight,
            bias,
            lora_a: None,
            lora_b: None,
            lora_scale: 0.0,
        }
    }

    /// `x W + b`, plus `(α/r)·(x A) B` when the layer carries an adapter.
    ///
    /// # Shapes
    /// `[..., in] -> [..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let base = burn::tensor::module::linear(
            x.clone(),
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
        );
        match (&self.lora_a, &self.lora_b) {
            (Some(a), Some(b)) => base + b.forward(a.forward(x)).mul_scalar(self.lora_scale),
            _ => base,
        }
    }
}
