//! What the burn-dp examples share: command-line value types, clipping and noise-source setup,
//! training curves written as SVG, the metrics file, progress bars, sweeps, the shared `main`
//! and the private run in one process or as peers.

mod args;
mod distributed;
mod example;
mod fine_tune;
mod outputs;
mod plain;
mod plot;
mod sweep;
#[cfg(test)]
mod tests;
mod weights;

pub use args::*;
pub use distributed::*;
pub use example::*;
pub use fine_tune::{fine_tune, FineTuned, FineTuning};
pub use outputs::*;
pub use plain::*;
pub use plot::{curve_svg, sweep_svg};
pub use sweep::*;
pub use weights::*;

/// Error type of the examples: a message for the user.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
