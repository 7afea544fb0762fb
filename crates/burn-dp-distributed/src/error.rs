//! Errors of data-parallel DP training.

use thiserror::Error;

/// Everything that can stop a data-parallel run; every peer stops on the first one.
#[derive(Debug, Error)]
pub enum DistributedError {
    /// The DP machinery refused or failed (budget, clipping, checkpoint, ...).
    #[error(transparent)]
    Dp(#[from] burn_dp::DpError),
    /// A collective operation returned an error (a peer lost, a root that cannot be reached,
    /// buffers of different lengths, ...).
    #[error("collective {op} failed on peer {rank}: {detail}")]
    Collective {
        /// The operation (`join`, `all-reduce`).
        op: &'static str,
        /// This peer's rank.
        rank: u32,
        /// What went wrong.
        detail: String,
    },
    /// A collective operation did not complete in time: a peer died, hangs, or never joined.
    /// The collective state of this process is unusable afterwards; resume from the last
    /// checkpoint in a new run.
    #[error("collective {op} on peer {rank} did not complete within {seconds} s (step {step}): a peer died, hangs or never joined; restart the run from its last checkpoint")]
    Timeout {
        /// The operation (`join`, `all-reduce`).
        op: &'static str,
        /// This peer's rank.
        rank: u32,
        /// The timeout.
        seconds: f64,
        /// The DP step (steps taken before it).
        step: u64,
    },
    /// The replicas' parameters differ (they started from different models, or a peer computed
    /// another update).
    #[error("replicas diverged before step {step}: parameter hashes per peer {hashes:x?}")]
    ReplicasDiverged {
        /// The DP step (steps taken before it).
        step: u64,
        /// Each peer's parameter hash, by rank.
        hashes: Vec<u64>,
    },
    /// The peers' privacy settings differ (σ, clipping, q, N, δ, accountant, noise source kind or
    /// world; see [`crate::header::settings_digest`]).
    #[error("at step {step} the peers' privacy settings differ (settings digest per peer, by rank: {digests:x?}): every peer must run with the same noise multiplier, clipping, sample rate, data set size, delta, accountant and noise source kind")]
    SettingsDiffer {
        /// The DP step (steps taken before it).
        step: u64,
        /// Each rank's settings digest.
        digests: Vec<u64>,
    },
    /// A rank is taken by several peers, or by none.
    #[error("at step {step} rank {rank} was claimed by {peers} peers: every rank of the world must be taken by exactly one peer")]
    Ranks {
        /// The DP step (steps taken before it).
        step: u64,
        /// The rank.
        rank: u32,
        /// How many peers claimed it.
        peers: f32,
    },
    /// An invalid setting (rank outside the world, no peers, a bad address).
    #[error("invalid data-parallel configuration: {0}")]
    Config(String),
    /// Starting or waiting for peer processes failed.
    #[error("launching peers: {0}")]
    Launch(String),
}
