//! Non-private training: public pre-training, and the non-private baseline of a sweep.

use std::path::Path;

use crate::*;

/// Settings of [`train_non_private`].
#[derive(Debug, Clone, Copy)]
pub struct PlainTraining {
    /// Passes over the data.
    pub epochs: u64,
    /// Examples per step.
    pub batch_size: usize,
    /// Learning rate (AdamW).
    pub lr: f64,
    /// Seed of the shuffling order (the data this loop reads is public, or the run is a
    /// non-private baseline: no privacy is claimed for it).
    pub seed: u64,
}

/// The one non-private training loop of the examples (public pre-training, and the non-private
/// baseline of `--sweep`): plain minibatch AdamW on the mean of `losses(model, indices)` over
/// `n` examples, `epochs` passes in an order shuffled from `settings.seed`. No clipping, no
/// noise: **never call it on private data in a run that claims privacy.**
pub fn train_non_private<B, M, F>(
    mut model: M,
    n: usize,
    settings: PlainTraining,
    label: &str,
    quiet: bool,
    mut losses: F,
) -> M
where
    B: burn::tensor::backend::AutodiffBackend,
    M: burn::module::AutodiffModule<B>,
    F: FnMut(&M, &[usize]) -> burn::tensor::Tensor<B, 1>,
{
    use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
    let batch = settings.batch_size.max(1);
    let mut optim = AdamWConfig::new().init::<B, M>();
    let steps = settings.epochs * n.div_ceil(batch) as u64;
    let bar = progress(steps, label, quiet);
    let mut order: Vec<usize> = (0..n).collect();
    let mut state = settings.seed ^ 0x9E37_79B9_7F4A_7C15;
    for _ in 0..settings.epochs {
        // Fisher–Yates with a xorshift64* stream: the same order on every machine.
        for i in (1..order.len()).rev() {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
            order.swap(i, (r % (i as u64 + 1)) as usize);
        }
        for chunk in order.chunks(batch) {
            let loss = losses(&model, chunk).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(settings.lr, model, grads);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    model
}

/// Settings of [`pretrain_public`].
#[derive(Debug, Clone, Copy)]
pub struct PublicPretraining {
    /// Passes over the public data.
    pub epochs: u64,
    /// Learning rate (AdamW, batches of 32).
    pub lr: f64,
    /// Seed of the initialisation and of the shuffling order (public).
    pub seed: u64,
}

/// Public pre-training, cached in `path`. When `path` does not exist: seeds the backend with
/// `settings.seed`, builds the model, trains it without privacy on the `n` public examples
/// ([`train_non_private`], batches of 32) and saves it as safetensors. Then, always, loads
/// `path` into a freshly built model, so a cached and a fresh run fine-tune the same weights.
/// Returns the model and whether it was pre-trained now (`false`: read from the cache).
///
/// `losses` must read the public part only: nothing here is private.
///
/// # Shapes
/// `losses` returns `[P]`, one loss per index.
pub fn pretrain_public<B, M, F>(
    path: &Path,
    settings: PublicPretraining,
    n: usize,
    quiet: bool,
    build: impl Fn() -> Result<M, Error>,
    device: &B::Device,
    losses: F,
) -> Result<(M, bool), Error>
where
    B: burn::tensor::backend::AutodiffBackend,
    M: burn::module::AutodiffModule<B>,
    F: Fn(&M, &[usize]) -> burn::tensor::Tensor<B, 1>,
{
    let trained_now = !path.exists();
    if trained_now {
        B::seed(device, settings.seed);
        let model = train_non_private(
            build()?,
            n,
            PlainTraining {
                epochs: settings.epochs,
                batch_size: 32,
                lr: settings.lr,
                seed: settings.seed,
            },
            "public pre-training",
            quiet,
            losses,
        );
        save_safetensors::<B, M>(&model, path)?;
        eprintln!("pre-trained weights written: {}", path.display());
    } else {
        eprintln!("pre-trained weights read: {}", path.display());
    }
    Ok((
        load_safetensors::<B, M>(build()?, path, device)?,
        trained_now,
    ))
}
