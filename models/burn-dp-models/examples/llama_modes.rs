//! DP full, DP-BiTFiT and DP-LoRA on a tiny Llama-family model, and the same LoRA step without
//! privacy: trainable parameters and time per step, measured side by side in one run (the table
//! of the book chapter "Fine-tuning a Llama-family model privately").
//!
//!     cargo run -p burn-dp-models --example llama_modes
//!
//! Random weights and random tokens: this measures cost, not quality. Prints a Markdown table
//! and writes it to `target/llama_modes.md`.

use std::time::{Duration, Instant};

use burn::backend::{Autodiff, NdArray};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn_dp::{
    AccountantKind, ClippingFn, DpAutodiff, FreezePolicy, NoiseSource, PerSampleConfig,
    PrivacyState, PrivateSetup, PrivateTrainer, Schedule,
};
use burn_dp_models::{
    adapters_policy, is_adapter_param, Llama, LlamaConfig, LoraConfig, PretrainedModel,
    ProjectionBias,
};

type Inner = NdArray<f32>;
type Dp = DpAutodiff<Inner>;

const N: usize = 1024;
const T: usize = 32;
const BATCH: usize = 16;
const STEPS: usize = 8;
const LR: f64 = 1e-3;

/// Four layers of width 128, 4 query / 2 KV heads, q/k/v biases (so DP-BiTFiT has biases).
fn config() -> LlamaConfig {
    LlamaConfig::custom(512, 128, 344, 4, 4, 2)
        .with_bias(ProjectionBias::Qkv)
        .with_tied_head(true)
}

/// Token ids of the samples `indices` of a synthetic corpus.
fn tokens<B: Backend>(indices: &[usize], device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> = indices
        .iter()
        .flat_map(|&i| (0..T).map(move |t| ((i * 131 + t * 17 + i * t) % 512) as i64))
        .collect();
    Tensor::from_data(TensorData::new(ids, [indices.len(), T]), device)
}

// ANCHOR: modes
/// The three private fine-tuning modes of the chapter.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Full,
    BiTFiT,
    Lora,
}

/// What trains in each mode; DP-LoRA's model carries adapters on q and v (rank 8, α = 16).
fn policy(mode: Mode) -> FreezePolicy {
    match mode {
        Mode::Full => FreezePolicy::None,
        Mode::BiTFiT => FreezePolicy::BiasOnly,
        Mode::Lora => adapters_policy(false),
    }
}

fn lora() -> LoraConfig {
    LoraConfig::new(8, 16.0, &["q_proj", "v_proj"])
}
// ANCHOR_END: modes

/// Trainable parameters and mean time per physical batch of `BATCH` rows of one DP mode.
fn private(mode: Mode) -> Result<(usize, Duration), Box<dyn std::error::Error>> {
    let device = Default::default();
    // ANCHOR: private
    let mut model = config().init::<Dp>(&device);
    if let Mode::Lora = mode {
        model = model.with_lora(&lora(), &device)?;
    }
    let (model, report) = burn_dp::freeze(model, &policy(mode))?;
    let schedule = Schedule::from_epochs(N, BATCH, 1)?;
    let privacy = PrivacyState::for_target_epsilon(3.0, 1e-5, schedule, AccountantKind::Rdp)?;
    let mut trainer = PrivateTrainer::new(
        model,
        AdamConfig::new().init(),
        PrivateSetup {
            per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
            privacy,
            dataset_size: N,
            physical_batch_size: BATCH,
            noise: NoiseSource::Os,
        },
    )?;
    let step = |trainer: &mut PrivateTrainer<_, _, _>| {
        trainer.step(LR, |model: &Llama<Dp>, indices| {
            model.loss_per_sample(tokens::<Dp>(indices, &device))
        })
    };
    // ANCHOR_END: private
    step(&mut trainer)?; // warm-up
    let (mut time, mut batches) = (Duration::ZERO, 0);
    for _ in 0..STEPS {
        let start = Instant::now();
        let r = step(&mut trainer)?;
        time += start.elapsed();
        batches += r.physical_batches;
    }
    Ok((report.trainable, time / batches.max(1) as u32))
}

/// The same LoRA fine-tuning without privacy: an ordinary backward pass over `BATCH` rows.
fn non_private_lora() -> Result<(usize, Duration), Box<dyn std::error::Error>> {
    type B = Autodiff<Inner>;
    let device = Default::default();
    let model = config().init::<B>(&device).with_lora(&lora(), &device)?;
    let (mut model, _) = burn_dp::freeze(model, &adapters_policy(false))?;
    let trainable = model
        .torch_params()
        .iter()
        .filter(|p| is_adapter_param(&p.name))
        .map(|p| p.burn_shape.iter().product::<usize>())
        .sum();
    let mut optim = AdamConfig::new().init::<B, Llama<B>>();
    let mut time = Duration::ZERO;
    for s in 0..=STEPS {
        let indices: Vec<usize> = (0..BATCH).map(|i| (s * BATCH + i) % N).collect();
        let start = Instant::now();
        let loss = model.loss_per_sample(tokens::<B>(&indices, &device)).sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optim.step(LR, model, grads);
        if s > 0 {
            time += start.elapsed(); // step 0 is the warm-up
        }
    }
    Ok((trainable, time / STEPS as u32))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total = config().num_params();
    let mut rows = Vec::new();
    for (name, mode) in [
        ("DP full", Mode::Full),
        ("DP-BiTFiT", Mode::BiTFiT),
        ("DP-LoRA (r = 8, q and v)", Mode::Lora),
    ] {
        eprintln!("measuring {name} ({STEPS} steps) ...");
        rows.push((name, private(mode)?));
    }
    eprintln!("measuring non-private LoRA ({STEPS} steps) ...");
    rows.push(("LoRA, not private", non_private_lora()?));
    let full = rows[0].1 .1.as_secs_f64();
    let mut table = format!(
        "| mode | trainable parameters | ms per step of {BATCH} sequences | time / DP full |\n\
         |---|---|---|---|\n"
    );
    for (name, (trainable, time)) in &rows {
        table += &format!(
            "| {name} | {trainable} ({:.2} %) | {:.1} | {:.2} |\n",
            100.0 * *trainable as f64 / total as f64,
            time.as_secs_f64() * 1e3,
            time.as_secs_f64() / full
        );
    }
    println!("{table}");
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/llama_modes.md");
    std::fs::write(&out, &table)?;
    eprintln!("table written to {}", out.display());
    Ok(())
}
