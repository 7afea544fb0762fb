//! The fine-tuning of an example on its private data, privately or as the non-private baseline,
//! with the same per-sample losses: what both examples' runs share after their models are built.

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::AdamWConfig;
use burn::tensor::Tensor;
use burn_dp::{DpAutodiff, FreezeReport, NoiseBackend, PrivateSetup};

use crate::*;

/// What [`fine_tune`] needs besides the model and the losses.
pub struct FineTuning<'a> {
    /// The shared privacy, clipping, backend and run-control flags.
    pub train: &'a PrivateTrainingArgs,
    /// `--non-private`: the baseline without privacy (never a private result).
    pub non_private: bool,
    /// The data-parallel flags (one process, or one peer of a group).
    pub distributed: &'a DistributedArgs,
    /// Private training examples N.
    pub dataset_size: usize,
    /// Expected logical batch size (the non-private baseline's batch size).
    pub batch_size: u64,
    /// Expected passes over the data.
    pub epochs: u64,
    /// Rows per forward/backward pass (memory, not privacy).
    pub physical_batch_size: usize,
    /// Learning rate (AdamW).
    pub lr: f64,
    /// What the freezing left trainable (for the line that announces the run).
    pub trainable: FreezeReport,
}

/// What [`fine_tune`] did.
pub struct FineTuned<M> {
    /// The trained model (on the training backend).
    pub model: M,
    /// Steps taken.
    pub steps: u64,
    /// Steps planned by the schedule (more than `steps` under `--max-steps`).
    pub planned_steps: u64,
    /// Poisson sampling rate q (0 without privacy).
    pub sample_rate: f64,
    /// Noise multiplier σ (0 without privacy).
    pub noise_multiplier: f64,
    /// ε spent at `--delta` (infinite without privacy).
    pub epsilon: f64,
    /// Seconds inside the training steps (without the curve's held-out evaluations).
    pub step_seconds: f64,
    /// The held-out loss during private training (empty without privacy).
    pub loss_curve: Curve,
    /// ε after each point of the loss curve (empty without privacy).
    pub epsilon_curve: Curve,
}

/// Fine-tunes `model` on the private data with AdamW.
///
/// - Privately: a [`PrivateRun`] (one process, or this peer of a data-parallel group) calibrated
///   to `--target-epsilon`, one DP step per expected logical batch; about 50 times a run, the ε
///   spent and `held_out_loss` of the noised model (on public held-out data: never a private
///   batch's loss) join the curves.
/// - With `--non-private`: the examples' one non-private loop ([`train_non_private`]) on the same
///   data, for comparison only.
///
/// `losses(model, indices)` returns the per-sample losses of the examples `indices`; it marks
/// its float inputs with `burn_dp::batch` (in the non-private loop the mark does nothing).
///
/// # Shapes
/// `losses` returns `[P]`, one loss per index.
pub fn fine_tune<B, M, F, H>(
    settings: FineTuning<'_>,
    model: M,
    mut losses: F,
    mut held_out_loss: H,
) -> Result<FineTuned<M>, Error>
where
    B: NoiseBackend,
    M: AutodiffModule<DpAutodiff<B>>,
    F: FnMut(&M, &[usize]) -> Tensor<DpAutodiff<B>, 1>,
    H: FnMut(&M) -> f64,
{
    let FineTuning {
        train,
        dataset_size: n,
        lr,
        ..
    } = settings;
    let (mut loss_curve, mut epsilon_curve) = (Curve::default(), Curve::default());
    if settings.non_private {
        let batch = (settings.batch_size as usize).max(1);
        let start = Instant::now();
        let model = train_non_private(
            model,
            n,
            PlainTraining {
                epochs: settings.epochs,
                batch_size: batch,
                lr,
                seed: train.seed.unwrap_or(0),
            },
            "NON-PRIVATE fine-tuning",
            train.quiet,
            losses,
        );
        let steps = settings.epochs * n.div_ceil(batch) as u64;
        return Ok(FineTuned {
            model,
            steps,
            planned_steps: steps,
            sample_rate: 0.0,
            noise_multiplier: 0.0,
            epsilon: f64::INFINITY,
            step_seconds: start.elapsed().as_secs_f64(),
            loss_curve,
            epsilon_curve,
        });
    }
    let (schedule, privacy) = train.privacy(n, settings.batch_size, settings.epochs)?;
    let sigma = privacy.noise_multiplier;
    // The trainer owns the model, the DP optimizer and the Poisson sampler (at the privacy
    // state's q); physical batches only bound memory.
    let mut trainer = PrivateRun::new(
        settings.distributed,
        model,
        AdamWConfig::new().init::<DpAutodiff<B>, M>(),
        PrivateSetup {
            per_sample: clipping(train.clipping, train.max_norm),
            privacy,
            dataset_size: n,
            physical_batch_size: settings.physical_batch_size,
            noise: noise_source(train.seed),
        },
    )?;
    let t = settings.trainable;
    eprintln!(
        "training {} of {} parameters ({} tensors); σ = {sigma:.4} for ε = {} at δ = {} over {} steps (q = {:.4})",
        t.trainable, t.total, t.trainable_tensors, train.target_epsilon, train.delta, schedule.steps, schedule.sample_rate
    );
    announce_first_step(train.backend, train.quiet);
    let steps = train
        .max_steps
        .map_or(schedule.steps, |m| m.min(schedule.steps));
    let bar = progress(steps, "DP fine-tuning", train.quiet);
    let every = (steps / 50).max(1);
    let mut step_seconds = 0.0;
    for step in 1..=steps {
        let start = Instant::now();
        // Per-sample losses of the drawn examples; padding rows are masked by the trainer.
        trainer.step(lr, &mut losses)?;
        step_seconds += start.elapsed().as_secs_f64();
        if step % every == 0 || step == steps {
            epsilon_curve.push(step, trainer.epsilon()?.epsilon);
            loss_curve.push(step, held_out_loss(trainer.model()));
            bar.set_message(format!(
                "held-out loss {:.3}",
                loss_curve.points.last().map_or(f64::NAN, |p| p.1)
            ));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let epsilon = trainer.epsilon()?.epsilon;
    Ok(FineTuned {
        model: trainer.into_model()?,
        steps,
        planned_steps: schedule.steps,
        sample_rate: schedule.sample_rate,
        noise_multiplier: sigma,
        epsilon,
        step_seconds,
        loss_curve,
        epsilon_curve,
    })
}
