//! `burn-dp-peer`: one peer of a data-parallel DP run on the demo task ([`demo`]), or the launcher
//! of `N` such peers on this machine (the peer flags of every program, `PeerArgs`).
//!
//! ```text
//! burn-dp-peer train --peers 2 --steps 100 --noise-multiplier 1.0 --sample-rate 0.05
//! mpirun -np 2 burn-dp-peer train --steps 100 ...          (feature `mpi`)
//! mpirun -H a,b -np 2 burn-dp-peer train --steps 100 ...   (two machines)
//! srun -n 2 burn-dp-peer train --steps 100 ...             (Slurm)
//! ```
//!
//! Built with the feature `mpi`, `--peers N` runs `mpirun -np N` and the peers all-reduce with
//! MPI; without it they meet over TCP on 127.0.0.1 (`TcpGroup`).

mod demo;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use burn::optim::SgdConfig;
use burn_dp::{
    AccountantKind, ClippingFn, NoiseSource, PerSampleConfig, PrivacyState, PrivateSetup,
};
use burn_dp_distributed::{
    launch_peers, AllReduce, DistributedError, DistributedTrainer, PeerArgs, PeerOutput, PeerRole,
    TcpGroup,
};
use clap::{Args, Parser, Subcommand};
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
    /// Run one peer (or, with `--peers N`, start N peers on this machine and wait for them).
    Train(Box<TrainArgs>),
    /// (Feature `nccl`.) Check NCCL between the GPUs of an MPI job, one GPU per rank (the local
    /// rank's): `mpirun -np 2 burn-dp-peer nccl-check`.
    #[cfg(feature = "nccl")]
    NcclCheck {
        /// All-reduces to run.
        #[arg(long, default_value_t = 5)]
        count: u64,
        /// f32 elements per all-reduce.
        #[arg(long, default_value_t = 1 << 24)]
        elements: usize,
    },
}

/// `nccl-check`: `count` all-reduces of `elements` values `rank + 1 + i` on this rank's GPU,
/// checked against the sum, timed on rank 0.
#[cfg(feature = "nccl")]
fn nccl_check(count: u64, elements: usize) -> Result<(), DistributedError> {
    use burn_dp::Cuda;
    use burn_dp_distributed::{MpiGroup, NcclGroup};
    let mpi = MpiGroup::join()?;
    let local = [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "SLURM_LOCALID",
        "MPI_LOCALRANKID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .unwrap_or(0);
    let device = burn_cuda::CudaDevice { index: local };
    let mut group = NcclGroup::join(mpi, &device)?;
    let (rank, world) = (
        AllReduce::<Cuda>::rank(&group),
        AllReduce::<Cuda>::world(&group),
    );
    for i in 0..count {
        let value = (rank + 1) as f32 + i as f32;
        let t = burn::tensor::Tensor::<Cuda, 1>::full([elements], value, &device);
        let start = Instant::now();
        let r = group.all_reduce_sum(t, i)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let got = r
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| DistributedError::Launch(format!("{e:?}")))?;
        let expected = (1..=world).map(|k| k as f32 + i as f32).sum::<f32>();
        if let Some(bad) = got.iter().position(|&v| v != expected) {
            return Err(DistributedError::Launch(format!(
                "rank {rank}, all-reduce {i}: element {bad} is {}, expected {expected}",
                got[bad]
            )));
        }
        if rank == 0 {
            println!(
                "nccl all-reduce {i} over {world} GPUs: {elements} f32 in {ms:.3} ms ({:.2} GB/s), ok",
                4.0 * elements as f64 / ms / 1e6
            );
        }
    }
    Ok(())
}

#[derive(Args, Clone)]
struct TrainArgs {
    /// The peers of the run (`--peers N`; under `mpirun`/`srun`, MPI's rank and world).
    #[command(flatten)]
    peers: PeerArgs,
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
    /// Testing faults: only this rank dies at `--die-at-step` (default: every rank; under
    /// `mpirun` every rank gets the same flags).
    #[arg(long, requires = "die_at_step")]
    die_rank: Option<u32>,
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
    let noise = match args.fixed_seed_for_experiments {
        Some(seed) => NoiseSource::FixedSeedForExperiments(seed),
        None => NoiseSource::Os,
    };
    if let PeerRole::Launcher { peers } = args.peers.role()? {
        let exe = std::env::current_exe().map_err(|e| DistributedError::Launch(e.to_string()))?;
        let rest = PeerArgs::peer_args(std::env::args().skip(1));
        return launch_peers(&exe, peers, &rest, 0, PeerOutput::Inherit)?
            .wait()
            .map(|_| ());
    }
    match args.peers.join()? {
        Some(group) => run(&args, noise, group).map(|_| ()),
        // One process: a group of one (no peer to reach).
        None => {
            let timeout = args.peers.timeout()?;
            run(&args, noise, TcpGroup::join(0, 1, "127.0.0.1:0", timeout)?).map(|_| ())
        }
    }
}

fn run<G: AllReduce<B>>(
    args: &TrainArgs,
    noise: NoiseSource,
    group: G,
) -> Result<G, DistributedError> {
    let device = Default::default();
    let (rank, world) = (group.rank(), group.world());
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
        if args.die_at_step == Some(step) && args.die_rank.is_none_or(|r| r == rank) {
            eprintln!("peer {rank}: dying before step {step} (--die-at-step)");
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
                    let path = dir.join(format!("peer-{rank}.params.json"));
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
        rank,
        world,
        steps: args.steps,
        examples,
        seconds,
        epsilon: trainer.epsilon()?.epsilon,
        initial_params,
        params: demo::flat_parameters(trainer.model()),
        records,
    };
    if rank == 0 {
        println!(
            "peer 0 of {world}: {} steps in {seconds:.2} s ({:.1} steps/s), {} local examples, ε = {:.4}",
            args.steps,
            args.steps as f64 / seconds.max(1e-9),
            examples,
            report.epsilon
        );
    }
    if let Some(out) = &args.out {
        let path = out.replace("{rank}", &rank.to_string());
        let json = serde_json::to_string(&report)
            .map_err(|e| DistributedError::Launch(format!("report: {e}")))?;
        std::fs::write(&path, json)
            .map_err(|e| DistributedError::Launch(format!("{path}: {e}")))?;
    }
    Ok(trainer.into_parts().1)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Train(args) => train(*args),
        #[cfg(feature = "nccl")]
        Cmd::NcclCheck { count, elements } => nccl_check(count, elements),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("burn-dp-peer: error: {e}");
            ExitCode::from(2)
        }
    }
}
