//! One configuration measured in this process: the model, the trainer, the timed steps.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer, SgdConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};
use burn_dp::backend::transfer::TransferBytes;
use burn_dp::profile::{self, Phase, Profile};
use burn_dp::{
    batch, freeze, AccountantKind, ClippingFn, DpAutodiff, NoiseBackend, NoiseSource,
    PerSampleConfig, PrivacyState, PrivateSetup, PrivateTrainer,
};
use burn_dp_distributed::{AllReduce, AnyGroup, AnyTrainer, DistributedError, DistributedTrainer};
use burn_dp_models::{Gpt2Config, LoraConfig, Norm, PretrainedModel, ResNetConfig, ViTConfig};
use serde_json::{json, Value};

use super::*;

/// The all-reduce time of each step of a peer (seconds), shared with its [`TimedGroup`].
pub(crate) type AllReduceTimes = Rc<RefCell<Vec<f64>>>;

/// A group (MPI or TCP) that records the wall time of each all-reduce (waiting for the slowest
/// peer included), one entry per step.
pub(crate) struct TimedGroup {
    inner: AnyGroup,
    times: AllReduceTimes,
}

impl<B: burn::tensor::backend::Backend> AllReduce<B> for TimedGroup {
    fn rank(&self) -> u32 {
        AllReduce::<B>::rank(&self.inner)
    }

    fn world(&self) -> u32 {
        AllReduce::<B>::world(&self.inner)
    }

    fn all_reduce_sum(
        &mut self,
        tensor: Tensor<B, 1>,
        step: u64,
    ) -> Result<Tensor<B, 1>, DistributedError> {
        let t = Instant::now();
        let out = self.inner.all_reduce_sum(tensor, step);
        self.times.borrow_mut().push(t.elapsed().as_secs_f64());
        out
    }
}

/// The DP trainer of a configuration, one process or one peer of a group: q = 1 over a data set
/// of one physical batch per peer, so every step trains on the whole fixed-shape batch
/// (throughput at a fixed B, as the anchors measure) on every peer, through the
/// `PrivateTrainer` loop the examples use (or `DistributedTrainer`, its data-parallel form).
/// Returns the trainer and, for a peer, its all-reduce times.
#[allow(clippy::type_complexity)]
pub(crate) fn dp_trainer<M, O, B>(
    cfg: &Config,
    model: M,
    optim: O,
) -> Result<(AnyTrainer<M, O, B, TimedGroup>, Option<AllReduceTimes>), String>
where
    B: NoiseBackend,
    M: AutodiffModule<DpAutodiff<B>>,
    O: burn::optim::Optimizer<M, DpAutodiff<B>>,
{
    let err = |e: burn_dp::DpError| e.to_string();
    let b = cfg.single.batch;
    let setup = |dataset_size| -> Result<PrivateSetup, String> {
        Ok(PrivateSetup {
            per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
            privacy: PrivacyState::with_noise_multiplier(1.0, 1.0, 1e-5, AccountantKind::Rdp)
                .map_err(err)?,
            dataset_size,
            physical_batch_size: b,
            noise: NoiseSource::FixedSeedForExperiments(0),
        })
    };
    match &cfg.peer {
        None => Ok((
            AnyTrainer::Single(PrivateTrainer::new(model, optim, setup(b)?).map_err(err)?),
            None,
        )),
        Some(p) => {
            let times = Rc::new(RefCell::new(Vec::new()));
            let inner = p
                .args
                .join()
                .map_err(|e| e.to_string())?
                .ok_or("a peer of a data-parallel run found no group")?;
            let (rank, world) = (AllReduce::<B>::rank(&inner), AllReduce::<B>::world(&inner));
            if (rank, world) != (p.rank, p.world) {
                return Err(format!(
                    "the group is rank {rank} of {world}, the launcher announced {} of {}",
                    p.rank, p.world
                ));
            }
            let group = TimedGroup {
                inner,
                times: times.clone(),
            };
            // The replicas are compared at the first step only: the hash reads every
            // parameter (a device-to-host copy on a GPU), which is not what is measured.
            let trainer = DistributedTrainer::new(
                model,
                optim,
                setup(b * p.world as usize)?,
                group,
                u64::MAX,
            )
            .map_err(|e| e.to_string())?;
            Ok((AnyTrainer::Peer(trainer), Some(times)))
        }
    }
}

/// Host↔device bytes moved so far in this process through burn-dp's backend (the DP modes run
/// on it; the plain modes run on burn's own autodiff, whose transfers are not counted: `None`).
pub(crate) fn transfer_bytes(cfg: &Config) -> Option<TransferBytes> {
    cfg.single
        .mode
        .is_dp()
        .then(burn_dp::backend::transfer::read)
}

pub(crate) fn peak_rss_gib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / (1024.0 * 1024.0))
}

/// Inputs of one step.
pub(crate) enum Input<B: Backend> {
    Tokens(Tensor<B, 2, Int>),
    Images(Tensor<B, 4>, Tensor<B, 1, Int>),
}

pub(crate) fn input<B: Backend>(cfg: &Config, vocab: usize, device: &B::Device) -> Input<B> {
    let b = cfg.single.batch;
    match cfg.single.model {
        model if model.reads_tokens() => {
            let ids = Tensor::<B, 2>::random(
                [b, cfg.seq],
                Distribution::Uniform(0.0, vocab as f64 - 1.0),
                device,
            )
            .int();
            Input::Tokens(ids)
        }
        _ => {
            let x = Tensor::<B, 4>::random(
                [b, 3, cfg.image, cfg.image],
                Distribution::Normal(0.0, 1.0),
                device,
            );
            let y = Tensor::<B, 2>::random([b, 1], Distribution::Uniform(0.0, 9.0), device)
                .int()
                .reshape([b]);
            Input::Images(x, y)
        }
    }
}

/// What the step loop measured.
pub(crate) struct Measured {
    /// Wall time of each timed (unprofiled) step, in seconds.
    times: Vec<f64>,
    /// The first step alone (seconds), and when it ended.
    first_step: f64,
    first_step_end: Instant,
    /// Set up (model init, optimizer) done.
    setup_end: Instant,
    /// With `--profile`: phases summed over the profiled steps, and their wall times.
    profile: Option<(Profile, Vec<f64>)>,
    /// Host↔device bytes over the timed steps, if counted.
    bytes: Option<TransferBytes>,
    /// A peer's all-reduce time in each timed step (seconds).
    allreduce: Option<Vec<f64>>,
}

/// Runs the steps of one configuration (`step` runs one, the device synchronised at its end):
/// `warmup` untimed steps, `steps` timed ones and, with `--profile`, `steps` more cut into phases
/// (so the throughput does not include the profile's synchronisations).
pub(crate) fn measure(
    cfg: &Config,
    setup_end: Instant,
    mut step: impl FnMut() -> Result<(), String>,
) -> Result<Measured, String> {
    let mut timed = |n: usize, times: &mut Vec<f64>| -> Result<(), String> {
        for _ in 0..n {
            let t = Instant::now();
            step()?;
            times.push(t.elapsed().as_secs_f64());
        }
        Ok(())
    };
    let mut warm = Vec::new();
    timed(cfg.warmup, &mut warm)?;
    let bytes_before = transfer_bytes(cfg);
    let mut times = Vec::new();
    timed(cfg.steps, &mut times)?;
    let bytes_after = transfer_bytes(cfg);
    // The first step is the first warm-up step, or the first timed one without warm-up.
    let first_step = warm.first().or(times.first()).copied().unwrap_or(0.0);
    let first_step_end = setup_end + std::time::Duration::from_secs_f64(first_step);
    // ANCHOR: profile
    let profile = if cfg.profile {
        let mut profiled = Vec::new();
        // This thread records from here to `disable`: each step's forward pass (wrapped in
        // `profile::timed(Phase::Forward, ..)`) and the library's phases.
        profile::enable();
        let run = timed(cfg.steps, &mut profiled);
        let phases = profile::disable(); // time and calls per `Phase`
        run?;
        Some((phases, profiled))
    } else {
        None
    };
    // ANCHOR_END: profile
    let bytes = match (bytes_before, bytes_after) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    };
    Ok(Measured {
        times,
        first_step,
        first_step_end,
        setup_end,
        profile,
        bytes,
        allreduce: None,
    })
}

/// Runs one configuration on backend `Inner` and returns its JSON line.
pub fn run_one<Inner: burn_dp::NoiseBackend + burn_dp::DeviceMemory>(
    cfg: &Config,
    backend: BackendKind,
) -> Result<Value, String> {
    let device: Inner::Device = Default::default();
    let policy = cfg.single.mode.freeze_policy();
    let err = |e: burn_dp::DpError| e.to_string();
    let sync = |d: &Inner::Device| Inner::sync(d).map_err(|e| format!("{e:?}"));
    let vocab = cfg.single.model.vocab();
    if cfg.single.mode.is_lora() && cfg.single.model.llama().is_none() {
        return Err(format!(
            "{} trains LoRA adapters, which the bench puts on Llama-family models only \
             (llama-tiny, smollm2-135m, qwen2.5-0.5b, tinyllama-1.1b), not on {}",
            cfg.single.mode, cfg.single.model
        ));
    }
    let lora = LoraConfig::new(cfg.lora_rank, 2.0 * cfg.lora_rank as f64, &LORA_TARGETS);
    macro_rules! bench_model {
        ($init:expr, $losses:expr, $optim:expr, $lr:expr) => {{
            if cfg.single.mode.is_dp() {
                type B<I> = DpAutodiff<I>;
                if cfg.peer.is_some() {
                    <B<Inner> as Backend>::seed(&device, PEER_INIT_SEED);
                }
                let (model, report) = freeze($init(&device)?, &policy).map_err(err)?;
                let (mut trainer, allreduce) = dp_trainer(cfg, model, $optim)?;
                let inp = input::<B<Inner>>(cfg, vocab, &device);
                sync(&device)?;
                let mut measured = measure(cfg, Instant::now(), || {
                    trainer
                        .step($lr, |m, _all_rows| {
                            // The images are marked as this step's batch inside the step (a
                            // tensor marked in an earlier step is refused as mixing batches).
                            let inp = match &inp {
                                Input::Images(x, y) => Input::Images(batch(x.clone()), y.clone()),
                                Input::Tokens(t) => Input::Tokens(t.clone()),
                            };
                            profile::timed::<Inner, _>(Phase::Forward, &device, || $losses(m, &inp))
                        })
                        .map_err(|e| e.to_string())?;
                    sync(&device)
                })?;
                measured.allreduce = allreduce.map(|t| {
                    let t = t.borrow();
                    t.iter().skip(cfg.warmup).take(cfg.steps).copied().collect()
                });
                (measured, report)
            } else {
                type B<I> = burn::backend::Autodiff<I>;
                let (model, report) = freeze($init(&device)?, &policy).map_err(err)?;
                let mut optim = $optim;
                let inp = input::<B<Inner>>(cfg, vocab, &device);
                sync(&device)?;
                let mut model = Some(model);
                let measured = measure(cfg, Instant::now(), || {
                    let m = model.take().ok_or("the model was lost in a failed step")?;
                    let loss = profile::timed::<Inner, _>(Phase::Forward, &device, || {
                        $losses(&m, &inp).mean()
                    });
                    let grads = profile::timed::<Inner, _>(Phase::Backward, &device, || {
                        GradientsParams::from_grads(loss.backward(), &m)
                    });
                    model = Some(profile::timed::<Inner, _>(
                        Phase::OptimizerStep,
                        &device,
                        || optim.step($lr, m, grads),
                    ));
                    sync(&device)
                })?;
                (measured, report)
            }
        }};
    }
    let gpt2 = |model: Model| -> Gpt2Config {
        let c = match model {
            Model::Gpt2Medium => Gpt2Config::medium(),
            Model::Gpt2Large => Gpt2Config::large(),
            _ => Gpt2Config::small(),
        };
        c.with_tied_head(false)
    };
    let (m, report) = match cfg.single.model {
        model @ (Model::Gpt2Small | Model::Gpt2Medium | Model::Gpt2Large) => {
            let c = gpt2(model);
            bench_model!(
                |d| Ok::<_, String>(c.init(d)),
                |m: &burn_dp_models::Gpt2<_>, inp: &Input<_>| match inp {
                    Input::Tokens(ids) => m.loss_per_sample(ids.clone()),
                    Input::Images(..) => unreachable!("GPT-2 gets tokens"),
                },
                AdamWConfig::new().init(),
                1e-4
            )
        }
        Model::VitB16 => {
            let mut c = ViTConfig::base_patch16(1000);
            c.image_size = cfg.image;
            bench_model!(
                |d| Ok::<_, String>(c.init(d)),
                |m: &burn_dp_models::ViTForImageClassification<_>, inp: &Input<_>| match inp {
                    Input::Images(x, y) => m.loss_per_sample((x.clone(), y.clone())),
                    Input::Tokens(_) => unreachable!("ViT gets images"),
                },
                AdamWConfig::new().init(),
                1e-4
            )
        }
        model @ (Model::LlamaTiny
        | Model::Smollm2_135m
        | Model::Qwen2_5_0_5b
        | Model::Tinyllama1_1b) => {
            let c = model
                .llama()
                .ok_or("a Llama-family model has its configuration")?;
            let lora_mode = cfg.single.mode.is_lora();
            bench_model!(
                |d| {
                    let m = c.init(d);
                    if lora_mode {
                        m.with_lora(&lora, d).map_err(|e| e.to_string())
                    } else {
                        Ok(m)
                    }
                },
                |m: &burn_dp_models::Llama<_>, inp: &Input<_>| match inp {
                    Input::Tokens(ids) => m.loss_per_sample(ids.clone()),
                    Input::Images(..) => unreachable!("a Llama model gets tokens"),
                },
                AdamWConfig::new().init(),
                1e-4
            )
        }
        Model::Resnet50Gn => {
            let c = ResNetConfig::resnet50(1000).with_norm(Norm::GroupNorm { groups: 32 });
            bench_model!(
                |d| Ok::<_, String>(c.init(d)),
                |m: &burn_dp_models::ResNet<_>, inp: &Input<_>| match inp {
                    Input::Images(x, y) => m.loss_per_sample((x.clone(), y.clone())),
                    Input::Tokens(_) => unreachable!("ResNet gets images"),
                },
                SgdConfig::new().init(),
                0.1
            )
        }
    };
    // The device allocator after the steps (cubecl backends; `null` on Flex and NdArray).
    let memory = Inner::memory_usage(&device);
    let steps = m.times.len().max(1) as f64;
    let mean = m.times.iter().sum::<f64>() / steps;
    let start = *PROCESS_START.get_or_init(Instant::now);
    let mut line = json!({
        "bench": "train", "backend": backend.to_string(), "model": cfg.single.model.to_string(),
        "mode": cfg.single.mode.to_string(), "batch": cfg.single.batch, "seq": cfg.seq,
        "image": cfg.image, "steps": m.times.len(), "warmup": cfg.warmup, "step_ms": mean * 1e3,
        "samples_per_s": cfg.single.batch as f64 / mean, "peak_rss_gib": peak_rss_gib(),
        "trainable_params": report.trainable, "total_params": report.total,
        "setup_s": m.setup_end.duration_since(start).as_secs_f64(),
        "first_step_s": m.first_step,
        "start_to_first_step_s": m.first_step_end.duration_since(start).as_secs_f64(),
    });
    // Bytes are counted over the unprofiled timed steps (`null` while not counted).
    line["to_device_bytes_per_step"] = json!(m.bytes.map(|b| b.to_device as f64 / steps));
    line["to_host_bytes_per_step"] = json!(m.bytes.map(|b| b.to_host as f64 / steps));
    // Device → host reads (each a synchronisation of an asynchronous device).
    line["host_reads_per_step"] = json!(m.bytes.map(|b| b.host_reads as f64 / steps));
    line["device_bytes_in_use"] = json!(memory.map(|u| u.bytes_in_use));
    line["device_bytes_reserved"] = json!(memory.map(|u| u.bytes_reserved));
    if let Some(peer) = &cfg.peer {
        let allreduce = m.allreduce.clone().unwrap_or_default();
        let ar = allreduce.iter().sum::<f64>() / allreduce.len().max(1) as f64;
        line["peers"] = json!(peer.world);
        line["peer_rank"] = json!(peer.rank);
        line["transport"] = json!(if burn_dp_distributed::launched_by_mpi() {
            "mpi"
        } else {
            "tcp"
        });
        line["allreduce_ms"] = json!(ar * 1e3);
        line["global_samples_per_s"] =
            json!((cfg.single.batch * peer.world as usize) as f64 / mean);
    }
    if let Some((p, profiled)) = &m.profile {
        let n = profiled.len().max(1) as f64;
        let step_ms = profiled.iter().sum::<f64>() * 1e3 / n;
        let mut phases = serde_json::Map::new();
        for (phase, time, _) in p.iter() {
            phases.insert(phase.name().into(), json!(time.as_secs_f64() * 1e3 / n));
        }
        line["profiled_steps"] = json!(profiled.len());
        line["profiled_step_ms"] = json!(step_ms);
        line["phases_ms"] = Value::Object(phases);
        line["unphased_ms"] = json!(step_ms - p.total().as_secs_f64() * 1e3 / n);
        if p.sync_errors > 0 {
            line["sync_errors"] = json!(p.sync_errors);
        }
    }
    Ok(line)
}
