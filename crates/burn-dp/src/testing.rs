//! Test helpers for rule authors: check a per-sample rule against a **batch-of-one oracle**, one
//! ordinary backward pass per sample on plain `Autodiff<B>`, as burn-dp's own rules are tested.
//!
//! A rule is right when, for every sample `i`, the gradient the engine computes for sample `i`
//! from one backward pass over the batch equals the gradient of sample `i`'s loss alone. The
//! helpers here compute both sides and compare them:
//!
//! - [`batch_of_one`]: the oracle's per-sample gradients (one plain backward per sample);
//! - [`engine_outputs`]: the engine's per-sample gradients, norms and clipped sums;
//! - [`check_against`]: both compared, with the norms and clipped sums the oracle's gradients
//!   imply ([`oracle_clip`]);
//! - [`assert_close`], [`relative_error`], [`to_vec`], [`sample`]: the small pieces.
//!
//! `tests/custom-rule` in the burn-dp repository (a `ConvTranspose1d` rule from outside the
//! crate) uses them; so do burn-dp's parity tests. The checks panic with what differs, as test
//! assertions do.

use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};

use crate::clip::ClippingFn;
use crate::engine::{clipped_backward, per_sample_gradients, DpAutodiff, PerSampleConfig};
use crate::paths::{visit_params, ModulePath, ParamVisitor};
use crate::rules::NormMode;

/// Per parameter, in the model's visiting order: the module path and the per-sample gradients,
/// `[B, numel]` row-major (sample `i`'s gradient is row `i`).
pub type PerSampleRows = Vec<(String, Vec<f32>)>;

/// A float tensor's values, row-major.
pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data after convert")
}

/// The relative error in the maximum norm, `max |got − want| / max |want|` (computed in f64; a
/// `want` of zeros counts as scale 1e-12).
///
/// # Panics
/// When the lengths differ.
pub fn relative_error(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(0f64, |m, x| m.max((*x as f64).abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    err / scale.max(1e-12)
}

/// Asserts [`relative_error`]`(got, want) <= tol`; the message names `what` and shows the first
/// values of both.
///
/// # Panics
/// When the lengths differ or the error exceeds `tol`.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let err = relative_error(got, want);
    assert!(
        err <= tol,
        "{what}: relative error {err} > {tol}\n got  {:?}\n want {:?}",
        &got[..got.len().min(8)],
        &want[..want.len().min(8)]
    );
}

/// Sample `i` of a batch, `[1, ...]` from `[B, ...]`; `i = usize::MAX` gives the whole (empty)
/// batch, for [`batch_of_one`]'s `B = 0` call.
///
/// # Shapes
/// - `x`: `[B, ...]` → `[1, ...]` (or `[B, ...]` for `usize::MAX`)
pub fn sample<B: Backend, const D: usize>(x: &Tensor<B, D>, i: usize) -> Tensor<B, D> {
    if i == usize::MAX {
        x.clone()
    } else {
        x.clone().narrow(0, i, 1)
    }
}

/// [`sample`] of an int tensor (token ids, labels).
///
/// # Shapes
/// - `x`: `[B, ...]` → `[1, ...]` (or `[B, ...]` for `usize::MAX`)
pub fn sample_int<B: Backend, const D: usize>(
    x: &Tensor<B, D, Int>,
    i: usize,
) -> Tensor<B, D, Int> {
    if i == usize::MAX {
        x.clone()
    } else {
        x.clone().narrow(0, i, 1)
    }
}

/// Collects the gradients of a model's trainable parameters `(path, values)` (zeros for a
/// parameter the loss does not reach).
struct GradsOf<'a, B: AutodiffBackend> {
    grads: &'a B::Gradients,
    out: PerSampleRows,
}

impl<B: AutodiffBackend> ParamVisitor<B> for GradsOf<'_, B> {
    fn visit<const D: usize>(&mut self, path: &ModulePath, param: &Param<Tensor<B, D>>) {
        let v = param.val();
        if !v.is_require_grad() {
            return;
        }
        let n = v.shape().num_elements();
        let g = v
            .grad(self.grads)
            .map(to_vec)
            .unwrap_or_else(|| vec![0.0; n]);
        self.out.push((path.dotted(), g));
    }
}

/// The oracle: per-sample gradients of `model`'s trainable parameters by one ordinary backward
/// pass per sample, on a plain autodiff backend (`Autodiff<NdArray>`, not `DpAutodiff`).
/// `loss_of(i)` is sample `i`'s loss (`[1]`, e.g. the model applied to [`sample`]`(x, i)`);
/// for `b = 0`, `loss_of(usize::MAX)` is the loss of the whole, empty batch (to learn the
/// parameters).
///
/// # Shapes
/// - `loss_of(i)`: `[1]` (`[0]` for `usize::MAX`)
/// - returns, per parameter: `[b, numel]` row-major
pub fn batch_of_one<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    b: usize,
    loss_of: impl Fn(usize) -> Tensor<B, 1>,
) -> PerSampleRows {
    let gradients = |loss: Tensor<B, 1>| {
        let grads = loss.sum().backward();
        let mut v = GradsOf::<B> {
            grads: &grads,
            out: vec![],
        };
        visit_params(model, &mut v);
        v.out
    };
    if b == 0 {
        return gradients(loss_of(usize::MAX))
            .into_iter()
            .map(|(p, _)| (p, vec![]))
            .collect();
    }
    let mut rows = gradients(loss_of(0));
    for i in 1..b {
        for (row, (_, g)) in rows.iter_mut().zip(gradients(loss_of(i))) {
            row.1.extend(g);
        }
    }
    rows
}

/// What the engine computes for a model and a batch, as plain vectors ([`engine_outputs`]).
#[derive(Debug, Clone)]
pub struct PerSampleOutputs {
    /// Per-sample gradients per parameter ([`per_sample_gradients`]).
    pub grads: PerSampleRows,
    /// Per-sample gradient norms over all trainable parameters, `[B]`.
    pub norms: Vec<f32>,
    /// Clipped sums `Σᵢ cᵢ gᵢ` with automatic clipping (γ = 0.01), per parameter path, sorted.
    pub auto_sums: Vec<(String, Vec<f32>)>,
    /// Clipped sums with Abadi clipping at the bound given to [`engine_outputs`], sorted.
    pub abadi_sums: Vec<(String, Vec<f32>)>,
}

/// Runs the engine on `model` in norm mode `mode`: its per-sample gradients, the norms, and the
/// clipped sums with automatic clipping (γ = 0.01) and Abadi clipping at `abadi_max_norm`.
/// `losses()` builds the per-sample losses from a marked batch (called three times: each
/// backward pass consumes its graph).
///
/// # Shapes
/// - `losses()`: `[B]`
///
/// # Panics
/// When the engine refuses the model (the error is in the message).
pub fn engine_outputs<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(
    model: &M,
    losses: impl Fn() -> Tensor<DpAutodiff<B>, 1>,
    mode: NormMode,
    abadi_max_norm: f64,
) -> PerSampleOutputs {
    let grads = per_sample_gradients(model, losses()).expect("per-sample gradients");
    let grads = grads.into_iter().map(|(_, p, t)| (p, to_vec(t))).collect();
    let sums = |f: ClippingFn| {
        let cfg = PerSampleConfig::new(f).with_norm_mode(mode);
        let out = clipped_backward(&cfg, model, losses()).expect("clipped backward");
        let norms = to_vec(out.norms.clone());
        let mut s: Vec<(String, Vec<f32>)> = out
            .params
            .iter()
            .map(|(id, p)| (p.clone(), to_vec(out.sums[id].clone())))
            .collect();
        s.sort_by(|a, b| a.0.cmp(&b.0));
        (norms, s)
    };
    let (norms, auto_sums) = sums(ClippingFn::Automatic { gamma: 0.01 });
    let (_, abadi_sums) = sums(ClippingFn::Abadi {
        max_norm: abadi_max_norm,
    });
    PerSampleOutputs {
        grads,
        norms,
        auto_sums,
        abadi_sums,
    }
}

/// What clipping explicit per-sample gradients gives: the flat norms `[b]` and the clipped sums
/// with automatic clipping (γ = 0.01) and Abadi clipping at `abadi_max_norm` (each sorted by
/// path), computed in f64. `numels[k]` is the element count of parameter `k` of `grads`.
pub fn oracle_clip(
    grads: &[(String, Vec<f32>)],
    numels: &[usize],
    b: usize,
    abadi_max_norm: f64,
) -> (Vec<f32>, PerSampleRows, PerSampleRows) {
    let mut norms = vec![0f64; b];
    for (_, g) in grads {
        let n = g.len().checked_div(b).unwrap_or(0);
        for (i, norm) in norms.iter_mut().enumerate() {
            *norm += g[i * n..(i + 1) * n]
                .iter()
                .map(|x| (*x as f64).powi(2))
                .sum::<f64>();
        }
    }
    let norms: Vec<f64> = norms.iter().map(|x| x.sqrt()).collect();
    let weighted = |c: &dyn Fn(f64) -> f64| {
        let mut out: PerSampleRows = grads
            .iter()
            .zip(numels)
            .map(|((p, g), &n)| {
                let mut s = vec![0f64; n];
                for (i, norm) in norms.iter().enumerate() {
                    for (j, sj) in s.iter_mut().enumerate() {
                        *sj += g[i * n + j] as f64 * c(*norm);
                    }
                }
                (p.clone(), s.into_iter().map(|x| x as f32).collect())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let auto = weighted(&|n| 1.0 / (n + 0.01));
    let abadi = weighted(&|n| (abadi_max_norm / (n + 1e-6)).min(1.0));
    (norms.iter().map(|x| *x as f32).collect(), auto, abadi)
}

/// Checks the engine's outputs (per-sample gradients, norms, both clipped sums) against explicit
/// per-sample gradients `want_grads` (from [`batch_of_one`] or a reference file), to relative
/// error `tol`; `abadi_max_norm` must be the one `out` was computed with.
///
/// # Shapes
/// - `want_grads`, per parameter: `[b, numel]` row-major
///
/// # Panics
/// At the first difference, naming `what`, the quantity and the parameter.
pub fn check_against(
    what: &str,
    out: &PerSampleOutputs,
    want_grads: &[(String, Vec<f32>)],
    b: usize,
    abadi_max_norm: f64,
    tol: f64,
) {
    let numels: Vec<usize> = want_grads
        .iter()
        .map(|(p, _)| {
            out.auto_sums
                .iter()
                .find(|(q, _)| q == p)
                .map(|(_, v)| v.len())
                .unwrap_or(0)
        })
        .collect();
    let (norms, auto, abadi) = oracle_clip(want_grads, &numels, b, abadi_max_norm);
    for (path, want) in want_grads {
        let got = &out
            .grads
            .iter()
            .find(|(p, _)| p == path)
            .unwrap_or_else(|| panic!("{what}: no gradient for {path}"))
            .1;
        assert_close(&format!("{what}: per-sample grad {path}"), got, want, tol);
    }
    assert_eq!(
        out.grads.len(),
        want_grads.len(),
        "{what}: trainable parameter count"
    );
    assert_close(&format!("{what}: norms"), &out.norms, &norms, tol);
    for ((p, got), (_, want)) in out.auto_sums.iter().zip(&auto) {
        assert_close(
            &format!("{what}: automatic clipped sum {p}"),
            got,
            want,
            tol,
        );
    }
    for ((p, got), (_, want)) in out.abadi_sums.iter().zip(&abadi) {
        assert_close(&format!("{what}: Abadi clipped sum {p}"), got, want, tol);
    }
}
