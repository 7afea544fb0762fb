//! `bench train`: training throughput (examples/s) and peak memory for the anchor shapes, in four
//! modes — non-DP full, non-DP bias-only, DP full (book-keeping, automatic clipping), DP bias-only —
//! one JSON line per configuration. Each configuration runs in its own process (the binary
//! re-executes itself with `--single`) so peak-memory figures and kernel caches do not mix.
//!
//! Anchor shapes (the shapes of the PyTorch reference measurements, [`PYTORCH_H200`]): GPT-2 small
//! B=32 and B=96, medium B=16, large B=8 (sequence 128, untied head), ViT-B/16 B=32, ResNet-50 with
//! GroupNorm B=32 at 224². `--batch`, `--seq` and
//! `--image` override them (for CPU runs, which cannot afford the anchor sizes).
//!
//! Every line also carries the time to the first step (`start_to_first_step_s`: from the process's
//! `main` to the end of its first step, kernel compilation and autotuning included on CUDA;
//! `first_step_s`: that step alone), the host↔device bytes and device → host reads of a timed
//! step (`to_device_bytes_per_step`, `to_host_bytes_per_step`, `host_reads_per_step`) and, on
//! cubecl backends, the device allocator's memory after the steps (`device_bytes_in_use`,
//! `device_bytes_reserved`; [`burn_dp::DeviceMemory`]). With `--profile`, as many steps again run after
//! the timed ones, cut into the phases of [`burn_dp::profile`] with the device synchronised
//! around each (`phases_ms`, per step; `unphased_ms` is the rest of the step), so the throughput
//! figures stay free of the profile's synchronisations.

mod config;
mod measure;
mod orchestrate;
mod report;
#[cfg(test)]
mod tests;

use std::sync::OnceLock;
use std::time::Instant;

pub use config::*;
pub use measure::*;
pub use orchestrate::*;
pub use report::*;

/// When `main` started (set first thing in `main`; the origin of `start_to_first_step_s`).
pub static PROCESS_START: OnceLock<Instant> = OnceLock::new();
