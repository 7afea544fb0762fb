//! Parity of the burn ports with the PyTorch reference logits and per-sample losses, for weights
//! loaded from safetensors and from every ONNX export of the fixture models.
//!
//! Fixtures are read from `$BURN_DP_FIXTURES` when set, else from the crate's `tests/fixtures`.
//! A missing fixture is a failure.

use std::path::PathBuf;

use burn::backend::NdArray;
use burn::prelude::*;
use burn::tensor::TensorData;
use burn_dp_models::{
    cross_entropy_per_sample, Gpt2, Gpt2Config, ImportError, LoadOptions, Norm, ResNet,
    ResNetConfig, SafetensorsFile, ViTConfig, ViTForImageClassification,
};

type B = NdArray<f32>;

/// Relative tolerance of the fixtures README for float32 logits and losses.
const TOL: f64 = 1e-4;

fn dir() -> PathBuf {
    match std::env::var_os("BURN_DP_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

fn fixture(name: &str) -> PathBuf {
    let p = dir().join(name);
    assert!(p.is_file(), "missing fixture {}", p.display());
    p
}

struct Reference {
    file: SafetensorsFile,
    config: String,
}

impl Reference {
    fn open(model: &str) -> Self {
        let file = SafetensorsFile::open(fixture(&format!("{model}.reference.safetensors")))
            .expect("reference file");
        let config = file
            .metadata()
            .expect("metadata")
            .get("config")
            .cloned()
            .expect("reference metadata lacks `config`");
        Self { file, config }
    }
    fn float<const D: usize>(&self, name: &str) -> Tensor<B, D> {
        let t = self
            .file
            .read_f32(name)
            .expect("read")
            .unwrap_or_else(|| panic!("no `{name}`"));
        Tensor::from_data(TensorData::new(t.data, t.shape), &Default::default())
    }
    fn int<const D: usize>(&self, name: &str) -> Tensor<B, D, Int> {
        let (shape, data) = self
            .file
            .read_i64(name)
            .expect("read")
            .unwrap_or_else(|| panic!("no `{name}`"));
        Tensor::from_data(TensorData::new(data, shape), &Default::default())
    }
}

/// max |a - b| / max |b| (relative error in the infinity norm).
fn rel_err<const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let diff: f64 = (a - b.clone()).abs().max().into_scalar().into();
    let scale: f64 = b.abs().max().into_scalar().into();
    diff / scale.max(1e-30)
}

fn check<const D: usize>(what: &str, logits: Tensor<B, D>, loss: Tensor<B, 1>, r: &Reference) {
    let el = rel_err(logits, r.float::<D>("logits"));
    let ep = rel_err(loss, r.float::<1>("loss_per_sample"));
    println!("{what:<48} logits rel err {el:.3e}   loss rel err {ep:.3e}");
    assert!(el < TOL, "{what}: logits relative error {el:e} >= {TOL:e}");
    assert!(ep < TOL, "{what}: loss relative error {ep:e} >= {TOL:e}");
}

#[test]
fn gpt2_tiny_parity() {
    let r = Reference::open("gpt2-tiny");
    let cfg = Gpt2Config::from_hf_json(&r.config).expect("config");
    let dev = Default::default();
    let ids = r.int::<2>("input");
    let models = [
        (
            "gpt2-tiny safetensors",
            Gpt2::<B>::from_safetensors(
                &cfg,
                fixture("gpt2-tiny.weights.safetensors"),
                &dev,
                LoadOptions::default(),
            ),
        ),
        (
            "gpt2-tiny dynamo onnx",
            Gpt2::<B>::from_onnx(
                &cfg,
                fixture("gpt2-tiny.dynamo.onnx"),
                &dev,
                LoadOptions::default(),
            ),
        ),
    ];
    for (what, m) in models {
        let m = m.unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            m.lm_head.is_none(),
            cfg.tie_word_embeddings,
            "{what}: head tying"
        );
        let logits = m.forward(ids.clone(), None);
        let loss = burn_dp_models::lm_loss_per_sample(logits.clone(), ids.clone());
        check(what, logits, loss, &r);
    }
}

#[test]
fn gpt2_tiny_explicit_positions_match_default() {
    let r = Reference::open("gpt2-tiny");
    let cfg = Gpt2Config::from_hf_json(&r.config).expect("config");
    let dev = Default::default();
    let m = Gpt2::<B>::from_safetensors(
        &cfg,
        fixture("gpt2-tiny.weights.safetensors"),
        &dev,
        LoadOptions::default(),
    )
    .unwrap();
    let ids = r.int::<2>("input");
    let [b, t] = ids.dims();
    let pos = Tensor::<B, 1, Int>::arange(0..t as i64, &dev)
        .reshape([1, t])
        .repeat_dim(0, b);
    let e = rel_err(m.forward(ids.clone(), Some(pos)), r.float::<3>("logits"));
    assert!(e < TOL, "{e}");
    // Per-sample loss through the model method.
    let e = rel_err(
        m.loss_per_sample(ids, None),
        r.float::<1>("loss_per_sample"),
    );
    assert!(e < TOL, "{e}");
}

#[test]
fn vit_tiny_parity() {
    let r = Reference::open("vit-tiny");
    let cfg = ViTConfig::from_hf_json(&r.config).expect("config");
    let dev = Default::default();
    let x = r.float::<4>("input");
    let y = r.int::<1>("target");
    let o = LoadOptions::default();
    let models = [
        (
            "vit-tiny safetensors",
            ViTForImageClassification::<B>::from_safetensors(
                &cfg,
                fixture("vit-tiny.weights.safetensors"),
                &dev,
                o,
            ),
        ),
        (
            "vit-tiny dynamo onnx",
            ViTForImageClassification::<B>::from_onnx(
                &cfg,
                fixture("vit-tiny.dynamo.onnx"),
                &dev,
                o,
            ),
        ),
        (
            "vit-tiny legacy onnx",
            ViTForImageClassification::<B>::from_onnx(
                &cfg,
                fixture("vit-tiny.legacy.onnx"),
                &dev,
                o,
            ),
        ),
    ];
    for (what, m) in models {
        let m = m.unwrap_or_else(|e| panic!("{what}: {e}"));
        let logits = m.forward(x.clone());
        let loss = m.loss_per_sample(x.clone(), y.clone());
        check(what, logits, loss, &r);
    }
}

fn resnet_parity(model: &str) {
    let r = Reference::open(model);
    let cfg = ResNetConfig::from_json(&r.config).expect("config");
    let dev = Default::default();
    let x = r.float::<4>("input");
    let y = r.int::<1>("target");
    let o = LoadOptions::default();
    let st = fixture(&format!("{model}.weights.safetensors"));
    let frozen = cfg.clone().with_norm(Norm::FrozenBatchNorm);
    let folded = cfg.clone().with_norm(Norm::Folded);
    let models = [
        (
            format!("{model} safetensors FrozenBatchNorm"),
            ResNet::<B>::from_safetensors(&frozen, &st, &dev, o),
        ),
        (
            format!("{model} safetensors Folded"),
            ResNet::<B>::from_safetensors(&folded, &st, &dev, o),
        ),
        (
            format!("{model} dynamo onnx Folded"),
            ResNet::<B>::from_onnx(&folded, fixture(&format!("{model}.dynamo.onnx")), &dev, o),
        ),
        (
            format!("{model} legacy onnx Folded"),
            ResNet::<B>::from_onnx(&folded, fixture(&format!("{model}.legacy.onnx")), &dev, o),
        ),
    ];
    for (what, m) in models {
        let m = m.unwrap_or_else(|e| panic!("{what}: {e}"));
        let logits = m.forward(x.clone());
        let loss = m.loss_per_sample(x.clone(), y.clone());
        check(&what, logits, loss, &r);
    }
    // A folded export cannot give a BatchNorm model: typed error, no panic.
    let err = ResNet::<B>::from_onnx(&frozen, fixture(&format!("{model}.dynamo.onnx")), &dev, o)
        .unwrap_err();
    assert!(matches!(err, ImportError::OnnxLayout { .. }), "{err}");
}

#[test]
fn resnet_basic_small_parity() {
    resnet_parity("resnet-basic-small");
}

#[test]
fn resnet_bottleneck_small_parity() {
    resnet_parity("resnet-bottleneck-small");
}

#[test]
fn param_names_match_reference_params() {
    // The torch names reported for the burn params are exactly the `params` of the reference
    // metadata (with shapes in torch layout), for the safetensors-loaded models.
    let dev = Default::default();
    let o = LoadOptions::default();
    for model in [
        "gpt2-tiny",
        "vit-tiny",
        "resnet-basic-small",
        "resnet-bottleneck-small",
    ] {
        let r = Reference::open(model);
        let params: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&r.file.metadata().unwrap()["params"]).unwrap();
        let st = fixture(&format!("{model}.weights.safetensors"));
        let names: Vec<String> = match model {
            "gpt2-tiny" => {
                let m = Gpt2::<B>::from_safetensors(
                    &Gpt2Config::from_hf_json(&r.config).unwrap(),
                    &st,
                    &dev,
                    o,
                )
                .unwrap();
                burn_dp_models::param_names::<B, _>(&m)
                    .into_iter()
                    .map(|x| x.1)
                    .collect()
            }
            "vit-tiny" => {
                let m = ViTForImageClassification::<B>::from_safetensors(
                    &ViTConfig::from_hf_json(&r.config).unwrap(),
                    &st,
                    &dev,
                    o,
                )
                .unwrap();
                burn_dp_models::param_names::<B, _>(&m)
                    .into_iter()
                    .map(|x| x.1)
                    .collect()
            }
            _ => {
                let m = ResNet::<B>::from_safetensors(
                    &ResNetConfig::from_json(&r.config).unwrap(),
                    &st,
                    &dev,
                    o,
                )
                .unwrap();
                burn_dp_models::param_names::<B, _>(&m)
                    .into_iter()
                    .map(|x| x.1)
                    .collect()
            }
        };
        let mut a = names.clone();
        a.sort();
        let mut b: Vec<String> = params.keys().cloned().collect();
        b.sort();
        assert_eq!(a, b, "{model}");
        // every reference auto_clip_sum entry has a burn param
        for n in &names {
            assert!(
                r.file.contains(&format!("auto_clip_sum.{n}")),
                "{model}: no auto_clip_sum.{n}"
            );
        }
    }
}

// ------------------------------------------------------------------ per-sample gradients (burn-dp)
//
// The fixture models loaded from the PyTorch state dicts (ResNets with `Norm::FrozenBatchNorm`,
// the torch parametrisation) on `DpAutodiff<NdArray<f32>>`: per-sample gradient norms and
// automatic / Abadi clipped sums against the references computed in PyTorch with one backward
// pass per sample, with all parameters trainable and bias-only (DP-BiTFiT), in NormMode::Ghost,
// Instantiate and (where cheap) Auto. Relative error (max |a - b| / max |ref| per tensor) 1e-4.

use burn::module::{AutodiffModule, ParamId};
use burn::tensor::activation::relu;
use burn_dp::{ClippingFn, DpAutodiff, NormMode, PerSampleConfig};
use burn_dp_models::resnet::{Block, NormLayer};
use burn_dp_models::TorchParam;
use std::collections::{BTreeSet, HashMap};

type Dp = DpAutodiff<B>;

/// A reference clipped sum whose largest entry is below this fraction of the largest entry of
/// all sums of its kind is rounding noise of a gradient that is zero in exact arithmetic (the
/// attention key bias: softmax is invariant to the `q·b_k` it adds, constant along the keys).
/// Relative error is meaningless there; ours must be as negligible.
const ZERO_GRADIENT: f64 = 1e-6;

impl Reference {
    fn meta_f64(&self, key: &str) -> f64 {
        self.file.metadata().expect("metadata")[key]
            .parse()
            .unwrap_or_else(|e| panic!("metadata `{key}`: {e}"))
    }
    fn raw(&self, name: &str) -> Vec<f32> {
        self.file
            .read_f32(name)
            .expect("read")
            .unwrap_or_else(|| panic!("no `{name}`"))
            .data
    }
    /// Torch names `n` of the tensors `<prefix>n`.
    fn names_with_prefix(&self, prefix: &str) -> BTreeSet<String> {
        self.file
            .names()
            .into_iter()
            .filter_map(|n| n.strip_prefix(prefix).map(str::to_string))
            .collect()
    }
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max)
}

/// max |a - b| / max |b| over flat vectors.
fn rel_err_vec(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let diff = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max);
    diff / max_abs(b).max(1e-30)
}

fn to_vec(t: Tensor<B, 1>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().expect("f32 data")
}

/// Largest relative errors of one (trainable set, norm mode) case: (error, parameter).
#[derive(Default)]
struct Worst {
    norm: f64,
    auto: (f64, String),
    abadi: (f64, String),
}

/// Norm modes of the transformers, which are cheap on NdArray.
const ALL_MODES: &[NormMode] = &[NormMode::Ghost, NormMode::Instantiate, NormMode::Auto];
/// Norm modes of the ResNets. A pass takes ~10 s there (burn-ndarray's direct convolution
/// backward, as slow for plain `Autodiff<NdArray>`), so `Auto`, which only picks Ghost or
/// Instantiate per layer, both checked here, is left out.
const RESNET_MODES: &[NormMode] = &[NormMode::Ghost, NormMode::Instantiate];

/// Checks norms and clipped sums of `model` against the reference `name` in each of `modes`,
/// with all parameters trainable and bias-only; panics listing every failure.
fn dp_parity<M: AutodiffModule<Dp>>(
    name: &str,
    model: M,
    params: &[TorchParam],
    modes: &[NormMode],
    losses: impl Fn(&M) -> Tensor<Dp, 1>,
) {
    let start = std::time::Instant::now();
    let r = &Reference::open(name);
    let by_id: HashMap<ParamId, &TorchParam> = params.iter().map(|p| (p.id, p)).collect();
    let gamma = r.meta_f64("gamma");
    let bias_only = burn_dp_models::freeze_all_but(model.clone(), |n| n.ends_with(".bias"));
    let settings = [
        ("all", "", model, r.meta_f64("abadi_c")),
        ("bitfit", "bitfit.", bias_only, r.meta_f64("bitfit_abadi_c")),
    ];
    let mut failures = Vec::new();
    let mut zero = BTreeSet::new();
    for (what, prefix, m, c) in &settings {
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
                let e = rel_err_vec(&to_vec(out.norms.clone()), &expected_norms);
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
                    let e = rel_err_vec(&sum, reference);
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
        4 * modes.len(),
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
        m.loss_per_sample(Tensor::from_data(ids.clone(), &dev), None)
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
        m.loss_per_sample(x, Tensor::from_data(y.clone(), &dev))
    });
}

fn load_resnet<BK: Backend>(model: &str, r: &Reference) -> ResNet<BK> {
    let cfg = ResNetConfig::from_json(&r.config)
        .expect("config")
        .with_norm(Norm::FrozenBatchNorm);
    ResNet::<BK>::from_safetensors(
        &cfg,
        fixture(&format!("{model}.weights.safetensors")),
        &Default::default(),
        LoadOptions::default(),
    )
    .unwrap()
}

#[test]
fn resnet_bottleneck_small_per_sample_gradients() {
    let model = "resnet-bottleneck-small";
    let r = Reference::open(model);
    let m = load_resnet::<Dp>(model, &r);
    let dev = Default::default();
    let x = r.float::<4>("input").into_data();
    let y = r.int::<1>("target").into_data();
    let params = m.torch_params();
    dp_parity(model, m, &params, RESNET_MODES, |m| {
        let x = burn_dp::batch(Tensor::<Dp, 4>::from_data(x.clone(), &dev));
        m.loss_per_sample(x, Tensor::from_data(y.clone(), &dev))
    });
}

/// A ReLU input of `resnet-basic-small` that sits on the kink: the pre-activation of the final
/// ReLU of `layer4.0` (block 6), sample 3, flat index 424 of that sample's [128, 2, 2] map, is
/// -1.654e-6 in burn's float32 forward but positive in PyTorch's. Both are correct to float32
/// precision, but they put the ReLU on different sides, so sample 3's gradient differs by ~1e-3
/// in norm and up to ~7e-2 in `layer4.0.*` (the other samples agree to ~1e-7). Flipping that
/// one mask reproduces the reference norm to ~1e-7 (see `resnet_basic_small_reference_kink`).
/// The comparison is ill-conditioned there, so the per-sample test follows PyTorch's branch by
/// adding a constant 1e-5 to that one pre-activation (a forward change far below the 1e-4
/// tolerance; no effect on any gradient but that ReLU's mask).
const KINK: (usize, usize, usize) = (6, 3, 424);
const KINK_NUDGE: f32 = 1e-5;

/// `ResNet::forward` of a BasicBlock ResNet, returning the logits and the pre-activation of the
/// final ReLU of block `KINK.0`; `nudge = Some((row, v))` adds `v` there at element `KINK.2` of
/// batch row `row`.
fn basic_resnet_forward<BK: Backend>(
    m: &ResNet<BK>,
    x: Tensor<BK, 4>,
    nudge: Option<(usize, f32)>,
) -> (Tensor<BK, 2>, Tensor<BK, 4>) {
    let norm = |n: &Option<NormLayer<BK>>, v: Tensor<BK, 4>| n.as_ref().expect("norm").forward(v);
    let mut t = m.maxpool.forward(relu(norm(&m.bn1, m.conv1.forward(x))));
    let blocks = m
        .layer1
        .iter()
        .chain(&m.layer2)
        .chain(&m.layer3)
        .chain(&m.layer4);
    let mut kink = None;
    for (k, block) in blocks.enumerate() {
        if k != KINK.0 {
            t = block.forward(t);
            continue;
        }
        let Block::Basic(b) = block else {
            panic!("a BasicBlock ResNet")
        };
        let y = relu(norm(&b.bn1, b.conv1.forward(t.clone())));
        let out = norm(&b.bn2, b.conv2.forward(y));
        let identity = match &b.downsample {
            Some((conv, n)) => norm(n, conv.forward(t)),
            None => t,
        };
        let mut pre = out + identity;
        if let Some((row, v)) = nudge {
            let dims = pre.dims();
            let per_sample = dims[1] * dims[2] * dims[3];
            let mut d = vec![0.0f32; dims.iter().product()];
            d[row * per_sample + KINK.2] = v;
            pre = pre + Tensor::from_data(TensorData::new(d, dims), &Default::default());
        }
        kink = Some(pre.clone());
        t = relu(pre);
    }
    let t = m.avgpool.forward(t);
    let [b, c, _, _] = t.dims();
    let kink = kink.expect("block KINK.0 exists");
    (m.fc.forward(t.reshape([b, c])), kink)
}

#[test]
fn resnet_basic_small_reference_kink() {
    use burn::backend::Autodiff;
    type A = Autodiff<B>;
    let model = "resnet-basic-small";
    let r = Reference::open(model);
    // The unmodified forward is the model's forward, and the kink is where we say it is.
    let plain = load_resnet::<B>(model, &r);
    let x = r.float::<4>("input");
    let (logits, pre) = basic_resnet_forward(&plain, x.clone(), None);
    let e = rel_err(logits, plain.forward(x.clone()));
    assert!(e < 1e-6, "{e}");
    let [_, c, h, w] = pre.dims();
    let v: Vec<f32> = pre.into_data().to_vec().unwrap();
    let kink = v[KINK.1 * c * h * w + KINK.2];
    assert!(
        kink < 0.0 && kink > -KINK_NUDGE / 2.0,
        "pre-activation {kink:e}"
    );
    // Sample 3's gradient norm (a batch of that sample alone), on burn's and PyTorch's branch.
    let m = load_resnet::<A>(model, &r);
    let (s, dev) = (KINK.1, Default::default());
    let xs = Tensor::<A, 4>::from_inner(x.slice(s..s + 1));
    let ys = Tensor::<A, 1, Int>::from_data(r.int::<1>("target").slice(s..s + 1).into_data(), &dev);
    let expected = r.raw("grad_norm")[s] as f64;
    let rel = |nudge| {
        let (logits, _) = basic_resnet_forward(&m, xs.clone(), nudge);
        let grads = cross_entropy_per_sample(logits, ys.clone())
            .sum()
            .backward();
        let grads = burn::optim::GradientsParams::from_grads(grads, &m);
        let mut sq = 0.0f64;
        for p in m.torch_params() {
            let g: Tensor<B, 1> = match p.burn_shape.len() {
                1 => grads.get::<B, 1>(p.id).unwrap(),
                2 => grads.get::<B, 2>(p.id).unwrap().flatten(0, 1),
                _ => grads.get::<B, 4>(p.id).unwrap().flatten(0, 3),
            };
            sq += to_vec(g).iter().map(|a| (*a as f64).powi(2)).sum::<f64>();
        }
        (sq.sqrt() - expected).abs() / expected
    };
    let (burn_branch, torch_branch) = (rel(None), rel(Some((0, KINK_NUDGE))));
    println!(
        "resnet-basic-small sample 3 norm: burn's branch rel err {burn_branch:.2e}, \
         PyTorch's branch {torch_branch:.2e}"
    );
    assert!(
        burn_branch > 1e-4,
        "the kink no longer matters: drop the nudge"
    );
    assert!(torch_branch < TOL, "{torch_branch}");
}

#[test]
fn resnet_basic_small_per_sample_gradients() {
    let model = "resnet-basic-small";
    let r = Reference::open(model);
    let m = load_resnet::<Dp>(model, &r);
    let dev = Default::default();
    let x = r.float::<4>("input").into_data();
    let y = r.int::<1>("target").into_data();
    let params = m.torch_params();
    dp_parity(model, m, &params, RESNET_MODES, |m| {
        let x = burn_dp::batch(Tensor::<Dp, 4>::from_data(x.clone(), &dev));
        let (logits, _) = basic_resnet_forward(m, x, Some((KINK.1, KINK_NUDGE)));
        cross_entropy_per_sample(logits, Tensor::from_data(y.clone(), &dev))
    });
}
