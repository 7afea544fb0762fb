//! # burn-dp-train
//!
//! Differentially private training with burn-train's `Learner`: the usual `SupervisedTraining`
//! loop, dashboard, metrics and checkpoints, with every update a DP step of [burn_dp].
//!
//! ```text
//! PrivateTraining (one session: a DpOptimizer, which owns the PoissonSampler and PrivacyState)
//!  ├─ data_loader()  → the Learner's train loader: one item = one Poisson logical batch
//!  │                   (budget checked before each draw; refused → the Learner is interrupted)
//!  ├─ TrainStep::step(PrivateBatch) → PrivateBatch::train(model, per-sample losses):
//!  │                   each fixed-shape physical batch: DpStep::clip_and_accumulate
//!  │                   (losses · mask → clip → accumulate, as PrivateTrainer does)
//!  ├─ optimizer()    → the Learner's optimizer: noise once, scale by q·N, inner step, account
//!  │                   (gradients from anywhere else are refused); its record holds the DP state
//!  └─ register()     → ε and σ training metrics, the interrupter
//! ```
//!
//! The update is computed by the same [`burn_dp::DpOptimizer`] as [`burn_dp::PrivateTrainer`],
//! built the same way and driven through the same draw → clip and accumulate → finish, so a
//! Learner run equals a `PrivateTrainer` run with the same fixed seed to the bit.
//!
//! Modules depend one way: `session` → (`loader`, `optimizer`) → `shared` (the session's state).
#![warn(missing_docs)]

mod error;
mod loader;
mod metric;
mod optimizer;
mod session;
mod shared;

pub use error::DpTrainError;
pub use loader::{PoissonDataLoader, PrivateBatch, PrivateTrainLoader};
pub use metric::{
    EpsilonMetric, EpsilonSpent, NoiseMultiplierMetric, PrivacyMetric, PrivacyQuantity,
    PrivateStepOutput, StepNoiseMultiplier,
};
pub use optimizer::LearnerDpOptimizer;
pub use session::{PrivateTraining, SessionStatus};
