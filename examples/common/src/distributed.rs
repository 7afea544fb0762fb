//! Data-parallel fine-tuning: the peer flags of every program (`--peers`, or MPI's rank and
//! world) and the trainer that is one process or one peer.

use crate::*;

/// The data-parallel flags both examples share (`#[command(flatten)]`): burn-dp-distributed's
/// [`PeerArgs`](burn_dp_distributed::PeerArgs), the flags of the bench and `burn-dp-peer` too.
/// `--peers N` (alias `--devices`) starts N peers on this machine (`mpirun -np N` when built
/// with the feature `mpi`, else a TCP group on 127.0.0.1); under `mpirun`/`srun` rank and world
/// come from MPI. With neither, the run is the ordinary one-process run.
#[derive(clap::Args, Debug, Clone)]
pub struct DistributedArgs {
    /// The peer flags.
    #[command(flatten)]
    pub peers: burn_dp_distributed::PeerArgs,
}

impl DistributedArgs {
    /// Whether the fine-tuning runs over more than one peer.
    pub fn is_data_parallel(&self) -> bool {
        self.peers.is_data_parallel()
    }

    /// Whether this process writes the results (rank 0, or a one-process run).
    pub fn is_leader(&self) -> bool {
        self.peers.is_leader()
    }

    /// Refuses what data-parallel runs do not support: `--sweep` (its runs would each start
    /// peers of the whole sweep) and `--non-private` (the baseline is one process); and peer
    /// flags that do not go together.
    pub fn check(&self, sweep: bool, non_private: bool) -> Result<(), Error> {
        self.peers.role()?;
        if self.is_data_parallel() && (sweep || non_private) {
            return Err(
                "--peers / MPI run the private fine-tuning of one run: not with --sweep or \
                 --non-private"
                    .into(),
            );
        }
        Ok(())
    }

    /// With `--peers N` in a build with the feature `mpi`: runs `mpirun -np N` of this
    /// executable with the same arguments but `--peers` (every rank of the job; rank 0 prints
    /// the results) and returns its exit status; otherwise `None` (the TCP peers are started by
    /// [`PrivateRun::new`]).
    pub fn run_mpirun(&self) -> Result<Option<()>, Error> {
        use burn_dp_distributed::{launch_peers, Launched, PeerOutput, PeerRole};
        let PeerRole::Launcher { peers } = self.peers.role()? else {
            return Ok(None);
        };
        if !burn_dp_distributed::USES_MPI {
            return Ok(None);
        }
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find this executable to start peers: {e}"))?;
        let args = burn_dp_distributed::PeerArgs::peer_args(std::env::args().skip(1));
        eprintln!("data-parallel: mpirun -np {peers} {}", exe.display());
        match launch_peers(&exe, peers, &args, 0, PeerOutput::Inherit)? {
            Launched::Mpirun(p) | Launched::Tcp { peers: p, .. } => p.wait()?,
        };
        Ok(Some(()))
    }
}

/// The private fine-tuning of an example: a [`burn_dp::PrivateTrainer`] in one process or a
/// [`burn_dp_distributed::DistributedTrainer`] peer ([`burn_dp_distributed::AnyTrainer`]); with
/// `--devices N`, rank 0 also owns the processes of ranks 1..N it started.
pub struct PrivateRun<M, O, B: burn_dp::NoiseBackend> {
    /// The trainer: `step`, `epsilon` and `model` are the same in both forms.
    pub trainer: burn_dp_distributed::AnyTrainer<M, O, B, burn_dp_distributed::AnyGroup>,
    /// The TCP peer processes this one started (`--peers` without MPI), waited for at the end.
    launched: Option<burn_dp_distributed::LocalPeers>,
}

/// Compare the replicas' parameter hashes every this many steps (and at the first).
pub const REPLICA_CHECK_EVERY: u64 = 10;

impl<M, O, B> PrivateRun<M, O, B>
where
    B: burn_dp::NoiseBackend,
    M: burn::module::AutodiffModule<burn_dp::DpAutodiff<B>>,
    O: burn::optim::Optimizer<M, burn_dp::DpAutodiff<B>>,
{
    /// The trainer of `dist` for `setup`: [`burn_dp::PrivateTrainer::new`] itself in a
    /// one-process run (the same run bit for bit); else this process's peer of a data-parallel
    /// group over the same `setup.dataset_size` examples at the same q (every peer reports the
    /// same ε). Under MPI the group is the MPI job. With `--peers N` over TCP (a build without
    /// the feature `mpi`) this process is rank 0 and first starts ranks 1..N: this executable
    /// with the same arguments, `--peers` replaced by `--rank r --world N --root
    /// 127.0.0.1:PORT`, `--quiet`, their standard output discarded.
    pub fn new(
        dist: &DistributedArgs,
        model: M,
        inner: O,
        setup: burn_dp::PrivateSetup,
    ) -> Result<Self, Error> {
        use burn_dp_distributed::{
            launch_peers, AnyGroup, AnyTrainer, DistributedTrainer, Launched, PeerArgs, PeerOutput,
            PeerRole, TcpGroup,
        };
        if !dist.is_data_parallel() {
            let trainer = burn_dp::PrivateTrainer::new(model, inner, setup)?;
            return Ok(PrivateRun {
                trainer: AnyTrainer::Single(trainer),
                launched: None,
            });
        }
        let (group, launched) = match dist.peers.role()? {
            PeerRole::Launcher { peers: world } => {
                let exe = std::env::current_exe()
                    .map_err(|e| format!("cannot find this executable to start peers: {e}"))?;
                let args = std::env::args_os()
                    .skip(1)
                    .map(|a| {
                        a.into_string().map_err(|a| {
                            format!(
                                "--peers passes every argument to its peers: {a:?} is not UTF-8"
                            )
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut own = PeerArgs::peer_args(args);
                if !own.iter().any(|a| a == "--quiet") {
                    own.push("--quiet".into());
                }
                let Launched::Tcp { peers, root } =
                    launch_peers(&exe, world, &own, 1, PeerOutput::DiscardStdout)?
                else {
                    return Err(
                        "mpirun is started before the run (DistributedArgs::run_mpirun)".into(),
                    );
                };
                eprintln!("data-parallel: started peers 1..{world} of {world} on {root}");
                let group = TcpGroup::join(0, world, &root, dist.peers.timeout()?)?;
                (AnyGroup::Tcp(group), Some(peers))
            }
            _ => match dist.peers.join()? {
                Some(group) => (group, None),
                None => {
                    let trainer = burn_dp::PrivateTrainer::new(model, inner, setup)?;
                    return Ok(PrivateRun {
                        trainer: AnyTrainer::Single(trainer),
                        launched: None,
                    });
                }
            },
        };
        let trainer = DistributedTrainer::new(model, inner, setup, group, REPLICA_CHECK_EVERY)?;
        Ok(PrivateRun {
            trainer: AnyTrainer::Peer(trainer),
            launched,
        })
    }

    /// One DP step (of the group): as [`burn_dp::PrivateTrainer::step`].
    ///
    /// # Shapes
    /// `losses` returns `[P]`, one loss per row of `indices`.
    pub fn step<F>(&mut self, lr: f64, losses: F) -> Result<burn_dp::StepReport, Error>
    where
        F: FnMut(&M, &[usize]) -> burn::tensor::Tensor<burn_dp::DpAutodiff<B>, 1>,
    {
        Ok(self.trainer.step(lr, losses)?)
    }

    /// ε spent so far (the global q on every peer).
    pub fn epsilon(&self) -> Result<burn_dp::Epsilon, burn_dp::DpError> {
        self.trainer.epsilon()
    }

    /// The model (this peer's replica, identical on every peer).
    pub fn model(&self) -> &M {
        self.trainer.model()
    }

    /// The trained model, after the peers this process started have ended (an error names
    /// those that failed).
    pub fn into_model(self) -> Result<M, Error> {
        use burn_dp_distributed::AnyTrainer;
        match self.trainer {
            AnyTrainer::Single(t) => Ok(t.into_model()),
            AnyTrainer::Peer(t) => {
                // The group (rank 0 is the star's centre) stays open until the peers have ended.
                let (model, _group) = t.into_parts();
                if let Some(peers) = self.launched {
                    peers.wait()?;
                }
                Ok(model)
            }
        }
    }
}
