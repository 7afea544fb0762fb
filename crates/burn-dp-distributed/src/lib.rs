//! # burn-dp-distributed
//!
//! Data-parallel differentially private training for [burn-dp](burn_dp) over MPI (or TCP on one
//! machine): one process per peer (device), on one machine or several.
//!
//! The DP step stays sound under data parallelism:
//! - each peer clips and accumulates its own Poisson draw (rate q over its shard of the data set)
//!   with no noise; an empty local batch still joins;
//! - once per logical batch the clipped sums are all-reduced as **one flat buffer** in the model's
//!   visiting order, and the Gaussian noise is added **exactly once** per coordinate (peer `r`
//!   noises slice `r` of every parameter before the reduce, `NoiseShare::elements`);
//! - every peer divides by the **global** expected batch size `q·N` and takes the same optimizer
//!   step; a parameter hash travels with the buffer and is compared every few steps
//!   ([`DistributedError::ReplicasDiverged`]);
//! - the accountant of every peer sees the global q and the number of steps;
//! - a collective call that does not complete in time is [`DistributedError::Timeout`] (a peer
//!   died), not a hang; the last checkpoint resumes the run with the same ε.
//!
//! The all-reduce is the [`AllReduce`] trait, carried by an existing engine:
//! - `MpiGroup` (feature `mpi`): MPI's own `MPI_Allreduce` (`MPI_SUM`) between the ranks of a
//!   job started by `mpirun -np K`, `mpirun -H a,b ...` or Slurm's `srun`; rank and world come
//!   from MPI. A peer that dies ends the job (MPI aborts the other ranks).
//! - `NcclGroup` (feature `nccl`, implies `mpi`): on CUDA, the buffer all-reduced in place on the
//!   device with NCCL, the communicator bootstrapped over MPI (not yet run on GPUs);
//! - [`TcpGroup`]: a star over TCP through peer 0, the zero-install fallback for one machine
//!   (what `--peers N` starts when the program is built without `mpi`); a peer that dies is a
//!   closed connection or a [`DistributedError::Timeout`], not a hang.
//!
//! Every program takes the same flags for its peers, [`PeerArgs`] (`--peers N` on one machine;
//! nothing under `mpirun`/`srun`), and holds an [`AnyGroup`] (see the book's chapter
//! "Data-parallel training").
//!
//! burn-collective 0.21.0's cross-node path is not used: it completes one all-reduce per
//! registration and then waits forever (tracel-ai/burn#4549).

mod all_reduce;
mod error;
mod header;
mod launch;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
mod peer;
mod replica_check;
mod tcp;
mod trainer;

#[cfg(feature = "mpi")]
pub use crate::mpi::MpiGroup;
#[cfg(feature = "nccl")]
pub use crate::nccl::NcclGroup;
pub use all_reduce::AllReduce;
pub use error::DistributedError;
pub use header::settings_digest;
pub use launch::{free_local_port, LocalPeers, PeerExit, PeerOutput};
pub use peer::{
    launch_peers, launched_by_mpi, launcher_rank, launcher_world, mpirun_command, AnyGroup,
    Launched, PeerArgs, PeerRole, USES_MPI,
};
pub use replica_check::{parameter_hash, ReplicaCheck};
pub use tcp::TcpGroup;
pub use trainer::{AnyTrainer, DistributedTrainer};
