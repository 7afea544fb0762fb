//! Per-sample gradients with `burn-dp` against the PyTorch references.
//!
//! The fixture models loaded from the PyTorch state dicts (ResNets with
//! `Norm::FrozenBatchNorm`, the torch parametrisation) on `DpAutodiff<NdArray<f32>>`: per-sample
//! gradient norms and automatic / Abadi clipped sums against the references computed in PyTorch
//! with one backward pass per sample, with all parameters trainable and bias-only (DP-BiTFiT),
//! in NormMode::Ghost, Instantiate and (where cheap) Auto. Relative error (max |a - b| /
//! max |ref| per tensor) 1e-4.

use std::collections::{BTreeSet, HashMap};

use burn::module::{AutodiffModule, ParamId};
use burn::prelude::*;
use burn_dp::testing::{relative_error, to_vec};
use burn_dp::{ClippingFn, DpAutodiff, NormMode, PerSampleConfig};
use burn_dp_models::{
    cross_entropy_per_sample, Gpt2, Gpt2Config, LoadOptions, PretrainedModel, TorchParam,
    ViTConfig, ViTForImageClassification,
};

use crate::relu_kinks;
use crate::support::{fixture, load_resnet, max_abs, Reference, B, TOL};

pub(crate) type Dp = DpAutodiff<B>;

/// A reference clipped sum whose largest entry is below this fraction of the largest entry of
/// all sums of its kind is rounding noise of a gradient that is zero in exact arithmetic (the
/// attention key bias: softmax is invariant to the `q·b_k` it adds, constant along the keys).
/// Relative error is meaningless there; ours must be as negligible.
const ZERO_GRADIENT: f64 = 1e-6;

/// Largest relative errors of one (trainable set, norm mode) case: (error, parameter).
#[derive(Default)]
struct Worst {
    norm: f64,
    auto: (f64, String),
    abadi: (f64, String),
}

/// Norm modes of the transformers, which are cheap on NdArray.
pub(crate) const ALL_MODES: &[NormMode] = &[NormMode::Ghost, NormMode::Instantiate, NormMode::Auto];
/// Norm modes of the ResNets. A pass takes ~10 s there (burn-ndarray's direct convolution
/// backward, as slow for plain `Autodiff<NdArray>`), so `Auto`, which only picks Ghost or
/// Instantiate per layer, both checked here, is left out.
const RESNET_MODES: &[NormMode] = &[NormMode::Ghost, NormMode::Instantiate];

/// Checks norms and clipped sums of `model` against the reference `name` in each of `modes`,
/// with all parameters trainable and, for a model with biases (the reference's `bias_params`),
/// bias-only; panics listing every failure.
pub(crate) fn dp_parity<M: AutodiffModule<Dp>>(
    name: &str,
    model: M,
    params: &[TorchParam],
    modes: &[NormMode],
    losses: impl Fn(&M) -> Tensor<Dp, 1>,
) {
    let r = Reference::open(name);
    let mut settings = vec![("all", "", model.clone(), r.meta_f64("abadi_c"))];
    if r.file.metadata().expect("metadata")["bias_params"] != "[]" {
        let (bias_only, _) = burn_dp::freeze(model, &burn_dp::FreezePolicy::BiasOnly).unwrap();
        settings.push(("bitfit", "bitfit.", bias_only, r.meta_f64("bitfit_abadi_c")));
    }
    dp_parity_settings(name, &settings, params, modes, losses);
}

/// [`dp_parity`] for explicit trainable sets: `(what, reference prefix, model, Abadi's C)`.
pub(crate) fn dp_parity_settings<M: AutodiffModule<Dp>>(
    name: &str,
    settings: &[(&str, &str, M, f64)],
    params: &[TorchParam],
    modes: &[NormMode],
    losses: impl Fn(&M) -> Tensor<Dp, 1>,
) {
    let start = std::time::Instant::now();
    let r = &Reference::open(name);
    let by_id: HashMap<ParamId, &TorchParam> = params.iter().map(|p| (p.id, p)).collect();
    let gamma = r.meta_f64("gamma");
    let mut failures = Vec::new();
    let mut zero = BTreeSet::new();
    for (what, prefix, m, c) in settings {
        let expected_norms = r.raw(&format!("{prefix}grad_norm"));
        let expected_names = r.names_with_prefix(&format!("{prefix}auto_clip_sum."));
        assert_eq!(
            expected_names,
            r.names_with_prefix(&format!("{prefix}abadi_clip_sum.")),
            "{name}: reference auto / abadi parameter sets differ"
        );
        let clips = [
            ("auto_clip_sum", ClippingFn::Automatic { gamma }),
            ("abadi_clip_sum", ClippingFn::Abadi { max_norm: *c }),
        ];
        // Reference sums in torch layout, and the scale of each kind.
        let expected: HashMap<(&str, &str), Vec<f32>> = clips
            .iter()
            .flat_map(|(clip, _)| {
                expected_names
                    .iter()
                    .map(move |n| ((*clip, n.as_str()), r.raw(&format!("{prefix}{clip}.{n}"))))
            })
            .collect();
        let scale = |clip: &str| {
            expected
                .iter()
                .filter(|((c, _), _)| *c == clip)
                .map(|(_, v)| max_abs(v))
                .fold(0.0, f64::max)
        };
        let scales: HashMap<&str, f64> = clips.iter().map(|(c, _)| (*c, scale(c))).collect();
        for &mode in modes {
            let case = format!("{name} {what} {mode:?}");
            let case_start = std::time::Instant::now();
            let mut worst = Worst::default();
            for (clip, function) in clips {
                let config = PerSampleConfig::new(function).with_norm_mode(mode);
                let out = match burn_dp::clipped_backward(&config, m, losses(m)) {
                    Ok(out) => out,
                    Err(e) => {
                        failures.push(format!("{case} {clip}: engine error: {e}"));
                        continue;
                    }
                };
                assert!(
                    out.untouched.is_empty(),
                    "{case}: untouched {:?}",
                    out.untouched
                );
                let e = relative_error(&to_vec(out.norms.clone()), &expected_norms);
                worst.norm = worst.norm.max(e);
                if e > TOL {
                    failures.push(format!("{case} {clip}: grad_norm rel err {e:.3e}"));
                }
                let got: BTreeSet<String> = out
                    .params
                    .iter()
                    .map(|(id, _)| by_id[id].name.clone())
                    .collect();
                assert_eq!(got, expected_names, "{case}: trainable parameters");
                for (id, path) in &out.params {
                    let p = by_id[id];
                    assert_eq!(out.shapes[id], p.burn_shape, "{case}: {path}");
                    let sum = p.burn_to_torch(&to_vec(out.sums[id].clone()));
                    let reference = &expected[&(clip, p.name.as_str())];
                    let what = format!("{case} {clip}.{} (burn `{path}`)", p.name);
                    if max_abs(reference) < ZERO_GRADIENT * scales[clip] {
                        zero.insert(p.name.clone());
                        let ours = max_abs(&sum) / scales[clip];
                        if ours >= ZERO_GRADIENT {
                            failures.push(format!(
                                "{what}: zero in exact arithmetic, ours is {ours:.3e} of the scale"
                            ));
                        }
                        continue;
                    }
                    let e = relative_error(&sum, reference);
                    let w = if clip == "auto_clip_sum" {
                        &mut worst.auto
                    } else {
                        &mut worst.abadi
                    };
                    if e > w.0 {
                        *w = (e, p.name.clone());
                    }
                    if e > TOL {
                        failures.push(format!("{what}: rel err {e:.3e}"));
                    }
                }
            }
            println!(
                "{case:<36} norms {:.2e}  auto {:.2e} ({})  abadi {:.2e} ({})  [{:.1?}]",
                worst.norm,
                worst.auto.0,
                worst.auto.1,
                worst.abadi.0,
                worst.abadi.1,
                case_start.elapsed()
            );
        }
    }
    if !zero.is_empty() {
        println!("{name}: analytically zero (checked absolutely): {zero:?}");
    }
    // Only where the exact-arithmetic argument holds.
    for n in &zero {
        assert!(n.ends_with("attention.k_proj.bias"), "{name}: {n} is ~0");
    }
    println!(
        "{name}: {} per-sample passes in {:.1?}",
        2 * settings.len() * modes.len(),
        start.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{name}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn gpt2_tiny_per_sample_gradients() {
    let r = Reference::open("gpt2-tiny");
    let cfg = Gpt2Config::from_hf_json(&r.config).expect("config");
    let dev = Default::default();
    let m = Gpt2::<Dp>::from_safetensors(
        &cfg,
        fixture("gpt2-tiny.weights.safetensors"),
        &dev,
        LoadOptions::default(),
    )
    .unwrap();
    let ids = r.int::<2>("input").into_data();
    let params = m.torch_params();
    dp_parity("gpt2-tiny", m, &params, ALL_MODES, |m| {
        // Token ids need no batch mark: the embedding lookup marks its output.
        m.loss_per_sample(Tensor::<Dp, 2, Int>::from_data(ids.clone(), &dev))
    });
}

#[test]
fn vit_tiny_per_sample_gradients() {
    let r = Reference::open("vit-tiny");
    let cfg = ViTConfig::from_hf_json(&r.config).expect("config");
    let dev = Default::default();
    let m = ViTForImageClassification::<Dp>::from_safetensors(
        &cfg,
        fixture("vit-tiny.weights.safetensors"),
        &dev,
        LoadOptions::default(),
    )
    .unwrap();
    let x = r.float::<4>("input").into_data();
    let y = r.int::<1>("target").into_data();
    let params = m.torch_params();
    dp_parity("vit-tiny", m, &params, ALL_MODES, |m| {
        let x = burn_dp::batch(Tensor::<Dp, 4>::from_data(x.clone(), &dev));
        m.loss_per_sample((x, Tensor::from_data(y.clone(), &dev)))
    });
}

/// A ResNet's per-sample gradients, on the reference's side of every ReLU input within
/// rounding of zero (see [`relu_kinks`]); strict (1e-4) for every sample.
fn resnet_per_sample_gradients(model: &str) {
    let r = Reference::open(model);
    let branches = relu_kinks::follow_reference(model, &r);
    let m = load_resnet::<Dp>(model, &r);
    let dev = Default::default();
    let x = r.float::<4>("input").into_data();
    let y = r.int::<1>("target").into_data();
    let params = m.torch_params();
    dp_parity(model, m, &params, RESNET_MODES, |m| {
        let x = burn_dp::batch(Tensor::<Dp, 4>::from_data(x.clone(), &dev));
        let logits = relu_kinks::forward_pinned(m, x, 0, &branches);
        cross_entropy_per_sample(logits, Tensor::from_data(y.clone(), &dev))
    });
}

#[test]
fn resnet_basic_small_per_sample_gradients() {
    resnet_per_sample_gradients("resnet-basic-small");
}

#[test]
fn resnet_bottleneck_small_per_sample_gradients() {
    resnet_per_sample_gradients("resnet-bottleneck-small");
}
