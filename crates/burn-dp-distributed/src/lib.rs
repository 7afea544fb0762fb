//! # burn-dp-distributed
//!
//! Data-parallel differentially private training for [burn-dp](burn_dp) on burn's collective
//! operations (`burn-collective`): one process per peer (device), on one machine or several.
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
//! The all-reduce is the [`AllReduce`] trait: [`TcpGroup`] (a star over TCP through peer 0, the
//! default of `burn-dp-peer`) or `PeerGroup` (feature `collective`: burn-collective's cross-node
//! path, which in 0.21.0
//! completes one all-reduce per registration and then waits forever: its node barrier never clears
//! its list of synced nodes and its transfer ids repeat, tracel-ai/burn#4549; the timeout turns
//! that into [`DistributedError::Timeout`], `burn-dp-peer probe` shows it).
//!
//! Launch `K` peers on one machine with `burn-dp-peer launch --peers K ...`, or start
//! `burn-dp-peer train --rank r --world K --orchestrator host:port --host <this host>` on each
//! machine (see the book's chapter "Data-parallel training").

//!
//! [`launch`] starts the peers of a run on this machine (`burn-dp-peer launch`, `bench train
//! --peers`, the examples' `--devices`). The opt-in feature `collective` adds burn-collective's
//! `PeerGroup` (and `burn-dp-peer --transport collective`, `burn-dp-peer probe`); without it the
//! crate needs no burn-collective (what the examples, the bench and `burn-dp-peer`'s default use:
//! [`TcpGroup`]).

pub mod all_reduce;
pub mod error;
#[cfg(feature = "collective")]
pub mod group;
pub mod header;
pub mod launch;
pub mod tcp;
pub mod trainer;

pub use all_reduce::AllReduce;
#[cfg(feature = "collective")]
pub use burn_collective::AllReduceStrategy;
pub use burn_dp::shard_range;
pub use error::DistributedError;
#[cfg(feature = "collective")]
pub use group::{NodeConfig, PeerGroup};
pub use launch::{free_local_port, LocalPeers, PeerExit, PeerOutput};
pub use tcp::TcpGroup;
pub use trainer::{parameter_hash, AnyTrainer, DistributedTrainer};
