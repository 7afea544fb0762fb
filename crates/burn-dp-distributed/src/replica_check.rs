//! The replica check: a [`Reducer`] decorator that makes every all-reduce of a data-parallel
//! step also prove that the peers are one run.
//!
//! ```text
//! reduce(parts):
//!     parts ‖ header            this peer's header: rank present, settings digest, parameter hash
//!     inner.reduce(…)           the step's one all-reduce carries the header too
//!     check the summed header   one peer per rank, equal settings, (every k steps) equal replicas
//! ```
//!
//! The header's layout and its checks are in `header.rs`; a failed check is the typed
//! [`DistributedError`] of the step, before any update is applied.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burn_dp::{DpAutodiff, NoiseShare, Reducer};

use crate::error::DistributedError;
use crate::header;

/// FNV-1a over the bytes of every float parameter of `model` (visit order): equal models give
/// equal hashes on every peer.
pub fn parameter_hash<B: Backend, M: AutodiffModule<DpAutodiff<B>>>(model: &M) -> u64 {
    struct Hasher(u64);
    impl<B: Backend> ModuleVisitor<DpAutodiff<B>> for Hasher {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<DpAutodiff<B>, D>>) {
            let data = param.val().into_data();
            for &b in data.as_bytes() {
                self.0 ^= b as u64;
                self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    let mut h = Hasher(0xcbf2_9ce4_8422_2325);
    model.visit::<Hasher>(&mut h);
    h.0
}

/// A reducer whose reduction also checks the peers: this peer's step header rides on the inner
/// reduction as one more part, and the summed headers must show one peer per rank, every peer
/// with these privacy settings, and (when `params` is given) equal parameter hashes.
pub struct ReplicaCheck<R> {
    inner: R,
    rank: u32,
    world: u32,
    settings: u64,
    params: Option<u64>,
    step: u64,
}

impl<R> ReplicaCheck<R> {
    /// Checks `inner`'s reduction at `step` for peer `rank` of `world`, whose settings digest
    /// is `settings` ([`settings_digest`](crate::settings_digest)) and whose parameter hash is
    /// `params` ([`parameter_hash`]; `None`: not compared at this step).
    pub fn new(
        inner: R,
        rank: u32,
        world: u32,
        settings: u64,
        params: Option<u64>,
        step: u64,
    ) -> Self {
        ReplicaCheck {
            inner,
            rank,
            world,
            settings,
            params,
            step,
        }
    }
}

impl<B, R> Reducer<B> for ReplicaCheck<R>
where
    B: Backend,
    R: Reducer<B>,
    R::Error: From<DistributedError>,
{
    type Error = R::Error;

    fn share(&self) -> NoiseShare {
        self.inner.share()
    }

    fn reduce(&mut self, mut parts: Vec<Tensor<B, 1>>) -> Result<Vec<Tensor<B, 1>>, R::Error> {
        let own = header::encode(self.rank, self.world, self.settings, self.params);
        let n = own.len();
        let device = parts
            .first()
            .map(Tensor::device)
            .ok_or_else(|| DistributedError::Config("a step without parameters".into()))?;
        parts.push(Tensor::from_data(TensorData::new(own, [n]), &device));
        let mut reduced = self.inner.reduce(parts)?;
        let summed = reduced
            .pop()
            .ok_or_else(|| DistributedError::Config("the reduction lost the step header".into()))?;
        let summed = crate::all_reduce::host_values(summed, self.rank)?;
        header::check(
            &summed,
            self.world,
            self.settings,
            self.params.is_some(),
            self.step,
        )?;
        Ok(reduced)
    }
}
