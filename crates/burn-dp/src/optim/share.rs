//! The noise shares of a data-parallel step: which elements of every parameter each peer
//! noises, so that over all peers every element gets its noise exactly once.

use crate::error::DpError;
use crate::noise::chacha::NORMALS_PER_BLOCK;

/// Which part of the noise one peer of a data-parallel step adds (see
/// [`DpOptimizer::finish`](super::DpOptimizer::finish)): every trainable parameter is cut into
/// `shards` contiguous slices of elements, aligned to the noise stream's blocks ([`NoiseShare::elements`]), and the
/// peer whose index is `shard` noises slice `shard` of every parameter. Over all `shards` peers
/// every element gets its noise exactly once, and each peer draws about `1/shards` of it whatever
/// the parameters' sizes (one huge embedding does not land on one peer). The values are those a
/// single process draws for the same key and step (an element keeps its place in the stream), so
/// a fixed-seed run on `K` peers adds the same noise as on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoiseShare {
    /// This peer's index, `0..shards`.
    pub shard: usize,
    /// Number of peers that share the noise.
    pub shards: usize,
}

impl NoiseShare {
    /// All the noise on this process (a single process, or "noise on peer 0" with
    /// [`NoiseShare::none`] on the others).
    pub fn all() -> Self {
        NoiseShare {
            shard: 0,
            shards: 1,
        }
    }

    /// The elements of a parameter of `numel` elements that this share noises: the boundaries
    /// `b_j = min(numel, ⌈j·numel / shards⌉ rounded up to a multiple of the stream's block)`,
    /// `b_0 = 0`, `b_shards = numel`, give slice `b_shard .. b_shard+1`; the slices of all shards
    /// are disjoint and cover `0..numel`, and each starts on a block boundary, so it can be drawn
    /// on its own at the single-process values.
    pub fn elements(&self, numel: usize) -> std::ops::Range<usize> {
        let shards = self.shards.max(1);
        let bound = |j: usize| {
            let even = (j as u128 * numel as u128).div_ceil(shards as u128) as usize;
            (even.div_ceil(NORMALS_PER_BLOCK) * NORMALS_PER_BLOCK).min(numel)
        };
        bound(self.shard.min(shards))..bound((self.shard + 1).min(shards))
    }

    pub(super) fn validate(&self) -> Result<(), DpError> {
        if self.shards == 0 || self.shard >= self.shards {
            return Err(DpError::InvalidConfig(format!(
                "noise share {} of {} does not exist",
                self.shard, self.shards
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::SgdConfig;
    use burn::tensor::backend::Backend;
    use burn_dp_accountant::AccountantKind;

    use super::*;
    use crate::clip::ClippingFn;
    use crate::engine::{DpAutodiff, PerSampleConfig};
    use crate::noise::NoiseSource;
    use crate::privacy::PrivacyState;
    use crate::sampling::PoissonSampler;
    use crate::DpOptimizer;

    type Dp = DpAutodiff<NdArray<f32>>;

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        fc: Linear<B>,
    }

    /// The slices of every share are disjoint, cover the parameter, start on a block boundary
    /// and are balanced (no share holds more than one block over its `1/K` of the elements).
    #[test]
    fn noise_shares_partition_every_parameter_evenly() {
        for numel in [0usize, 1, 9, 10, 11, 57, 1000, 100_003] {
            for shards in 1..=7 {
                let mut next = 0;
                for shard in 0..shards {
                    let r = NoiseShare { shard, shards }.elements(numel);
                    assert_eq!(r.start, next, "numel {numel}, {shard} of {shards}");
                    assert!(r.start.is_multiple_of(NORMALS_PER_BLOCK) || r.start == numel);
                    assert!(r.len() <= numel / shards + 2 * NORMALS_PER_BLOCK);
                    next = r.end;
                }
                assert_eq!(next, numel);
            }
        }
    }

    /// The noise `K` shares add (each on an empty local batch) sums to the single-process noise
    /// of the same step, bit for bit: each element is drawn once, at its place in the stream.
    #[test]
    fn shares_add_the_single_process_noise_exactly_once() {
        let device = Default::default();
        let model = Net::<Dp> {
            fc: LinearConfig::new(19, 3).init(&device),
        };
        let buffer = |share: NoiseShare| {
            let noise = NoiseSource::FixedSeedForExperiments(23);
            let sampler = PoissonSampler::new(100, 0.1, 4, noise).unwrap();
            let privacy =
                PrivacyState::with_noise_multiplier(1.3, 0.1, 1e-5, AccountantKind::Rdp).unwrap();
            let mut optim = DpOptimizer::new(
                SgdConfig::new().init::<Dp, Net<Dp>>(),
                PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
                privacy,
                sampler,
                noise,
            )
            .unwrap();
            let mut seen = None;
            optim
                .step_all_reduced(0.1, model.clone(), share, |flat| {
                    seen = Some(flat.to_data().to_vec::<f32>().unwrap());
                    Ok::<_, DpError>(flat)
                })
                .unwrap();
            seen.unwrap()
        };
        let whole = buffer(NoiseShare::all());
        assert_eq!(whole.len(), 60);
        assert!(whole.iter().all(|v| *v != 0.0));
        for shards in [2, 3, 7] {
            let mut sum = vec![0f32; whole.len()];
            for shard in 0..shards {
                let part = buffer(NoiseShare { shard, shards });
                for (s, p) in sum.iter_mut().zip(&part) {
                    assert!(*s == 0.0 || *p == 0.0, "an element was noised twice");
                    *s += p;
                }
            }
            assert_eq!(sum, whole, "{shards} shares");
        }
    }
}
