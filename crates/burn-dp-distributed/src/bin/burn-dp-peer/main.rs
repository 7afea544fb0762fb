//! `burn-dp-peer`: one peer of a data-parallel DP run on the demo task ([`demo`]),
//! or a launcher of `K` such peers on this machine.
//!
//! ```text
//! burn-dp-peer launch --peers 2 -- --steps 100 --noise-multiplier 1.0 --sample-rate 0.05
//! burn-dp-peer train --rank 0 --world 2 --orchestrator 10.0.0.1:29400 --host 10.0.0.1 ...
//! ```
//!
//! Peers all-reduce over TCP (`TcpGroup`); with the feature `collective`, `--transport collective`
//! uses burn-collective's `PeerGroup` instead and `probe` checks that path alone.

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use burn::optim::SgdConfig;
use burn_dp::{
    AccountantKind, ClippingFn, NoiseSource, PerSampleConfig, PrivacyState, PrivateSetup,
};
use burn_dp_distributed::launch::{self, LocalPeers, PeerOutput};
use burn_dp_distributed::{AllReduce, DistributedError, DistributedTrainer, TcpGroup};
#[cfg(feature = "collective")]
use burn_dp_distributed::{AllReduceStrategy, NodeConfig, PeerGroup};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;

use demo::DemoNet;

type B = burn_dp::Flex;

#[derive(Parser)]
#[command(
    name = "burn-dp-peer",
    about = "Data-parallel DP training of the demo task, one process per peer"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one peer.
    Train(Box<TrainArgs>),
    /// Start `--peers` peers of `train` on this machine (127.0.0.1) and wait for them; the
    /// arguments after `--` go to every peer (`{rank}` in `--out` becomes the peer's rank).
    Launch {
        /// Number of peer processes.
        #[arg(long)]
        peers: u32,
        /// Orchestrator port; peer r's data service listens on port + 1 + r.
        #[arg(long, default_value_t = 29400)]
        port: u16,
        /// Arguments of `train` for every peer.
        #[arg(last = true)]
        rest: Vec<String>,
    },
    /// Check the collective path alone: `--count` all-reduces of a small tensor.
    #[cfg(feature = "collective")]
    Probe {
        /// This peer's rank.
        #[arg(long)]
        rank: u32,
        /// Number of peers.
        #[arg(long)]
        world: u32,
        /// Orchestrator port (hosted by peer 0); data ports follow it.
        #[arg(long)]
        port: u16,
        /// All-reduces to run.
        #[arg(long)]
        count: u64,
        /// Seconds each may take.
        #[arg(long, default_value_t = 20.0)]
        timeout_s: f64,
    },
}

#[cfg(feature = "collective")]
fn probe(
    rank: u32,
    world: u32,
    port: u16,
    count: u64,
    timeout_s: f64,
) -> Result<(), DistributedError> {
    let timeout = Duration::try_from_secs_f64(timeout_s)
        .map_err(|e| DistributedError::Config(format!("--timeout-s: {e}")))?;
    let config = NodeConfig::localhost(rank, world, port, timeout);
    let device = Default::default();
    let mut group = PeerGroup::<B>::join(&config, device)?;
    for i in 0..count {
        let t = burn::tensor::Tensor::<B, 1>::from_data(
            burn::tensor::TensorData::new(vec![(rank + 1) as f32 + i as f32; 16], [16]),
            &device,
        );
        let r = group
            .all_reduce_sum(t, i)?
            .into_data()
            .to_vec::<f32>()
            .unwrap_or_default();
        let expected = (1..=world).map(|k| k as f32 + i as f32).sum::<f32>();
        if r.iter().any(|&v| v != expected) {
            return Err(DistributedError::Launch(format!(
                "all-reduce {i}: {r:?} != {expected}"
            )));
        }
        eprintln!("peer {rank}: all-reduce {i} ok");
    }
    Ok(())
}

#[derive(Clone, Copy, ValueEnum)]
enum Transport {
    /// burn-collective's cross-node path (orchestrator + WebSocket). burn-collective 0.21.0
    /// completes one all-reduce per registration: use for `probe`, not for training.
    #[cfg(feature = "collective")]
    Collective,
    /// A star all-reduce over TCP through peer 0 (at --orchestrator).
    Tcp,
}

/// burn-collective's all-reduce algorithm.
#[derive(Clone, Copy, ValueEnum)]
enum Strategy {
    Centralized,
    Tree,
    Ring,
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// This peer's rank.
    #[arg(long, default_value_t = 0)]
    rank: u32,
    /// Number of peers.
    #[arg(long, default_value_t = 1)]
    world: u32,
    /// host:port of the orchestrator (hosted by peer 0 unless --no-host-orchestrator).
    #[arg(long, default_value = "127.0.0.1:29400")]
    orchestrator: String,
    #[cfg_attr(not(feature = "collective"), allow(dead_code))]
    /// Peer 0 does not start the orchestrator (it runs elsewhere; `--transport collective`).
    #[arg(long)]
    no_host_orchestrator: bool,
    #[cfg_attr(not(feature = "collective"), allow(dead_code))]
    /// The host other peers reach this peer at (`--transport collective`).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[cfg_attr(not(feature = "collective"), allow(dead_code))]
    /// This peer's data port (default: orchestrator port + 1 + rank; `--transport collective`).
    #[arg(long)]
    data_port: Option<u16>,
    #[cfg_attr(not(feature = "collective"), allow(dead_code))]
    /// All-reduce algorithm between peers (burn-collective transport; needs the feature
    /// `collective`).
    #[arg(long, value_enum, default_value = "centralized")]
    strategy: Strategy,
    /// How peers all-reduce.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: Transport,
    /// Seconds a collective operation may take before the peer stops with an error.
    #[arg(long, default_value_t = 60.0)]
    timeout_s: f64,
    /// DP steps to take in this run.
    #[arg(long)]
    steps: u64,
    /// Noise multiplier σ (required: privacy-critical).
    #[arg(long)]
    noise_multiplier: f64,
    /// Global sampling rate q (each example joins a step with probability q).
    #[arg(long)]
    sample_rate: f64,
    /// δ.
    #[arg(long, default_value_t = 1e-5)]
    delta: f64,
    /// Examples in the (whole) data set, split into one shard per peer.
    #[arg(long, default_value_t = 256)]
    dataset_size: usize,
    /// Rows per physical batch.
    #[arg(long, default_value_t = 8)]
    physical_batch_size: usize,
    /// Learning rate (SGD).
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// Fixed seed of noise and sampling: EXPERIMENTS ONLY (default: the OS).
    #[arg(long)]
    fixed_seed_for_experiments: Option<u64>,
    /// Compare the replicas' parameter hashes every this many steps.
    #[arg(long, default_value_t = 10)]
    check_every: u64,
    /// Write a JSON report here (`{rank}` is replaced by the rank).
    #[arg(long)]
    out: Option<String>,
    /// Record every step's drawn indices and parameters in the report (and, at each checkpoint,
    /// the saved parameters in `<checkpoint-dir>/peer-<rank>.params.json`).
    #[arg(long)]
    record: bool,
    /// Checkpoint directory (each peer writes `peer-<rank>` in it).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Save a checkpoint every this many steps.
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Resume from --checkpoint-dir first.
    #[arg(long)]
    resume: bool,
    /// Testing faults: exit abruptly (code 3) before this step.
    #[arg(long)]
    die_at_step: Option<u64>,
    /// Testing faults: start from a model that differs from the other peers' (by 1e-3 in one
    /// bias), which the replica check must refuse.
    #[arg(long)]
    perturb_initial_model: bool,
}

/// What one step drew and produced (with --record).
#[derive(Serialize)]
struct StepRecord {
    indices: Vec<usize>,
    params: Vec<f32>,
}

#[derive(Serialize)]
struct Report {
    rank: u32,
    world: u32,
    steps: u64,
    examples: usize,
    seconds: f64,
    epsilon: f64,
    /// The parameters before the first step of this run (after `--resume`: those resumed).
    initial_params: Vec<f32>,
    params: Vec<f32>,
    records: Vec<StepRecord>,
}

fn train(args: TrainArgs) -> Result<(), DistributedError> {
    let timeout = Duration::try_from_secs_f64(args.timeout_s)
        .map_err(|e| DistributedError::Config(format!("--timeout-s: {e}")))?;
    let noise = match args.fixed_seed_for_experiments {
        Some(seed) => NoiseSource::FixedSeedForExperiments(seed),
        None => NoiseSource::Os,
    };
    match args.transport {
        #[cfg(feature = "collective")]
        Transport::Collective => {
            let group = PeerGroup::<B>::join(&node_config(&args, timeout)?, Default::default())?;
            let group = run(&args, noise, group)?;
            group.finish()
        }
        Transport::Tcp => {
            let group = TcpGroup::join(args.rank, args.world, &args.orchestrator, timeout)?;
            run(&args, noise, group).map(|_| ())
        }
    }
}

/// burn-collective's settings of this peer.
#[cfg(feature = "collective")]
fn node_config(args: &TrainArgs, timeout: Duration) -> Result<NodeConfig, DistributedError> {
    let port = args
        .orchestrator
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| DistributedError::Config("--orchestrator must be host:port".into()))?;
    Ok(NodeConfig {
        rank: args.rank,
        world: args.world,
        orchestrator: args.orchestrator.clone(),
        host_orchestrator: args.rank == 0 && !args.no_host_orchestrator,
        host: args.host.clone(),
        data_port: args
            .data_port
            .unwrap_or_else(|| port.saturating_add(1).saturating_add(args.rank as u16)),
        strategy: match args.strategy {
            Strategy::Centralized => AllReduceStrategy::Centralized,
            Strategy::Tree => AllReduceStrategy::Tree(2),
            Strategy::Ring => AllReduceStrategy::Ring,
        },
        timeout,
    })
}

fn run<G: AllReduce<B>>(
    args: &TrainArgs,
    noise: NoiseSource,
    group: G,
) -> Result<G, DistributedError> {
    let device = Default::default();
    let privacy = PrivacyState::with_noise_multiplier(
        args.noise_multiplier,
        args.sample_rate,
        args.delta,
        AccountantKind::Rdp,
    )?;
    let mut model = DemoNet::deterministic(&device);
    if args.perturb_initial_model {
        let bias = demo::flat_parameters(&model)
            [demo::FEATURES * demo::HIDDEN + demo::HIDDEN + demo::HIDDEN];
        model.fc2.bias = Some(burn::module::Param::from_tensor(
            burn::tensor::Tensor::from_data(
                burn::tensor::TensorData::new(vec![bias + 1e-3], [1]),
                &device,
            ),
        ));
    }
    // ANCHOR: trainer
    let mut trainer = DistributedTrainer::new(
        model,
        SgdConfig::new().init(),
        PrivateSetup {
            per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
            privacy,
            dataset_size: args.dataset_size,
            physical_batch_size: args.physical_batch_size,
            noise,
        },
        group,
        args.check_every,
    )?;
    if args.resume {
        let dir = args
            .checkpoint_dir
            .as_ref()
            .ok_or_else(|| DistributedError::Config("--resume needs --checkpoint-dir".into()))?;
        trainer.resume(dir)?;
    }
    // ANCHOR_END: trainer
    let initial_params = demo::flat_parameters(trainer.model());
    let mut records = Vec::new();
    let mut examples = 0;
    let start = Instant::now();
    for step in 0..args.steps {
        if args.die_at_step == Some(step) {
            eprintln!(
                "peer {}: dying before step {step} (--die-at-step)",
                args.rank
            );
            std::process::exit(3);
        }
        let mut drawn = Vec::new();
        // ANCHOR: step
        let report = trainer.step(args.lr, |m, idx| {
            drawn.extend_from_slice(idx);
            demo::losses::<B>(m, idx)
        })?;
        // ANCHOR_END: step
        examples += report.samples;
        if args.record {
            drawn.truncate(report.samples);
            // The physical batches repeat index 0 as padding after the drawn examples.
            records.push(StepRecord {
                indices: drawn,
                params: demo::flat_parameters(trainer.model()),
            });
        }
        if let (Some(dir), Some(every)) = (args.checkpoint_dir.as_ref(), args.checkpoint_every) {
            if (step + 1).is_multiple_of(every) {
                trainer.save_checkpoint(dir)?;
                if args.record {
                    // What was saved, for comparing with what a resumed run starts from.
                    let path = dir.join(format!("peer-{}.params.json", args.rank));
                    let json = serde_json::to_string(&demo::flat_parameters(trainer.model()))
                        .map_err(|e| DistributedError::Launch(format!("params: {e}")))?;
                    std::fs::write(&path, json).map_err(|e| {
                        DistributedError::Launch(format!("{}: {e}", path.display()))
                    })?;
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let report = Report {
        rank: args.rank,
        world: args.world,
        steps: args.steps,
        examples,
        seconds,
        epsilon: trainer.epsilon()?,
        initial_params,
        params: demo::flat_parameters(trainer.model()),
        records,
    };
    if args.rank == 0 {
        println!(
            "peer 0 of {}: {} steps in {seconds:.2} s ({:.1} steps/s), {} local examples, ε = {:.4}",
            args.world,
            args.steps,
            args.steps as f64 / seconds.max(1e-9),
            examples,
            report.epsilon
        );
    }
    if let Some(out) = &args.out {
        let path = out.replace("{rank}", &args.rank.to_string());
        let json = serde_json::to_string(&report)
            .map_err(|e| DistributedError::Launch(format!("report: {e}")))?;
        std::fs::write(&path, json)
            .map_err(|e| DistributedError::Launch(format!("{path}: {e}")))?;
    }
    Ok(trainer.into_parts().1)
}

fn launch(peers: u32, port: u16, rest: &[String]) -> Result<(), DistributedError> {
    if peers == 0 {
        return Err(DistributedError::Config(
            "--peers must be at least 1".into(),
        ));
    }
    let exe = std::env::current_exe().map_err(|e| DistributedError::Launch(e.to_string()))?;
    let root = format!("127.0.0.1:{port}");
    let peers = LocalPeers::spawn(
        &exe,
        0..peers,
        |rank| {
            let mut args = vec!["train".to_string()];
            args.extend(launch::rank_args(rank, peers, "--orchestrator", &root));
            args.extend(rest.iter().cloned());
            args
        },
        PeerOutput::Inherit,
    )?;
    peers.wait().map(|_| ())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Train(args) => train(*args),
        Cmd::Launch { peers, port, rest } => launch(peers, port, &rest),
        #[cfg(feature = "collective")]
        Cmd::Probe {
            rank,
            world,
            port,
            count,
            timeout_s,
        } => probe(rank, world, port, count, timeout_s),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("burn-dp-peer: error: {e}");
            ExitCode::from(2)
        }
    }
}
