//! Unit tests (one lib test binary; the fixture parity tests are the `parity` test target,
//! `tests/parity/`).

use std::path::PathBuf;

use burn::backend::{Autodiff, NdArray};
use burn::module::Module;
use burn::prelude::*;

use crate::*;

type B = NdArray<f32>;
type AB = Autodiff<NdArray<f32>>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn dev() -> burn::backend::ndarray::NdArrayDevice {
    Default::default()
}

#[test]
fn published_parameter_counts() {
    // Counted from the lazy parameter shapes: nothing is allocated.
    let gpt2 = |c: Gpt2Config| count_params::<B, _>(&c.init::<B>(&dev()));
    assert_eq!(gpt2(Gpt2Config::small()), 124_439_808);
    assert_eq!(gpt2(Gpt2Config::medium()), 354_823_168);
    assert_eq!(gpt2(Gpt2Config::large()), 774_030_080);
    assert_eq!(gpt2(Gpt2Config::xl()), 1_557_611_200);
    // Untied head: one more [V, d] matrix.
    assert_eq!(
        gpt2(Gpt2Config::small().with_tied_head(false)),
        124_439_808 + 50257 * 768
    );

    let resnet = |c: ResNetConfig| count_params::<B, _>(&c.init::<B>(&dev()));
    assert_eq!(resnet(ResNetConfig::resnet18(1000)), 11_689_512);
    assert_eq!(resnet(ResNetConfig::resnet34(1000)), 21_797_672);
    assert_eq!(resnet(ResNetConfig::resnet50(1000)), 25_557_032);
    assert_eq!(resnet(ResNetConfig::resnet101(1000)), 44_549_160);
    assert_eq!(resnet(ResNetConfig::resnet152(1000)), 60_192_808);

    let vit = |c: ViTConfig| count_params::<B, _>(&c.init::<B>(&dev()));
    assert_eq!(vit(ViTConfig::base_patch16(1000)), 86_567_656);
    assert_eq!(vit(ViTConfig::base_patch32(1000)), 88_224_232);
    assert_eq!(vit(ViTConfig::large_patch16(1000)), 304_326_632);
    assert_eq!(vit(ViTConfig::large_patch32(1000)), 306_535_400);
}

#[test]
fn num_params_allocating_matches_lazy_count() {
    // burn's own `num_params` (which allocates every parameter) agrees with the lazy count.
    let m = ResNetConfig::resnet50(1000).init::<B>(&dev());
    assert_eq!(m.num_params(), 25_557_032);
    let g = Gpt2Config::custom(512, 64, 64, 2, 4).init::<B>(&dev());
    assert_eq!(g.num_params(), count_params::<B, _>(&g));
    let v = ViTConfig::custom(64, 2, 4, 128, 32, 8, 10).init::<B>(&dev());
    assert_eq!(v.num_params(), count_params::<B, _>(&v));
}

#[test]
fn gpt2_shapes_positions_and_untied_head() {
    let cfg = Gpt2Config::custom(50, 16, 32, 2, 4).with_tied_head(false);
    let m = cfg.init::<B>(&dev());
    let ids = Tensor::<B, 2, Int>::from_data([[1, 2, 3, 4], [5, 6, 7, 8]], &dev());
    let logits = m.forward(ids.clone(), None);
    assert_eq!(logits.dims(), [2, 4, 50]);
    // Shifted positions change the output; explicit arange equals the default.
    let pos = Tensor::<B, 2, Int>::from_data([[0, 1, 2, 3], [4, 5, 6, 7]], &dev());
    let shifted = m.forward(ids.clone(), Some(pos));
    let default_pos = Tensor::<B, 2, Int>::from_data([[0, 1, 2, 3], [0, 1, 2, 3]], &dev());
    let same = m.forward(ids.clone(), Some(default_pos));
    let d0: f32 = (logits.clone() - same).abs().max().into_scalar();
    assert!(d0 < 1e-6);
    let d1: f32 = (logits.clone() - shifted.clone())
        .abs()
        .slice([1..2, 0..4, 0..50])
        .max()
        .into_scalar();
    assert!(d1 > 1e-6);
    let loss = m.loss_per_sample(ids);
    assert_eq!(loss.dims(), [2]);
    let names: Vec<String> = param_names::<B, _>(&m).into_iter().map(|x| x.1).collect();
    assert!(names.contains(&"lm_head.weight".to_string()));
    assert!(names.contains(&"transformer.h.1.attn.c_attn.weight".to_string()));
    assert!(names.contains(&"transformer.h.0.ln_1.bias".to_string()));
}

#[test]
fn gpt2_causal() {
    let m = Gpt2Config::custom(50, 16, 32, 2, 4).init::<B>(&dev());
    let a = Tensor::<B, 2, Int>::from_data([[1, 2, 3, 4]], &dev());
    let b = Tensor::<B, 2, Int>::from_data([[1, 2, 3, 9]], &dev());
    let la = m.forward(a, None).slice([0..1, 0..3, 0..50]);
    let lb = m.forward(b, None).slice([0..1, 0..3, 0..50]);
    let d: f32 = (la - lb).abs().max().into_scalar();
    assert!(d < 1e-6, "future token leaked: {d}");
}

#[test]
fn resnet_norm_variants_and_names() {
    let x = Tensor::<B, 4>::ones([2, 3, 32, 32], &dev());
    for norm in [
        Norm::FrozenBatchNorm,
        Norm::GroupNorm { groups: 4 },
        Norm::Folded,
    ] {
        for cfg in [
            ResNetConfig::new(BlockKind::Basic, vec![1, 1, 1], vec![8, 16, 32], 5),
            ResNetConfig::new(BlockKind::Bottleneck, vec![1, 2], vec![8, 16], 5),
        ] {
            let m = cfg.clone().with_norm(norm).init::<B>(&dev());
            assert_eq!(m.forward(x.clone()).dims(), [2, 5]);
            let names: Vec<String> = param_names::<B, _>(&m).into_iter().map(|x| x.1).collect();
            assert!(
                names.contains(&"layer2.0.downsample.0.weight".to_string()),
                "{names:?}"
            );
            match norm {
                Norm::Folded => {
                    assert!(names.contains(&"conv1.bias".to_string()));
                    assert!(!names.iter().any(|n| n.contains("bn")));
                }
                _ => {
                    assert!(names.contains(&"bn1.weight".to_string()));
                    assert!(names.contains(&"layer2.0.downsample.1.bias".to_string()));
                    assert!(!names.iter().any(|n| n.contains("running")));
                }
            }
        }
    }
    assert!(ResNetConfig::resnet18(10)
        .with_norm(Norm::GroupNorm { groups: 7 })
        .validate()
        .is_err());
    // `forward` is `forward_with_relu` with `relu`, which sees every ReLU input in order: the
    // stem, then 2 (basic) or 3 (bottleneck) per block.
    for (cfg, relus) in [
        (
            ResNetConfig::new(BlockKind::Basic, vec![1, 2], vec![8, 16], 5),
            1 + 2 * 3,
        ),
        (
            ResNetConfig::new(BlockKind::Bottleneck, vec![2, 1], vec![8, 16], 5),
            1 + 3 * 3,
        ),
    ] {
        let m = cfg.init::<B>(&dev());
        let mut seen = 0;
        let hooked = m.forward_with_relu(x.clone(), &mut |pre| {
            seen += 1;
            burn::tensor::activation::relu(pre)
        });
        let d: f32 = (hooked - m.forward(x.clone())).abs().max().into_scalar();
        assert_eq!((d, seen), (0.0, relus));
    }
}

#[test]
fn vit_forward_and_names() {
    let cfg = ViTConfig::custom(32, 2, 4, 64, 16, 8, 3);
    let m = cfg.init::<B>(&dev());
    let x = Tensor::<B, 4>::ones([2, 3, 16, 16], &dev());
    assert_eq!(m.forward(x).dims(), [2, 3]);
    let names: Vec<String> = param_names::<B, _>(&m).into_iter().map(|x| x.1).collect();
    for n in [
        "vit.embeddings.cls_token",
        "vit.embeddings.position_embeddings",
        "vit.layers.1.attention.o_proj.bias",
        "vit.layers.0.layernorm_before.weight",
        "vit.layernorm.bias",
        "classifier.weight",
    ] {
        assert!(names.contains(&n.to_string()), "{n}");
    }
    assert_eq!(
        vit::vit_legacy_name("vit.layers.3.attention.q_proj.weight").as_deref(),
        Some("vit.encoder.layer.3.attention.attention.query.weight")
    );
}

#[test]
fn per_sample_losses() {
    let logits = Tensor::<B, 2>::from_data([[0.0, 0.0], [2.0, 0.0]], &dev());
    let t = Tensor::<B, 1, Int>::from_data([0, 1], &dev());
    let l: Vec<f32> = cross_entropy_per_sample(logits, t)
        .into_data()
        .to_vec()
        .unwrap();
    assert!((l[0] - 2f32.ln()).abs() < 1e-6);
    assert!((l[1] - (2.0 + (1.0 + (-2f32).exp()).ln())).abs() < 1e-5);
    // LM loss: uniform logits -> ln V for every sample.
    let logits = Tensor::<B, 3>::zeros([3, 5, 7], &dev());
    let ids = Tensor::<B, 2, Int>::zeros([3, 5], &dev());
    let l: Vec<f32> = lm_loss_per_sample(logits, ids)
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(l.len(), 3);
    assert!(l.iter().all(|x| (x - 7f32.ln()).abs() < 1e-5));
}

#[test]
fn loaded_params_are_trainable_on_autodiff_and_running_stats_are_not_params() {
    let cfg = ResNetConfig::new(
        BlockKind::Basic,
        vec![2, 2, 2, 2],
        vec![16, 32, 64, 128],
        10,
    );
    let dev = Default::default();
    let m = ResNet::<AB>::from_safetensors(
        &cfg,
        fixture("resnet-basic-small.weights.safetensors"),
        &dev,
        LoadOptions::default(),
    )
    .unwrap();
    let x = Tensor::<AB, 4>::ones([2, 3, 32, 32], &dev);
    let y = Tensor::<AB, 1, Int>::from_data([1, 2], &dev);
    let grads = m.loss_per_sample((x, y)).sum().backward();
    let bn = match m.bn1.as_ref().unwrap() {
        resnet::NormLayer::Frozen(bn) => bn,
        _ => unreachable!(),
    };
    assert!(bn.bias.grad(&grads).is_some());
    assert!(m.conv1.weight.grad(&grads).is_some());
    assert!(m.fc.weight.grad(&grads).is_some());
    // The backend is inferred from the module.
    let n = param_names(&m).len();
    // conv weights + BN weight/bias + fc (the reference's `params`).
    assert_eq!(n, 20 + 2 * 20 + 2);

    // GroupNorm variant: BatchNorm affine parameters become GroupNorm's gamma/beta.
    let gn = ResNet::<B>::from_safetensors(
        &cfg.clone().with_norm(Norm::GroupNorm { groups: 8 }),
        fixture("resnet-basic-small.weights.safetensors"),
        &Default::default(),
        LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(param_names(&gn).len(), n);

    let gcfg = Gpt2Config::custom(512, 64, 64, 2, 4);
    let g = Gpt2::<AB>::from_safetensors(
        &gcfg,
        fixture("gpt2-tiny.weights.safetensors"),
        &dev,
        LoadOptions::default(),
    )
    .unwrap();
    let ids = Tensor::<AB, 2, Int>::from_data([[1, 2, 3, 4]], &dev);
    let grads = g.loss_per_sample(ids).sum().backward();
    assert!(g.transformer.wte.weight.grad(&grads).is_some());
    assert!(g.transformer.h[0]
        .attn
        .c_attn
        .bias
        .as_ref()
        .unwrap()
        .grad(&grads)
        .is_some());
}

#[test]
fn progress_bar_option_loads() {
    let cfg = ViTConfig::custom(64, 2, 4, 128, 32, 8, 10);
    let m = ViTForImageClassification::<B>::from_safetensors(
        &cfg,
        fixture("vit-tiny.weights.safetensors"),
        &dev(),
        LoadOptions::with_progress(),
    );
    assert!(m.is_ok());
}

#[test]
fn typed_errors_never_panic() {
    let dir = std::env::temp_dir().join(format!("burn-dp-models-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.bin");
    std::fs::write(&garbage, b"\x08\x01\x12\xffnot a model at all").unwrap();
    let gcfg = Gpt2Config::custom(512, 64, 64, 2, 4);

    // Not a file.
    let e = Gpt2::<B>::from_safetensors(
        &gcfg,
        dir.join("nope.safetensors"),
        &dev(),
        LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::Io { .. }), "{e}");
    // Corrupt safetensors / ONNX.
    let e =
        Gpt2::<B>::from_safetensors(&gcfg, &garbage, &dev(), LoadOptions::default()).unwrap_err();
    assert!(matches!(e, ImportError::Safetensors { .. }), "{e}");
    let e = Gpt2::<B>::from_onnx(&gcfg, &garbage, &dev(), LoadOptions::default()).unwrap_err();
    assert!(matches!(e, ImportError::OnnxDecode { .. }), "{e}");
    // Truncated ONNX.
    let bytes = std::fs::read(fixture("vit-tiny.dynamo.onnx")).unwrap();
    let trunc = dir.join("trunc.onnx");
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let vcfg = ViTConfig::custom(64, 2, 4, 128, 32, 8, 10);
    let e =
        ViTForImageClassification::<B>::from_onnx(&vcfg, &trunc, &dev(), LoadOptions::default())
            .unwrap_err();
    assert!(matches!(e, ImportError::OnnxDecode { .. }), "{e}");

    // Wrong shape (config does not match the file): names the weight.
    let wrong = Gpt2Config::custom(512, 64, 32, 2, 4);
    let e = Gpt2::<B>::from_safetensors(
        &wrong,
        fixture("gpt2-tiny.weights.safetensors"),
        &dev(),
        LoadOptions::default(),
    )
    .unwrap_err();
    match e {
        ImportError::ShapeMismatch { name, .. } => assert_eq!(name, "transformer.wte.weight"),
        e => panic!("{e}"),
    }
    let e = Gpt2::<B>::from_onnx(
        &wrong,
        fixture("gpt2-tiny.dynamo.onnx"),
        &dev(),
        LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::ShapeMismatch { .. }), "{e}");
    // Missing weight: more layers than the file has.
    let deeper = Gpt2Config::custom(512, 64, 64, 3, 4);
    let e = Gpt2::<B>::from_safetensors(
        &deeper,
        fixture("gpt2-tiny.weights.safetensors"),
        &dev(),
        LoadOptions::default(),
    )
    .unwrap_err();
    match e {
        ImportError::MissingWeight { name, .. } => {
            assert!(name.starts_with("transformer.h.2."), "{name}")
        }
        e => panic!("{e}"),
    }
    // Unknown layout: graph structure does not match the config.
    let e = Gpt2::<B>::from_onnx(
        &deeper,
        fixture("gpt2-tiny.dynamo.onnx"),
        &dev(),
        LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::OnnxLayout { .. }), "{e}");
    let e = ResNet::<B>::from_onnx(
        &ResNetConfig::new(
            BlockKind::Basic,
            vec![2, 2, 2, 2],
            vec![16, 32, 64, 128],
            10,
        )
        .with_norm(Norm::Folded),
        fixture("vit-tiny.dynamo.onnx"),
        &dev(),
        LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::OnnxLayout { .. }), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn onnx_tied_embedding_found_through_graph() {
    // The dynamo export stores the tied table once, as `lm_head.weight`, used by the Gather.
    let cfg = Gpt2Config::custom(512, 64, 64, 2, 4);
    let w = gpt2::onnx_weights(
        &cfg,
        OnnxFile::open(fixture("gpt2-tiny.dynamo.onnx")).unwrap(),
    )
    .unwrap();
    assert!(w.contains("transformer.wte.weight"));
    assert!(!w.contains("lm_head.weight"));
    // The legacy ViT export renames transposed weights (`onnx::MatMul_293`).
    let vcfg = ViTConfig::custom(64, 2, 4, 128, 32, 8, 10);
    let mut w = vit::onnx_weights(
        &vcfg,
        OnnxFile::open(fixture("vit-tiny.legacy.onnx")).unwrap(),
    )
    .unwrap();
    let q = w
        .fetch("vit.layers.0.attention.q_proj.weight")
        .unwrap()
        .unwrap();
    let mut st = SafetensorsFile::open(fixture("vit-tiny.weights.safetensors")).unwrap();
    let r = st
        .fetch("vit.layers.0.attention.q_proj.weight")
        .unwrap()
        .unwrap();
    assert_eq!(q.shape, r.shape);
    assert_eq!(q.data, r.data);
}

#[test]
fn fold_batchnorm_math() {
    let w = RawTensor::new(vec![2, 1], vec![1.0, 2.0]);
    let (fw, fb) = resnet::fold_batchnorm(
        &w,
        None,
        &[2.0, 1.0],
        &[0.5, 0.0],
        &[1.0, -1.0],
        &[3.0, 0.0],
        1.0,
    );
    assert_eq!(fw.data, vec![1.0, 2.0]);
    assert_eq!(fb, vec![-0.5, 1.0]);
}

fn rss_anon_kb() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("RssAnon:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Loading GPT-2 small (124M params, 498 MB of f32) from a safetensors file of the HF layout
/// needs about the weights plus one tensor of anonymous memory: the file is memory-mapped and
/// converted tensor by tensor. Writes a 500 MB temporary file; run alone:
/// `cargo test -p burn-dp-models --lib -- --ignored gpt2_small_streaming --test-threads 1`.
#[test]
#[ignore]
fn gpt2_small_streaming_memory() {
    use std::io::Write;
    let cfg = Gpt2Config::small();
    let m = cfg.init::<B>(&dev());
    // HF layout: Conv1D [in, out] (= burn layout), tied head stored once.
    let tensors: Vec<(String, Vec<usize>)> = crate::load::collect_params::<B, _>(&m)
        .into_iter()
        .map(|(_, n, s, _)| (n, s))
        .collect();
    drop(m);
    let path = std::env::temp_dir().join(format!("gpt2-small-{}.safetensors", std::process::id()));
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (n, s) in &tensors {
        let bytes = s.iter().product::<usize>() * 4;
        header.insert(n.clone(), serde_json::json!({"dtype": "F32", "shape": s, "data_offsets": [offset, offset + bytes]}));
        offset += bytes;
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
        f.write_all(&h).unwrap();
        let chunk = vec![0u8; 1 << 20];
        let mut left = offset;
        while left > 0 {
            let k = left.min(chunk.len());
            f.write_all(&chunk[..k]).unwrap();
            left -= k;
        }
    }
    let largest = tensors
        .iter()
        .map(|(_, s)| s.iter().product::<usize>() * 4)
        .max()
        .unwrap();
    let base = rss_anon_kb();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let sampler = std::thread::spawn(move || {
        let mut peak = 0;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            peak = peak.max(rss_anon_kb());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        peak
    });
    let model =
        Gpt2::<B>::from_safetensors(&cfg, &path, &dev(), LoadOptions::with_progress()).unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap();
    let _ = std::fs::remove_file(&path);
    let weights_mb = offset as f64 / 1e6;
    let extra_mb = (peak.saturating_sub(base)) as f64 * 1024.0 / 1e6 - weights_mb;
    println!(
        "weights {weights_mb:.0} MB, largest tensor {:.0} MB, peak extra anonymous memory above the weights {extra_mb:.1} MB (peak {peak} kB, base {base} kB)",
        largest as f64 / 1e6
    );
    assert!(
        extra_mb < 3.0 * largest as f64 / 1e6 + 50.0,
        "{extra_mb} MB above the weights"
    );
    assert_eq!(count_params::<B, _>(&model), 124_439_808);
}

#[test]
fn torch_params_layouts_and_freezing() {
    // Layouts: torch Linear weights are transposed (ViT, ResNet fc), HF GPT-2 Conv1D is not.
    let vit = ViTConfig::custom(64, 1, 4, 128, 32, 8, 10).init::<AB>(&dev());
    let layout = |ps: &[TorchParam], n: &str| ps.iter().find(|p| p.name == n).unwrap().layout;
    let vp = vit.torch_params();
    assert_eq!(layout(&vp, "classifier.weight"), Layout::Transposed);
    assert_eq!(
        layout(&vp, "vit.layers.0.attention.q_proj.weight"),
        Layout::Transposed
    );
    assert_eq!(layout(&vp, "classifier.bias"), Layout::Same);
    assert_eq!(
        layout(&vp, "vit.embeddings.patch_embeddings.projection.weight"),
        Layout::Same
    );
    let gp = Gpt2Config::custom(50, 16, 32, 1, 4)
        .init::<AB>(&dev())
        .torch_params();
    assert_eq!(
        layout(&gp, "transformer.h.0.attn.c_attn.weight"),
        Layout::Same
    );
    let untied = Gpt2Config::custom(50, 16, 32, 1, 4).with_tied_head(false);
    let gp = untied.init::<AB>(&dev()).torch_params();
    assert_eq!(layout(&gp, "lm_head.weight"), Layout::Transposed);
    let rp = ResNetConfig::resnet18(10).init::<AB>(&dev()).torch_params();
    assert_eq!(layout(&rp, "fc.weight"), Layout::Transposed);
    assert_eq!(layout(&rp, "layer1.0.conv1.weight"), Layout::Same);

    // burn [2, 3] rows -> torch [3, 2], row by row for [B, numel] data.
    let p = TorchParam {
        id: burn::module::ParamId::new(),
        name: "x.weight".into(),
        burn_shape: vec![2, 3],
        layout: Layout::Transposed,
    };
    assert_eq!(p.torch_shape(), vec![3, 2]);
    let rows: Vec<f32> = (0..12).map(|v| v as f32).collect();
    assert_eq!(
        p.burn_to_torch(&rows),
        vec![0., 3., 1., 4., 2., 5., 6., 9., 7., 10., 8., 11.]
    );

    // burn-dp's bias-only policy (burn paths: `.bias` and LayerNorm's `.beta`) trains exactly
    // the parameters whose torch names end in `.bias`.
    let (frozen, _) = burn_dp::freeze(vit, &burn_dp::FreezePolicy::BiasOnly).unwrap();
    let mut visitor = Trainable(Vec::new());
    frozen.visit(&mut visitor);
    let names: std::collections::HashMap<_, _> =
        param_names::<AB, _>(&frozen).into_iter().collect();
    assert!(!visitor.0.is_empty());
    for (id, trainable) in visitor.0 {
        assert_eq!(trainable, names[&id].ends_with(".bias"), "{}", names[&id]);
    }
}

struct Trainable(Vec<(burn::module::ParamId, bool)>);

impl burn::module::ModuleVisitor<AB> for Trainable {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<AB, D>>) {
        self.0.push((param.id, param.val().is_require_grad()));
    }
}

#[test]
fn gelu_gradient_is_exact() {
    // d/dx [x Φ(x)] = Φ(x) + x φ(x); burn's own `gelu_backward` is the tanh approximation's.
    let xs = [-3.0f32, -1.5, -0.3, 0.0, 0.4, 1.2, 2.5];
    let x = Tensor::<AB, 1>::from_floats(xs, &dev()).require_grad();
    let g = Activation::Gelu.forward(x.clone()).sum().backward();
    let got: Vec<f32> = x.grad(&g).unwrap().into_data().to_vec().unwrap();
    for (x, got) in xs.iter().zip(got) {
        let x = *x as f64;
        let phi = (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let cdf = 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
        let want = cdf + x * phi;
        assert!((got as f64 - want).abs() < 2e-6, "x = {x}: {got} vs {want}");
    }
}

/// erf to ~1e-12 (Taylor series; |x| ≤ 3 here).
fn erf(x: f64) -> f64 {
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-17 {
        n += 1.0;
        term *= -x * x / n;
        sum += term / (2.0 * n + 1.0);
    }
    2.0 / std::f64::consts::PI.sqrt() * sum
}

#[test]
fn gpt2_loader_validates_config_and_head_tying() {
    // An inconsistent configuration is a typed error from every loader, before any weight.
    let bad = Gpt2Config::custom(512, 64, 64, 2, 3);
    let mut empty = std::collections::HashMap::<String, RawTensor>::new();
    let e = Gpt2::<B>::from_source(&bad, &mut empty, &dev(), LoadOptions::default()).unwrap_err();
    assert!(matches!(e, ImportError::Config(_)), "{e}");
    let e = Gpt2::<B>::from_safetensors(
        &bad,
        fixture("gpt2-tiny.weights.safetensors"),
        &dev(),
        LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::Config(_)), "{e}");
    let e = Gpt2::<B>::from_onnx(
        &Gpt2Config::custom(0, 64, 64, 2, 4),
        fixture("gpt2-tiny.dynamo.onnx"),
        &dev(),
        LoadOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, ImportError::Config(_)), "{e}");

    // The fixture checkpoint is tied (the table stored once, here as `lm_head.weight`); store
    // it as `transformer.wte.weight`.
    let st = SafetensorsFile::open(fixture("gpt2-tiny.weights.safetensors")).unwrap();
    let mut tensors: std::collections::HashMap<String, RawTensor> = st
        .names()
        .into_iter()
        .map(|n| {
            let t = st.read_f32(&n).unwrap().unwrap();
            match n.as_str() {
                "lm_head.weight" => ("transformer.wte.weight".to_string(), t),
                _ => (n, t),
            }
        })
        .collect();
    assert!(!tensors.contains_key("lm_head.weight"));
    let cfg = Gpt2Config::custom(512, 64, 64, 2, 4);
    // Untied configuration, tied checkpoint: the head is missing, by name.
    let untied = cfg.clone().with_tied_head(false);
    let e =
        Gpt2::<B>::from_source(&untied, &mut tensors, &dev(), LoadOptions::default()).unwrap_err();
    match e {
        ImportError::MissingWeight { name, .. } => assert_eq!(name, "lm_head.weight"),
        e => panic!("{e}"),
    }
    // A head equal to the table loads tied; an untied head is refused by a tied configuration
    // instead of being dropped, and loads with an untied one.
    let mut head = tensors["transformer.wte.weight"].clone();
    tensors.insert("lm_head.weight".into(), head.clone());
    assert!(Gpt2::<B>::from_source(&cfg, &mut tensors, &dev(), LoadOptions::default()).is_ok());
    head.data[0] += 1.0;
    tensors.insert("lm_head.weight".into(), head);
    let e = Gpt2::<B>::from_source(&cfg, &mut tensors, &dev(), LoadOptions::default()).unwrap_err();
    assert!(matches!(e, ImportError::Config(_)), "{e}");
    let m = Gpt2::<B>::from_source(&untied, &mut tensors, &dev(), LoadOptions::default()).unwrap();
    assert!(m.lm_head.is_some());
}

#[test]
fn configs_read_with_serde() {
    let cfg = ResNetConfig::from_json(
        r#"{"block": "bottleneck", "layers": [1, 2], "widths": [8, 16], "num_classes": 5,
            "norm": "batchnorm (eval mode)"}"#,
    )
    .unwrap();
    assert_eq!(
        cfg,
        ResNetConfig::new(BlockKind::Bottleneck, vec![1, 2], vec![8, 16], 5)
    );
    for bad in [
        r#"{"block": "dense", "layers": [1], "widths": [8], "num_classes": 5}"#,
        r#"{"block": "basic", "widths": [8], "num_classes": 5}"#,
        r#"{"block": "basic", "layers": [1, 1], "widths": [8], "num_classes": 5}"#,
        r#"{"block": "basic", "layers": [-1], "widths": [8], "num_classes": 5}"#,
        "not json",
    ] {
        let e = ResNetConfig::from_json(bad).unwrap_err();
        assert!(matches!(e, ImportError::Config(_)), "{bad}: {e}");
    }
    // HF configs: defaults for absent keys, `null` as absent, labels from `id2label`.
    let g = Gpt2Config::from_hf_json(
        r#"{"vocab_size": 50, "n_positions": 16, "n_embd": 32, "n_layer": 1, "n_head": 4,
            "n_inner": null, "resid_pdrop": 0.1, "embd_pdrop": null}"#,
    )
    .unwrap();
    assert_eq!(
        g,
        Gpt2Config::custom(50, 16, 32, 1, 4)
            .with_dropout(0.1)
            .with_tied_head(true)
    );
    let e = Gpt2Config::from_hf_json(r#"{"vocab_size": 50, "n_positions": 16}"#).unwrap_err();
    assert!(e.to_string().contains("n_embd"), "{e}");
    let v = ViTConfig::from_hf_json(
        r#"{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "image_size": 16, "patch_size": 8,
            "id2label": {"0": "cat", "1": "dog", "2": "emu"}}"#,
    )
    .unwrap();
    assert_eq!(v, ViTConfig::custom(32, 2, 4, 64, 16, 8, 3));
}

mod properties {
    use proptest::collection::vec;
    use proptest::prelude::*;

    use crate::*;

    proptest! {
        /// Folding BatchNorm into a (1x1) convolution gives the convolution followed by the
        /// BatchNorm, for any weights, statistics and input.
        #[test]
        fn folded_batchnorm_equals_conv_then_batchnorm(
            (o, per) in (1usize..4, 1usize..5),
            seed in vec(-2.0f32..2.0, 64),
            var in vec(0.0f32..3.0, 4),
            with_bias in any::<bool>(),
        ) {
            let part = |at: usize, n: usize| seed[at..at + n].to_vec();
            let w = RawTensor::new(vec![o, per], part(0, o * per));
            let x = part(16, per);
            let (gamma, beta, mean) = (part(32, o), part(40, o), part(48, o));
            let bias = with_bias.then(|| part(56, o));
            let eps = resnet::BN_EPS;
            let (fw, fb) = resnet::fold_batchnorm(
                &w, bias.as_deref(), &gamma, &beta, &mean, &var[..o], eps,
            );
            for c in 0..o {
                let dot = |w: &[f32]| -> f64 {
                    w[c * per..(c + 1) * per]
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| (*a as f64) * (*b as f64))
                        .sum()
                };
                let b0 = bias.as_ref().map_or(0.0, |b| b[c] as f64);
                let inv_std = 1.0 / (var[c] as f64 + eps).sqrt();
                let bn = (dot(&w.data) + b0 - mean[c] as f64) * inv_std * gamma[c] as f64
                    + beta[c] as f64;
                let folded = dot(&fw.data) + fb[c] as f64;
                // f32 rounding of the folded weights and bias, relative to what they sum.
                let scale = 1.0
                    + (dot(&w.data).abs() + b0.abs() + (mean[c] as f64).abs())
                        * inv_std
                        * (gamma[c] as f64).abs()
                    + (beta[c] as f64).abs();
                prop_assert!((folded - bn).abs() <= 1e-5 * scale, "{folded} vs {bn}");
            }
        }

        /// Rearranging per-sample gradients of a transposed parameter into torch layout and
        /// back (the torch [c, r] parameter read as a burn [r, c] one) is the identity.
        #[test]
        fn burn_to_torch_round_trips(rows in 1usize..6, cols in 1usize..6, batch in 1usize..4) {
            let p = |shape: Vec<usize>| TorchParam {
                id: burn::module::ParamId::new(),
                name: "w.weight".into(),
                burn_shape: shape,
                layout: Layout::Transposed,
            };
            let data: Vec<f32> = (0..rows * cols * batch).map(|v| v as f32).collect();
            let torch = p(vec![rows, cols]).burn_to_torch(&data);
            prop_assert_eq!(p(vec![rows, cols]).torch_shape(), vec![cols, rows]);
            prop_assert_eq!(p(vec![cols, rows]).burn_to_torch(&torch), data);
        }

        /// Any torchvision-form JSON with consistent lists reads back as the same config.
        #[test]
        fn resnet_json_reads_any_consistent_config(
            bottleneck in any::<bool>(),
            stages in vec((0usize..4, 1usize..64), 1..6),
            classes in 1usize..1000,
        ) {
            let (layers, widths): (Vec<usize>, Vec<usize>) = stages.into_iter().unzip();
            let block = if bottleneck { BlockKind::Bottleneck } else { BlockKind::Basic };
            let json = serde_json::json!({
                "block": if bottleneck { "bottleneck" } else { "basic" },
                "layers": layers, "widths": widths, "num_classes": classes,
            });
            let cfg = ResNetConfig::from_json(&json.to_string()).unwrap();
            prop_assert_eq!(cfg, ResNetConfig::new(block, layers, widths, classes));
        }
    }
}
