//! One vocabulary for the peers of a run: [`PeerArgs`], the flags the examples, the bench and
//! `burn-dp-peer` share (`#[command(flatten)]`), and [`AnyGroup`], the group they join.
//!
//! ```text
//! (no flag)                         one process
//! --peers N                         start N peers on this machine and wait for them:
//!                                     feature `mpi`: `mpirun -np N <this program> <its args>`
//!                                     otherwise:     N processes over TCP (TcpGroup, 127.0.0.1)
//! under mpirun / mpiexec / srun     one rank of the MPI job (feature `mpi`; rank and world
//!                                     come from MPI)
//! --rank r --world K --root h:p     one peer of a TCP group (what `--peers` gives its children
//!                                     without MPI; one machine)
//! ```

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::all_reduce::AllReduce;
use crate::error::DistributedError;
use crate::launch::{self, LocalPeers, PeerOutput};
use crate::tcp::TcpGroup;

/// The data-parallel flags of a program (`#[command(flatten)]`). With none, the run is one
/// process. Under an MPI launcher (`mpirun`, `srun`) rank and world come from MPI.
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct PeerArgs {
    /// Peer processes on this machine (one per device): the program starts N copies of itself
    /// that train together, each on its shard, the noise drawn once over the group (rank 0
    /// writes the results). Built with the feature `mpi` it runs `mpirun -np N`; otherwise the
    /// peers meet over TCP on 127.0.0.1.
    #[arg(long, visible_alias = "devices", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..),
          conflicts_with_all = ["rank", "world", "root"])]
    pub peers: u32,
    /// This process's rank in a TCP group (`0..--world`): set by `--peers` without MPI. Under
    /// MPI the rank is MPI's.
    #[arg(long, requires_all = ["world", "root"])]
    pub rank: Option<u32>,
    /// Number of peers of a TCP group.
    #[arg(long, requires_all = ["rank", "root"])]
    pub world: Option<u32>,
    /// `host:port` where rank 0 of a TCP group listens for the others.
    #[arg(long, alias = "coordinator", alias = "orchestrator", requires = "rank")]
    pub root: Option<String>,
    /// Seconds a TCP peer waits for the others (to join, and at each step) before it stops with
    /// an error; on CUDA the first step of every peer compiles kernels first. (Under MPI a peer
    /// that dies ends the job.)
    #[arg(long, alias = "timeout-s", default_value_t = 600.0)]
    pub peer_timeout_s: f64,
}

impl Default for PeerArgs {
    fn default() -> Self {
        PeerArgs {
            peers: 1,
            rank: None,
            world: None,
            root: None,
            peer_timeout_s: 600.0,
        }
    }
}

/// What a process with [`PeerArgs`] is.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerRole {
    /// One process, no group.
    Single,
    /// The launcher of `peers` peers on this machine ([`launch_peers`]).
    Launcher {
        /// Number of peers to start.
        peers: u32,
    },
    /// One rank of an MPI job (feature `mpi`).
    Mpi,
    /// One peer of a TCP group.
    Tcp {
        /// This peer's rank.
        rank: u32,
        /// Number of peers.
        world: u32,
        /// Where rank 0 listens.
        root: String,
    },
}

impl PeerArgs {
    /// What this process is: a rank of an MPI job when an MPI launcher started it (even with
    /// `--peers`, which the launched copies inherit), else as the flags say.
    pub fn role(&self) -> Result<PeerRole, DistributedError> {
        if launched_by_mpi() {
            if !cfg!(feature = "mpi") {
                return Err(DistributedError::Config(
                    "this process was started by an MPI launcher (mpirun, srun) but built \
                     without the feature `mpi` of burn-dp-distributed: rebuild with it, or start \
                     the peers with --peers N (TCP, one machine)"
                        .into(),
                ));
            }
            if self.rank.is_some() {
                return Err(DistributedError::Config(
                    "under MPI the rank and world come from MPI: drop --rank/--world/--root".into(),
                ));
            }
            return Ok(PeerRole::Mpi);
        }
        match (self.rank, self.world, &self.root) {
            (Some(rank), Some(world), Some(root)) => {
                if world == 0 || rank >= world {
                    return Err(DistributedError::Config(format!(
                        "--rank {rank} is not a peer of --world {world}"
                    )));
                }
                Ok(PeerRole::Tcp {
                    rank,
                    world,
                    root: root.clone(),
                })
            }
            (None, None, None) if self.peers > 1 => Ok(PeerRole::Launcher { peers: self.peers }),
            (None, None, None) => Ok(PeerRole::Single),
            _ => Err(DistributedError::Config(
                "--rank, --world and --root go together".into(),
            )),
        }
    }

    /// Whether the run has more than one peer (this process is one of them, or starts them).
    pub fn is_data_parallel(&self) -> bool {
        match self.role() {
            Ok(PeerRole::Single) | Err(_) => false,
            Ok(PeerRole::Mpi) => launcher_world().is_none_or(|w| w > 1),
            Ok(_) => true,
        }
    }

    /// This process's rank as known before joining (MPI's from the launcher's environment,
    /// `--rank`, else 0).
    pub fn rank_hint(&self) -> u32 {
        if launched_by_mpi() {
            return launcher_rank().unwrap_or(0);
        }
        self.rank.unwrap_or(0)
    }

    /// Whether this process writes the results: rank 0, or a one-process run.
    pub fn is_leader(&self) -> bool {
        self.rank_hint() == 0
    }

    /// The TCP peers' timeout.
    pub fn timeout(&self) -> Result<Duration, DistributedError> {
        Duration::try_from_secs_f64(self.peer_timeout_s)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| {
                DistributedError::Config(
                    "--peer-timeout-s must be a positive number of seconds".into(),
                )
            })
    }

    /// Joins the group this process belongs to: `None` for a one-process run (and for an MPI job
    /// of one rank), the MPI job or the TCP group otherwise. A launcher has to start its peers
    /// first ([`launch_peers`]): [`DistributedError::Config`].
    pub fn join(&self) -> Result<Option<AnyGroup>, DistributedError> {
        match self.role()? {
            PeerRole::Single => Ok(None),
            PeerRole::Launcher { peers } => Err(DistributedError::Config(format!(
                "--peers {peers}: start the peers first (launch_peers), this process only waits"
            ))),
            PeerRole::Tcp { rank, world, root } => Ok(Some(AnyGroup::Tcp(TcpGroup::join(
                rank,
                world,
                &root,
                self.timeout()?,
            )?))),
            #[cfg(feature = "mpi")]
            PeerRole::Mpi => {
                let group = crate::mpi::MpiGroup::join()?;
                Ok((AllReduce::<burn::backend::NdArray>::world(&group) > 1)
                    .then_some(AnyGroup::Mpi(group)))
            }
            #[cfg(not(feature = "mpi"))]
            PeerRole::Mpi => Err(DistributedError::Config(
                "started by an MPI launcher, built without the feature `mpi`".into(),
            )),
        }
    }

    /// The arguments of the peers a launcher starts: `args` (the launcher's own, without the
    /// program name) without `--peers`/`--devices`.
    pub fn peer_args(args: impl IntoIterator<Item = String>) -> Vec<String> {
        let args = launch::args_without(args, "--peers");
        launch::args_without(args, "--devices")
    }
}

/// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun` with
/// PMI/PMIx): from the variables they set (`OMPI_COMM_WORLD_SIZE`, `PMIX_RANK`, `PMI_RANK`,
/// `PMI_SIZE`).
pub fn launched_by_mpi() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// This process's rank as an MPI launcher announced it in the environment (before MPI is
/// initialised); `None` outside an MPI job.
pub fn launcher_rank() -> Option<u32> {
    ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// The job's size as an MPI launcher announced it (`OMPI_COMM_WORLD_SIZE`, `PMI_SIZE`,
/// `SLURM_NTASKS` under PMIx); `None` when unknown.
pub fn launcher_world() -> Option<u32> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Whether this build carries the feature `mpi`: then [`launch_peers`] runs `mpirun`.
pub const USES_MPI: bool = cfg!(feature = "mpi");

/// The group of a peer, whatever carries it: what the examples and the bench hold.
#[derive(Debug)]
pub enum AnyGroup {
    /// The TCP star (one machine, no installation).
    Tcp(TcpGroup),
    /// The MPI job (feature `mpi`).
    #[cfg(feature = "mpi")]
    Mpi(crate::mpi::MpiGroup),
}

impl<B: Backend> AllReduce<B> for AnyGroup {
    fn rank(&self) -> u32 {
        match self {
            AnyGroup::Tcp(g) => AllReduce::<B>::rank(g),
            #[cfg(feature = "mpi")]
            AnyGroup::Mpi(g) => AllReduce::<B>::rank(g),
        }
    }

    fn world(&self) -> u32 {
        match self {
            AnyGroup::Tcp(g) => AllReduce::<B>::world(g),
            #[cfg(feature = "mpi")]
            AnyGroup::Mpi(g) => AllReduce::<B>::world(g),
        }
    }

    fn all_reduce_sum(
        &mut self,
        tensor: Tensor<B, 1>,
        step: u64,
    ) -> Result<Tensor<B, 1>, DistributedError> {
        match self {
            AnyGroup::Tcp(g) => g.all_reduce_sum(tensor, step),
            #[cfg(feature = "mpi")]
            AnyGroup::Mpi(g) => g.all_reduce_sum(tensor, step),
        }
    }
}

/// Peers started by a launcher ([`launch_peers`]).
#[derive(Debug)]
pub enum Launched {
    /// `mpirun` runs every rank; the launcher only waits for it.
    Mpirun(LocalPeers),
    /// TCP peers `first..peers` at `root`; with `first = 1` the launcher joins as rank 0.
    Tcp {
        /// The peer processes.
        peers: LocalPeers,
        /// Where rank 0 listens.
        root: String,
    },
}

impl Launched {
    /// Waits for the processes started (see [`LocalPeers::wait`]).
    pub fn wait(self) -> Result<Vec<launch::PeerExit>, DistributedError> {
        match self {
            Launched::Mpirun(p) | Launched::Tcp { peers: p, .. } => p.wait(),
        }
    }
}

/// The `mpirun` of this machine: `$BURN_DP_MPIRUN`, else `mpirun` on the path.
pub fn mpirun_program() -> String {
    std::env::var("BURN_DP_MPIRUN").unwrap_or_else(|_| "mpirun".into())
}

/// Whether this process runs as root (`mpirun` refuses root without `--allow-run-as-root`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// The `mpirun` command that starts `peers` ranks of `program args` on this machine
/// (`--oversubscribe`: more ranks than cores is allowed; `--allow-run-as-root` for root).
pub fn mpirun_command(program: &Path, peers: u32, args: &[String]) -> Command {
    let mut c = Command::new(mpirun_program());
    c.args(["-np", &peers.to_string(), "--oversubscribe"]);
    if is_root() {
        c.arg("--allow-run-as-root");
    }
    c.arg(program).args(args);
    c
}

/// Starts the peers of `--peers N` on this machine: built with the feature `mpi`, `mpirun -np N
/// program args` (every rank, [`Launched::Mpirun`]); otherwise TCP peers `first..N` of `program
/// args --rank r --world N --root 127.0.0.1:PORT` ([`Launched::Tcp`]; with `first = 1` the
/// caller joins as rank 0). `args` must not hold `--peers` ([`PeerArgs::peer_args`]).
pub fn launch_peers(
    program: &Path,
    peers: u32,
    args: &[String],
    first: u32,
    output: PeerOutput,
) -> Result<Launched, DistributedError> {
    if peers == 0 || first >= peers {
        return Err(DistributedError::Config(format!(
            "cannot start peers {first}..{peers}"
        )));
    }
    if USES_MPI {
        let command = mpirun_command(program, peers, args);
        return Ok(Launched::Mpirun(LocalPeers::spawn_command(
            0, command, output,
        )?));
    }
    let root = format!("127.0.0.1:{}", launch::free_local_port()?);
    let peers = LocalPeers::spawn(
        program,
        first..peers,
        |rank| {
            let mut a = args.to_vec();
            a.extend(launch::rank_args(rank, peers, "--root", &root));
            a
        },
        output,
    )?;
    Ok(Launched::Tcp { peers, root })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        peers: PeerArgs,
    }

    fn parse(s: &str) -> Result<PeerArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(s.split_whitespace())).map(|c| c.peers)
    }

    #[test]
    fn one_vocabulary_parses_and_refuses_mixtures() {
        assert_eq!(parse("").unwrap(), PeerArgs::default());
        assert_eq!(parse("--peers 3").unwrap().peers, 3);
        assert_eq!(parse("--devices 2").unwrap().peers, 2);
        assert!(parse("--peers 0").is_err());
        assert!(parse("--peers 2 --rank 0 --world 2 --root a:1").is_err());
        assert!(parse("--rank 1").is_err());
        let tcp = parse("--rank 1 --world 2 --coordinator 127.0.0.1:9").unwrap();
        if !launched_by_mpi() {
            assert_eq!(
                tcp.role().unwrap(),
                PeerRole::Tcp {
                    rank: 1,
                    world: 2,
                    root: "127.0.0.1:9".into()
                }
            );
            assert!(!tcp.is_leader());
            let bad = parse("--rank 2 --world 2 --root 127.0.0.1:9").unwrap();
            assert!(matches!(bad.role(), Err(DistributedError::Config(_))));
            assert_eq!(
                parse("--peers 2").unwrap().role().unwrap(),
                PeerRole::Launcher { peers: 2 }
            );
        }
        assert_eq!(
            PeerArgs::peer_args(["--a".into(), "--peers".into(), "2".into(), "--b".into()]),
            vec!["--a".to_string(), "--b".to_string()]
        );
    }

    /// A program built without the feature `mpi` but started by `mpirun` stops with a typed
    /// error instead of running K unrelated one-process copies.
    #[cfg(not(feature = "mpi"))]
    #[test]
    fn an_mpi_launch_without_the_feature_is_a_typed_error() {
        if launched_by_mpi() {
            return;
        }
        // Tests run on one thread (.cargo/config.toml), so no other test sees the variable.
        std::env::set_var("OMPI_COMM_WORLD_SIZE", "2");
        let role = PeerArgs::default().role();
        let join = PeerArgs::default().join();
        std::env::remove_var("OMPI_COMM_WORLD_SIZE");
        assert!(
            matches!(&role, Err(DistributedError::Config(m)) if m.contains("feature `mpi`")),
            "{role:?}"
        );
        assert!(join.is_err());
    }
}
