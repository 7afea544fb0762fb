//! `bench train`: training throughput (examples/s) and peak memory for the anchor shapes, in four
//! modes — non-DP full, non-DP bias-only, DP full (book-keeping, automatic clipping), DP bias-only —
//! one JSON line per configuration. Each configuration runs in its own process (the binary
//! re-executes itself) so peak-memory figures do not mix.
//!
//! Anchor shapes (`../shared/anchors`): GPT-2 small B=32 and B=96, medium B=16, large B=8 (sequence
//! 128, untied head), ViT-B/16 B=32, ResNet-50 with GroupNorm B=32 at 224². `--batch`, `--seq` and
//! `--image` override them (for CPU runs, which cannot afford the anchor sizes).

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use burn_dp::{
    batch, freeze, AccountantKind, ClippingFn, DpAutodiff, DpOptimizer, FreezePolicy, NoiseSource,
    PerSampleConfig, PrivacyState,
};
use burn_dp_models::{Gpt2Config, Norm, ResNetConfig, ViTConfig};

/// One benchmark configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub model: String,
    pub batch: usize,
    pub seq: usize,
    pub image: usize,
    pub mode: String,
    pub steps: usize,
    pub warmup: usize,
}

/// The anchor configurations.
pub fn anchors() -> Vec<(String, usize)> {
    vec![
        ("gpt2-small".into(), 32),
        ("gpt2-small".into(), 96),
        ("gpt2-medium".into(), 16),
        ("gpt2-large".into(), 8),
        ("vit-b16".into(), 32),
        ("resnet50-gn".into(), 32),
    ]
}

pub const MODES: [&str; 4] = ["plain-full", "plain-bitfit", "dp-full", "dp-bitfit"];

fn peak_rss_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / (1024.0 * 1024.0))
}

/// Inputs of one step.
enum Input<B: Backend> {
    Tokens(Tensor<B, 2, Int>),
    Images(Tensor<B, 4>, Tensor<B, 1, Int>),
}

fn input<B: Backend>(
    cfg: &Config,
    vocab: usize,
    device: &B::Device,
    mark: impl Fn(Tensor<B, 4>) -> Tensor<B, 4>,
) -> Input<B> {
    if cfg.model.starts_with("gpt2") {
        let ids = Tensor::<B, 2>::random(
            [cfg.batch, cfg.seq],
            Distribution::Uniform(0.0, vocab as f64 - 1.0),
            device,
        )
        .int();
        Input::Tokens(ids)
    } else {
        let x = Tensor::<B, 4>::random(
            [cfg.batch, 3, cfg.image, cfg.image],
            Distribution::Normal(0.0, 1.0),
            device,
        );
        let y = Tensor::<B, 2>::random([cfg.batch, 1], Distribution::Uniform(0.0, 9.0), device)
            .int()
            .reshape([cfg.batch]);
        Input::Images(mark(x), y)
    }
}

/// Runs one configuration on backend `Inner` and returns its JSON line.
pub fn run_one<Inner: burn_dp::NoiseBackend>(
    cfg: &Config,
    backend: &str,
) -> Result<serde_json::Value, String> {
    let device: Inner::Device = Default::default();
    let dp = cfg.mode.starts_with("dp");
    let policy = if cfg.mode.ends_with("bitfit") {
        FreezePolicy::BiasOnly
    } else {
        FreezePolicy::None
    };
    let err = |e: burn_dp::DpError| e.to_string();
    let vocab = 50257;
    macro_rules! bench_model {
        ($init:expr, $losses:expr, $optim:expr, $lr:expr) => {{
            if dp {
                type B<I> = DpAutodiff<I>;
                let (mut model, report) = freeze($init(&device), &policy).map_err(err)?;
                let privacy =
                    PrivacyState::with_noise_multiplier(1.0, 0.01, 1e-5, AccountantKind::Rdp)
                        .map_err(err)?;
                let clipping = PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 });
                let mut optim = DpOptimizer::new(
                    $optim,
                    clipping,
                    privacy,
                    cfg.batch as f64,
                    NoiseSource::FixedSeedForExperiments(0),
                )
                .map_err(err)?;
                let inp = input::<B<Inner>>(cfg, vocab, &device, batch);
                let mut times = Vec::new();
                for i in 0..cfg.warmup + cfg.steps {
                    let t = Instant::now();
                    let losses = $losses(&model, &inp);
                    optim.backward(&model, losses).map_err(err)?;
                    model = optim.step($lr, model).map_err(err)?;
                    Inner::sync(&device).map_err(|e| format!("{e:?}"))?;
                    if i >= cfg.warmup {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
                (times, report)
            } else {
                type B<I> = burn::backend::Autodiff<I>;
                let (mut model, report) = freeze($init(&device), &policy).map_err(err)?;
                let mut optim = $optim;
                let inp = input::<B<Inner>>(cfg, vocab, &device, |x| x);
                let mut times = Vec::new();
                for i in 0..cfg.warmup + cfg.steps {
                    let t = Instant::now();
                    let loss = $losses(&model, &inp).mean();
                    let grads = GradientsParams::from_grads(loss.backward(), &model);
                    model = optim.step($lr, model, grads);
                    Inner::sync(&device).map_err(|e| format!("{e:?}"))?;
                    if i >= cfg.warmup {
                        times.push(t.elapsed().as_secs_f64());
                    }
                }
                (times, report)
            }
        }};
    }
    let gpt2 = |name: &str| -> Gpt2Config {
        let c = match name {
            "gpt2-medium" => Gpt2Config::medium(),
            "gpt2-large" => Gpt2Config::large(),
            _ => Gpt2Config::small(),
        };
        c.with_tied_head(false)
    };
    let (times, report) = match cfg.model.as_str() {
        m if m.starts_with("gpt2") => {
            let c = gpt2(m);
            bench_model!(
                |d| c.init(d),
                |m: &burn_dp_models::Gpt2<_>, inp: &Input<_>| match inp {
                    Input::Tokens(ids) => m.loss_per_sample(ids.clone(), None),
                    Input::Images(..) => unreachable!(),
                },
                AdamWConfig::new().init(),
                1e-4
            )
        }
        "vit-b16" => {
            let mut c = ViTConfig::base_patch16(1000);
            c.image_size = cfg.image;
            bench_model!(
                |d| c.init(d),
                |m: &burn_dp_models::ViTForImageClassification<_>, inp: &Input<_>| match inp {
                    Input::Images(x, y) => m.loss_per_sample(x.clone(), y.clone()),
                    Input::Tokens(_) => unreachable!(),
                },
                AdamWConfig::new().init(),
                1e-4
            )
        }
        "resnet50-gn" => {
            let c = ResNetConfig::resnet50(1000).with_norm(Norm::GroupNorm { groups: 32 });
            bench_model!(
                |d| c.init(d),
                |m: &burn_dp_models::ResNet<_>, inp: &Input<_>| match inp {
                    Input::Images(x, y) => m.loss_per_sample(x.clone(), y.clone()),
                    Input::Tokens(_) => unreachable!(),
                },
                SgdConfig::new().init(),
                0.1
            )
        }
        other => return Err(format!("unknown model `{other}`")),
    };
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    Ok(serde_json::json!({
        "bench": "train", "backend": backend, "model": cfg.model, "mode": cfg.mode, "batch": cfg.batch,
        "seq": cfg.seq, "image": cfg.image, "steps": cfg.steps, "step_ms": mean * 1e3,
        "samples_per_s": cfg.batch as f64 / mean, "peak_rss_gib": peak_rss_gib(),
        "trainable_params": report.trainable, "total_params": report.total,
    }))
}
