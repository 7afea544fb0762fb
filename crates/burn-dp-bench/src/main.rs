//! `bench engine`: cost of one per-sample step (ghost norm, instantiation, the cost model's choice)
//! relative to an ordinary `Autodiff` backward and to a batch-of-one loop, on the CPU (NdArray),
//! for an MLP, a small CNN and a 2-layer transformer encoder. One JSON line per model and mode;
//! all ratios come from timings taken side by side in this one run.
//!
//! Usage: `cargo run --release -p burn-dp-bench --bin bench -- engine [--iters N]`
//!
//! `bench train`: see `train.rs` (`--peers N`: the data-parallel scaling); `bench ratios FILE...`: the ratios of `bench train` lines
//! collected elsewhere (`tools/gpu-check.sh`). `bench --help` lists every flag.

mod anchors;
mod max_batch;
mod train;

use std::path::PathBuf;
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
use clap::{Args, Parser, Subcommand, ValueEnum};

use burn_dp_distributed::{launcher_rank, launcher_world};
use burn_dp_distributed::{PeerArgs, PeerRole};
use train::{BackendKind, Mode, Model, Single};

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
        Tensor::<Dp, 3>::from_inner(burn_dp::wrap_independent_unchecked(x)),
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

/// Benchmarks of burn-dp.
#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "Benchmarks of burn-dp: engine overheads and DP training throughput"
)]
struct Cli {
    /// The benchmark (default: `engine`).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Per-sample engine overheads on the CPU: ghost norm, instantiation and the cost model's
    /// choice against an ordinary backward and a batch-of-one loop.
    Engine {
        /// Timed iterations per measurement (the median is reported).
        #[arg(long, default_value_t = 10, value_parser = positive)]
        iters: usize,
    },
    /// Training throughput, time to first step and (with `--profile`) per-phase times for the
    /// anchor shapes in four modes; one process per configuration, one JSON line each, then the
    /// ratios of the performance goals.
    Train(TrainArgs),
    /// The ratios of the performance goals from JSON lines written by `bench train` (and lines
    /// with `peak_device_mib` for device memory), e.g. by `tools/gpu-check.sh`; with the
    /// PyTorch anchors of `tools/cpu-anchors.sh` in the files, burn-dp ÷ each anchor.
    Ratios {
        /// Files of JSON lines (lines that are not JSON objects are skipped).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// The backend (`flex`: the CPU's fastest; `ndarray`: the older CPU backend).
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
    /// Models to run at their anchor batch sizes (default: all), comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    models: Vec<Model>,
    /// Modes (default: the four of the anchors; `plain-lora` and `dp-lora` on Llama-family
    /// models), comma-separated.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = [Mode::PlainFull, Mode::PlainBitfit, Mode::DpFull, Mode::DpBitfit])]
    modes: Vec<Mode>,
    /// Physical batch size for every model, instead of the anchor batch sizes.
    #[arg(long, value_parser = positive)]
    batch: Option<usize>,
    /// GPT-2 sequence length.
    #[arg(long, default_value_t = 128, value_parser = positive)]
    seq: usize,
    /// Image side for ViT-B/16 and ResNet-50-GN.
    #[arg(long, default_value_t = 224, value_parser = positive)]
    image: usize,
    /// Rank of the LoRA adapters of `plain-lora` and `dp-lora` (on q and v, α = 2·rank).
    #[arg(long, default_value_t = 8, value_parser = positive)]
    lora_rank: usize,
    /// Timed steps per configuration.
    #[arg(long, default_value_t = 10, value_parser = positive)]
    steps: usize,
    /// Untimed warm-up steps before them.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Time each phase of the timed steps with the device synchronised around it (forward,
    /// backward, norms, factors, clipped sums, noise, optimizer step) and count the host↔device
    /// bytes of a step. The synchronisations slow the step down: take throughput from a run
    /// without it.
    #[arg(long)]
    profile: bool,
    /// cubecl's autotune effort on CUDA (sets `CUBECL_AUTOTUNE_LEVEL` for every configuration);
    /// `minimal` shortens the time to the first step.
    #[arg(long, value_enum)]
    autotune_level: Option<AutotuneLevel>,
    /// Run one configuration in this process instead of a sweep.
    #[arg(long, value_name = "MODEL:BATCH:MODE", conflicts_with_all = ["models", "modes", "batch"])]
    single: Option<Single>,
    /// Data-parallel peers (the flags of every program, `PeerArgs`): with `--peers N` > 1 every
    /// DP configuration also runs as N peer processes on this machine (`mpirun -np N` when built
    /// with the feature `mpi`, else a TCP group on 127.0.0.1; each peer a batch of `--batch`
    /// from its own shard), and a `train-peers` line compares the examples/s of 1 and N peers
    /// measured in this run, with the all-reduce time per step and its share of the step. Under
    /// `mpirun`/`srun`, `--single` runs as one rank of the job.
    #[command(flatten)]
    peers: PeerArgs,
    /// Instead of timing: the largest physical batch of each model and mode that trains under
    /// this many GiB of resident memory (bisection over one-step runs, each its own process,
    /// killed once above the cap); one `train-max-batch` line per model and mode.
    #[arg(long, conflicts_with_all = ["single", "batch"])]
    max_batch_gib: Option<f64>,
    /// The largest batch `--max-batch-gib` tries.
    #[arg(long, default_value_t = 256, value_parser = positive)]
    max_batch_limit: usize,
}

/// cubecl's autotune levels (`CUBECL_AUTOTUNE_LEVEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum AutotuneLevel {
    /// Least autotuning (fastest start).
    Minimal,
    /// cubecl's default.
    Balanced,
    /// More autotuning.
    Extensive,
    /// Every candidate kernel.
    Full,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive integer")),
    }
}

fn main() {
    train::PROCESS_START.get_or_init(Instant::now);
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Engine { iters: 10 }) {
        Command::Engine { iters } => {
            engine_main(iters);
            Ok(())
        }
        Command::Train(args) => train_main(args),
        Command::Ratios { files } => ratios_main(&files),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn engine_main(iters: usize) {
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

fn train_main(args: TrainArgs) -> Result<(), String> {
    let mut child_args = Vec::new();
    if let Some(level) = args.autotune_level {
        let name = level
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        // Read by cubecl when the device is first used, which is after this point; the children
        // of a sweep get the flag again.
        std::env::set_var("CUBECL_AUTOTUNE_LEVEL", &name);
        child_args.extend(["--autotune-level".to_string(), name]);
    }
    child_args.extend([
        "--peer-timeout-s".to_string(),
        args.peers.peer_timeout_s.to_string(),
    ]);
    let peer = match args.peers.role().map_err(|e| e.to_string())? {
        PeerRole::Mpi => match (launcher_rank(), launcher_world()) {
            (_, Some(1)) => None,
            (Some(rank), Some(world)) => Some(train::PeerConfig {
                rank,
                world,
                args: args.peers.clone(),
            }),
            _ => return Err("under MPI: the launcher announced no rank or world".into()),
        },
        PeerRole::Tcp { rank, world, .. } => Some(train::PeerConfig {
            rank,
            world,
            args: args.peers.clone(),
        }),
        PeerRole::Single | PeerRole::Launcher { .. } => None,
    };
    let single = args.single.unwrap_or(Single {
        model: Model::Gpt2Small,
        batch: 1,
        mode: Mode::PlainFull,
    });
    let cfg = train::Config {
        single,
        seq: args.seq,
        image: args.image,
        lora_rank: args.lora_rank,
        steps: args.steps,
        warmup: args.warmup,
        profile: args.profile,
        peer,
    };
    if let Some(cap) = args.max_batch_gib {
        if !(cap.is_finite() && cap > 0.0) {
            return Err(format!(
                "--max-batch-gib must be a positive number of GiB, got {cap}"
            ));
        }
        let mut models = args.models.clone();
        if models.is_empty() {
            models = train::ANCHORS.iter().map(|(m, _)| *m).collect();
            models.dedup();
        }
        return max_batch::run(
            &models,
            &args.modes,
            &cfg,
            args.backend,
            cap,
            args.max_batch_limit,
        );
    }
    let configs = match args.single {
        // One configuration, in this process (or as one peer of a group).
        Some(_) if args.peers.peers == 1 || cfg.peer.is_some() => {
            return train::run_single(&cfg, args.backend)
        }
        // One configuration, scaled over `--peers` processes.
        Some(single) => vec![single],
        None => train::sweep(&args.models, &args.modes, args.batch),
    };
    train::run_sweep(&configs, &cfg, args.backend, &child_args, args.peers.peers)
}

fn ratios_main(files: &[PathBuf]) -> Result<(), String> {
    let mut lines = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
        lines.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v.is_object()),
        );
    }
    for line in train::ratios(&lines)
        .into_iter()
        .chain(anchors::ratios(&lines))
    {
        println!("{line}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_profile_command_parses() {
        let cli = Cli::try_parse_from(
            "bench train --profile --backend ndarray --models gpt2-small --modes dp-full \
             --batch 2 --seq 16 --steps 1 --warmup 1"
                .split_whitespace(),
        )
        .unwrap();
        let Some(Command::Train(t)) = cli.command else {
            panic!("train")
        };
        assert!(t.profile);
        assert_eq!(t.models, [Model::Gpt2Small]);
        assert_eq!(t.modes, [Mode::DpFull]);
        assert_eq!((t.batch, t.seq, t.steps, t.warmup), (Some(2), 16, 1, 1));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let parse = |s: &str| Cli::try_parse_from(s.split_whitespace());
        assert!(parse("bench train --unknown-flag").is_err());
        assert!(parse("bench train --single gpt2-small:x:dp-full").is_err());
        assert!(parse("bench train --modes dp").is_err());
        assert!(parse("bench train --steps 0").is_err());
        assert!(parse("bench train --single gpt2-small:2:dp-full --models vit-b16").is_err());
        assert!(parse("bench train --single vit-b16:2:dp-bitfit --backend cuda").is_ok());
        assert!(parse("bench train --peers 0").is_err());
        assert!(parse("bench train --max-batch-gib 4 --models gpt2-small").is_ok());
        assert!(parse("bench train --max-batch-gib 4 --batch 2").is_err());
        assert!(parse("bench train --max-batch-gib x").is_err());
        assert!(
            parse("bench train --rank 1").is_err(),
            "needs --single and a root"
        );
        assert!(parse("bench train --peers 2 --models resnet50-gn --batch 2").is_ok());
        assert!(parse(
            "bench train --single resnet50-gn:2:dp-full --rank 1 --world 2 \
             --root 127.0.0.1:1234"
        )
        .is_ok());
    }
}
