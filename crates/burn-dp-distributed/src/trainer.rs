//! One peer of a data-parallel DP run: [`DistributedTrainer`].
//!
//! ```text
//! each step, on every peer r of K (same lr, same step count):
//!     draw the local batch: Poisson at rate q over shard r of the data set
//!     clip and accumulate its physical batches            (no noise; empty batch: zeros)
//!     flat = [Σ c_i g_i of every parameter, visit order]  + N(0, σ²R²) on slice r of every parameter
//!     flat = all-reduce(flat ‖ step header)               (MPI or TCP, one buffer)
//!     check the header: one peer per rank, equal settings, (every `check_every` steps) equal
//!     replicas                                            (`ReplicaCheck`, a reducer decorator)
//!     θ = inner.step(lr, θ, flat / (q·N))                 (global expected batch size)
//!     account one step at the global q
//! ```

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::Optimizer;
use burn::tensor::Tensor;
use burn_dp::{
    DpAutodiff, DpError, FlatAllReduce, NoiseBackend, NoiseShare, PrivateSetup, PrivateTrainer,
    StepReport,
};

use crate::all_reduce::AllReduce;
use crate::error::DistributedError;
use crate::header;
use crate::replica_check::{parameter_hash, ReplicaCheck};

/// DP training of one replica in a group of peers (one process each): owns a [`PrivateTrainer`]
/// over this peer's shard and the group `G` (`MpiGroup` with the feature `mpi`,
/// [`TcpGroup`](crate::TcpGroup), or either as [`AnyGroup`](crate::AnyGroup)).
pub struct DistributedTrainer<M, O, B: NoiseBackend, G> {
    trainer: PrivateTrainer<M, O, B>,
    group: G,
    check_every: u64,
    /// This peer's [`header::settings_digest`], compared with every peer's at each step.
    settings: u64,
    steps: u64,
}

impl<M, O, B, G> DistributedTrainer<M, O, B, G>
where
    B: NoiseBackend,
    G: AllReduce<B>,
    M: AutodiffModule<DpAutodiff<B>>,
    O: Optimizer<M, DpAutodiff<B>>,
{
    /// The trainer of peer `group.rank()`: `model` must be the same on every peer (built from
    /// the same seed or checkpoint; the first step checks it). `setup.privacy` holds the *global*
    /// q (each of the whole `setup.dataset_size` examples joins a step with probability q), the
    /// sampler draws from this peer's [`shard_range`](burn_dp::shard_range), and every step
    /// divides by `q·dataset_size`. The replicas' parameter hashes are compared every
    /// `check_every` steps (≥ 1), and at the first step.
    pub fn new(
        model: M,
        inner: O,
        setup: PrivateSetup,
        group: G,
        check_every: u64,
    ) -> Result<Self, DistributedError> {
        if check_every == 0 {
            return Err(DistributedError::Config(
                "check_every must be at least 1".into(),
            ));
        }
        let settings = header::settings_digest(&setup, group.world());
        let trainer = PrivateTrainer::for_peer(model, inner, setup, group.rank(), group.world())?;
        Ok(DistributedTrainer {
            trainer,
            group,
            check_every,
            settings,
            steps: 0,
        })
    }

    /// One DP step of the group with learning rate `lr` (every peer calls it with the same `lr`).
    /// `losses(model, indices)` returns the per-sample losses of the global example `indices`
    /// (of this peer's shard), as for [`PrivateTrainer::step`].
    ///
    /// A peer that does not join within the group's timeout is [`DistributedError::Timeout`];
    /// replicas that differ are [`DistributedError::ReplicasDiverged`]. After either, stop and
    /// resume every peer from the last checkpoint.
    ///
    /// # Shapes
    /// `losses` returns `[P]`, one loss per row of `indices`.
    pub fn step<F>(&mut self, lr: f64, losses: F) -> Result<StepReport, DistributedError>
    where
        F: FnMut(&M, &[usize]) -> Tensor<DpAutodiff<B>, 1>,
    {
        let step = self.steps;
        let check = step.is_multiple_of(self.check_every);
        let (rank, world) = (self.group.rank(), self.group.world());
        let params = check.then(|| parameter_hash::<B, M>(self.trainer.model()));
        let share = NoiseShare {
            shard: rank as usize,
            shards: world as usize,
        };
        let group = &mut self.group;
        let all_reduce = FlatAllReduce::new(share, |flat| group.all_reduce_sum(flat, step));
        let mut reducer = ReplicaCheck::new(all_reduce, rank, world, self.settings, params, step);
        let report = self.trainer.step_reduced(lr, losses, &mut reducer)?;
        self.steps += 1;
        Ok(report)
    }

    /// The replica as trained so far.
    pub fn model(&self) -> &M {
        self.trainer.model()
    }

    /// The underlying single-peer trainer (ε, the optimizer, the sampler's shard).
    pub fn trainer(&self) -> &PrivateTrainer<M, O, B> {
        &self.trainer
    }

    /// The group.
    pub fn group(&self) -> &G {
        &self.group
    }

    /// Steps taken by this trainer since it was built or resumed.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// ε spent so far (the global q and the number of steps; the same on every peer).
    pub fn epsilon(&self) -> Result<burn_dp::Epsilon, DistributedError> {
        Ok(self.trainer.epsilon()?)
    }

    /// Each peer saves its checkpoint in `dir/peer-<rank>` (the model and optimizer, identical on
    /// every peer, and this peer's sampler and privacy history). Call between steps, on every
    /// peer.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), DistributedError> {
        Ok(self
            .trainer
            .save_checkpoint(&dir.join(format!("peer-{}", self.group.rank())))?)
    }

    /// Resumes every peer from `dir/peer-<rank>` (written by
    /// [`DistributedTrainer::save_checkpoint`]): the model, the optimizer, the privacy history (ε
    /// continues where it was) and the sampler.
    pub fn resume(&mut self, dir: &Path) -> Result<(), DistributedError> {
        let dir = dir.join(format!("peer-{}", self.group.rank()));
        Ok(self.trainer.resume(&dir)?)
    }

    pub fn into_parts(self) -> (M, G) {
        (self.trainer.into_model(), self.group)
    }
}

/// A private run in one process or as one peer of a data-parallel group, behind one interface:
/// what a program that offers both (the examples' `--devices`, `bench train --peers`) holds.
/// `step`, `epsilon`, `model` and `into_model` do the same on both; a one-process run is
/// [`PrivateTrainer`] itself, so it gives the same results bit for bit.
pub enum AnyTrainer<M, O, B: NoiseBackend, G> {
    /// One process.
    Single(PrivateTrainer<M, O, B>),
    /// One peer of a data-parallel group.
    Peer(DistributedTrainer<M, O, B, G>),
}

impl<M, O, B, G> AnyTrainer<M, O, B, G>
where
    B: NoiseBackend,
    G: AllReduce<B>,
    M: AutodiffModule<DpAutodiff<B>>,
    O: Optimizer<M, DpAutodiff<B>>,
{
    /// One DP step (of the group): [`PrivateTrainer::step`] or [`DistributedTrainer::step`].
    ///
    /// # Shapes
    /// `losses` returns `[P]`, one loss per row of `indices`.
    pub fn step<F>(&mut self, lr: f64, losses: F) -> Result<StepReport, DistributedError>
    where
        F: FnMut(&M, &[usize]) -> Tensor<DpAutodiff<B>, 1>,
    {
        match self {
            AnyTrainer::Single(t) => Ok(t.step(lr, losses)?),
            AnyTrainer::Peer(t) => t.step(lr, losses),
        }
    }

    /// ε spent so far (with the global q on every peer).
    pub fn epsilon(&self) -> Result<burn_dp::Epsilon, DpError> {
        match self {
            AnyTrainer::Single(t) => t.epsilon(),
            AnyTrainer::Peer(t) => t.trainer().epsilon(),
        }
    }

    /// The model (a peer's replica is the same on every peer).
    pub fn model(&self) -> &M {
        match self {
            AnyTrainer::Single(t) => t.model(),
            AnyTrainer::Peer(t) => t.model(),
        }
    }

    /// The trained model.
    pub fn into_model(self) -> M {
        match self {
            AnyTrainer::Single(t) => t.into_model(),
            AnyTrainer::Peer(t) => t.into_parts().0,
        }
    }
}
