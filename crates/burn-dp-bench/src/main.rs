//! `bench engine`: cost of one per-sample step (ghost norm, instantiation, the cost model's choice)
//! relative to an ordinary `Autodiff` backward and to a batch-of-one loop, on the CPU (NdArray),
//! for an MLP, a small CNN and a 2-layer transformer encoder. One JSON line per model and mode;
//! all ratios come from timings taken side by side in this one run.
//!
//! Usage: `cargo run --release -p burn-dp-bench --bin bench -- engine [--iters N]`
//!
//! `bench train`: see `train.rs`.

mod train;

use std::time::Instant;

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::transformer::{
    TransformerEncoder, TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use burn_dp::{batch, clipped_backward, ClippingFn, DpAutodiff, NormMode, PerSampleConfig};

type Inner = NdArray<f32>;
type Plain = Autodiff<Inner>;
type Dp = DpAutodiff<Inner>;

/// A model under test: per-sample losses from a float batch and integer targets.
trait Bench<B: Backend>: Module<B> {
    fn losses(&self, x: Tensor<B, 3>, y: Tensor<B, 1, Int>) -> Tensor<B, 1>;
}

fn ce<B: Backend>(logits: Tensor<B, 2>, y: Tensor<B, 1, Int>) -> Tensor<B, 1> {
    let [b, _] = logits.dims();
    log_softmax(logits, 1)
        .gather(1, y.reshape([b, 1]))
        .reshape([b])
        .neg()
}

#[derive(Module, Debug)]
struct Mlp<B: Backend> {
    fc1: Linear<B>,
    fc2: Linear<B>,
    fc3: Linear<B>,
}

impl<B: Backend> Bench<B> for Mlp<B> {
    fn losses(&self, x: Tensor<B, 3>, y: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let [b, t, d] = x.dims();
        let h = relu(self.fc1.forward(x.reshape([b, t * d])));
        ce(self.fc3.forward(relu(self.fc2.forward(h))), y)
    }
}

#[derive(Module, Debug)]
struct Cnn<B: Backend> {
    c1: Conv2d<B>,
    c2: Conv2d<B>,
    fc: Linear<B>,
}

impl<B: Backend> Bench<B> for Cnn<B> {
    fn losses(&self, x: Tensor<B, 3>, y: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let [b, c, hw] = x.dims();
        let side = (hw as f64).sqrt() as usize;
        let h = relu(self.c1.forward(x.reshape([b, c, side, side])));
        let h = relu(self.c2.forward(h));
        let [_, ch, _, _] = h.dims();
        let pooled = h
            .reshape([b as i64, ch as i64, -1])
            .mean_dim(2)
            .reshape([b, ch]);
        ce(self.fc.forward(pooled), y)
    }
}

#[derive(Module, Debug)]
struct Encoder<B: Backend> {
    proj: Linear<B>,
    enc: TransformerEncoder<B>,
    head: Linear<B>,
}

impl<B: Backend> Bench<B> for Encoder<B> {
    fn losses(&self, x: Tensor<B, 3>, y: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let h = self
            .enc
            .forward(TransformerEncoderInput::new(self.proj.forward(x)));
        let [b, _, d] = h.dims();
        ce(self.head.forward(h.mean_dim(1).reshape([b, d])), y)
    }
}

fn mlp<B: Backend>(d: &B::Device) -> Mlp<B> {
    Mlp {
        fc1: LinearConfig::new(784, 256).init(d),
        fc2: LinearConfig::new(256, 128).init(d),
        fc3: LinearConfig::new(128, 10).init(d),
    }
}

fn cnn<B: Backend>(d: &B::Device) -> Cnn<B> {
    Cnn {
        c1: Conv2dConfig::new([3, 16], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(d),
        c2: Conv2dConfig::new([16, 32], [3, 3])
            .with_stride([2, 2])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init(d),
        fc: LinearConfig::new(32, 10).init(d),
    }
}

fn encoder<B: Backend>(d: &B::Device) -> Encoder<B> {
    Encoder {
        proj: LinearConfig::new(32, 64).init(d),
        enc: TransformerEncoderConfig::new(64, 128, 4, 2)
            .with_dropout(0.0)
            .init(d),
        head: LinearConfig::new(64, 10).init(d),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn time(iters: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    median(
        (0..iters)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn plain_step<M: AutodiffModule<Plain> + Bench<Plain>>(
    m: &M,
    x: &Tensor<Plain, 3>,
    y: &Tensor<Plain, 1, Int>,
) {
    let grads = m.losses(x.clone(), y.clone()).sum().backward();
    let _ = burn::optim::GradientsParams::from_grads(grads, m);
}

fn loop_step<M: AutodiffModule<Plain> + Bench<Plain>>(
    m: &M,
    x: &Tensor<Plain, 3>,
    y: &Tensor<Plain, 1, Int>,
) {
    let b = x.dims()[0];
    for i in 0..b {
        let grads = m
            .losses(x.clone().narrow(0, i, 1), y.clone().narrow(0, i, 1))
            .sum()
            .backward();
        let _ = burn::optim::GradientsParams::from_grads(grads, m);
    }
}

fn dp_step<M: AutodiffModule<Dp> + Bench<Dp>>(
    m: &M,
    x: &Tensor<Dp, 3>,
    y: &Tensor<Dp, 1, Int>,
    mode: NormMode,
) {
    let cfg = PerSampleConfig::new(ClippingFn::AUTOMATIC).with_norm_mode(mode);
    let out =
        clipped_backward(&cfg, m, m.losses(batch(x.clone()), y.clone())).expect("per-sample step");
    let _ = out.into_gradients(m);
}

fn run<MP, MD>(name: &str, iters: usize, shape: [usize; 3], plain: MP, dp: MD)
where
    MP: AutodiffModule<Plain> + Bench<Plain>,
    MD: AutodiffModule<Dp> + Bench<Dp>,
{
    let dev = Default::default();
    let x = Tensor::<Inner, 3>::random(shape, Distribution::Normal(0.0, 1.0), &dev);
    let y = Tensor::<Inner, 1, Int>::from_data(
        burn::tensor::TensorData::new(
            (0..shape[0] as i64).map(|i| i % 10).collect::<Vec<_>>(),
            [shape[0]],
        ),
        &dev,
    );
    let (xp, yp) = (
        Tensor::<Plain, 3>::from_inner(x.clone()),
        Tensor::<Plain, 1, Int>::from_inner(y.clone()),
    );
    let (xd, yd) = (
        Tensor::<Dp, 3>::from_inner(burn_dp::lift(x)),
        Tensor::<Dp, 1, Int>::from_data(y.into_data(), &dev),
    );
    let t_plain = time(iters, || plain_step(&plain, &xp, &yp));
    let t_loop = time(iters.div_ceil(4), || loop_step(&plain, &xp, &yp));
    for mode in [NormMode::Ghost, NormMode::Instantiate, NormMode::Auto] {
        let t = time(iters, || dp_step(&dp, &xd, &yd, mode));
        println!(
            "{}",
            serde_json::json!({
                "bench": "engine", "model": name, "batch": shape[0], "mode": format!("{mode:?}"),
                "per_sample_ms": t * 1e3, "plain_backward_ms": t_plain * 1e3, "batch_of_one_loop_ms": t_loop * 1e3,
                "ratio_vs_plain": t / t_plain, "ratio_vs_loop": t / t_loop,
            })
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let iters = args
        .iter()
        .position(|a| a == "--iters")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    match args.get(1).map(String::as_str) {
        Some("engine") | None => {
            let dev = Default::default();
            run(
                "mlp",
                iters,
                [64, 28, 28],
                mlp::<Plain>(&dev),
                mlp::<Dp>(&dev),
            );
            run(
                "cnn",
                iters,
                [32, 3, 32 * 32],
                cnn::<Plain>(&dev),
                cnn::<Dp>(&dev),
            );
            run(
                "transformer-2l",
                iters,
                [16, 32, 32],
                encoder::<Plain>(&dev),
                encoder::<Dp>(&dev),
            );
        }
        Some("train") => train_main(&args[2..]),
        Some(other) => {
            eprintln!("unknown benchmark `{other}`; available: engine, train");
            std::process::exit(2);
        }
    }
}

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn num(args: &[String], name: &str) -> Option<usize> {
    arg(args, name).map(|v| {
        v.parse().unwrap_or_else(|_| {
            eprintln!("{name} takes a number, got `{v}`");
            std::process::exit(2)
        })
    })
}

/// `bench train [--backend ndarray|cuda] [--models m1,m2] [--modes a,b] [--batch N] [--seq N]
/// [--image N] [--steps N] [--warmup N]`: one process per configuration, one JSON line each, then
/// the ratios of the goals.
fn train_main(args: &[String]) {
    let backend = arg(args, "--backend").unwrap_or("ndarray").to_string();
    if let Some(single) = arg(args, "--single") {
        let parts: Vec<&str> = single.split(':').collect();
        let cfg = train::Config {
            model: parts[0].to_string(),
            batch: parts[1].parse().expect("batch"),
            mode: parts[2].to_string(),
            seq: num(args, "--seq").unwrap_or(128),
            image: num(args, "--image").unwrap_or(224),
            steps: num(args, "--steps").unwrap_or(10),
            warmup: num(args, "--warmup").unwrap_or(3),
        };
        let out = match backend.as_str() {
            "ndarray" => train::run_one::<burn::backend::NdArray<f32>>(&cfg, &backend),
            #[cfg(feature = "cuda")]
            "cuda" => train::run_one::<burn_dp::Cuda>(&cfg, &backend),
            other => Err(format!(
                "backend `{other}` is not available in this build (cuda needs --features cuda)"
            )),
        };
        match out {
            Ok(v) => println!("{v}"),
            Err(e) => {
                println!(
                    "{}",
                    serde_json::json!({"bench": "train", "model": cfg.model, "mode": cfg.mode, "batch": cfg.batch, "error": e})
                );
            }
        }
        return;
    }
    let models: Option<Vec<String>> =
        arg(args, "--models").map(|m| m.split(',').map(String::from).collect());
    let modes: Vec<String> = arg(args, "--modes")
        .map(|m| m.split(',').map(String::from).collect())
        .unwrap_or_else(|| train::MODES.iter().map(|s| s.to_string()).collect());
    let exe = std::env::current_exe().expect("own path");
    let mut results: Vec<serde_json::Value> = Vec::new();
    for (model, anchor_batch) in train::anchors() {
        if models.as_ref().is_some_and(|m| !m.contains(&model)) {
            continue;
        }
        let b = num(args, "--batch").unwrap_or(anchor_batch);
        if results
            .iter()
            .any(|r| r["model"] == model.as_str() && r["batch"] == b)
        {
            continue; // an overridden batch makes anchor rows of one model identical
        }
        for mode in &modes {
            let mut cmd = std::process::Command::new(&exe);
            cmd.arg("train")
                .arg("--single")
                .arg(format!("{model}:{b}:{mode}"))
                .arg("--backend")
                .arg(&backend);
            for flag in ["--seq", "--image", "--steps", "--warmup"] {
                if let Some(v) = arg(args, flag) {
                    cmd.arg(flag).arg(v);
                }
            }
            let out = cmd.output().expect("run a configuration");
            let line = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or("")
                .to_string();
            let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
                serde_json::json!({"bench": "train", "model": model, "mode": mode, "batch": b,
                    "error": format!("exit {:?}: {}", out.status.code(), String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or(""))})
            });
            println!("{value}");
            results.push(value);
        }
    }
    // Ratios of the goals, from this run (and the fastDP anchor for GPT-2 small B=32).
    let get = |model: &str, b: usize, mode: &str, key: &str| -> Option<f64> {
        results
            .iter()
            .find(|r| r["model"] == model && r["batch"] == b && r["mode"] == mode)
            .and_then(|r| r[key].as_f64())
    };
    let mut seen = Vec::new();
    for r in &results {
        let (Some(model), Some(b)) = (r["model"].as_str(), r["batch"].as_u64()) else {
            continue;
        };
        if seen.contains(&(model.to_string(), b)) {
            continue;
        }
        seen.push((model.to_string(), b));
        let b = b as usize;
        let ratio = |num: &str, den: &str, key: &str| {
            Some(get(model, b, num, key)? / get(model, b, den, key)?)
        };
        let mut line = serde_json::json!({
            "bench": "train-ratios", "backend": backend, "model": model, "batch": b,
            "dp_full_over_plain_full": ratio("dp-full", "plain-full", "samples_per_s"),
            "dp_bitfit_over_plain_full": ratio("dp-bitfit", "plain-full", "samples_per_s"),
            "peak_mem_dp_full_over_plain_full": ratio("dp-full", "plain-full", "peak_rss_gib"),
        });
        if model == "gpt2-small" && b == 32 {
            line["dp_full_over_fastdp_mixopt_anchor"] =
                serde_json::json!(get(model, b, "dp-full", "samples_per_s").map(|s| s / 470.46));
        }
        println!("{line}");
    }
}
