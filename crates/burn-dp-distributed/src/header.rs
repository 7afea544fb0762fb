//! The header every peer adds to the flat buffer of each step's all-reduce: which rank it is, a
//! digest of its privacy settings, and (every `check_every` steps) a hash of its parameters.
//!
//! ```text
//! per rank r, 7 slots:  [present = 1 | settings digest, 3 × 22 bits | parameter hash, 3 × 22 bits]
//! peer r fills only its own 7 slots; after the sum every rank's slots must hold exactly one
//! peer's values (present = 1), and every peer's settings digest must be the receiver's own.
//! ```
//!
//! The values are integers below 2²² in f32 (exact), so the sum of one peer's slots with zeros is
//! the peer's values bit for bit, and two peers claiming one rank show as `present = 2`. Riding on
//! the all-reduce the step makes anyway, the check needs no extra round trip, works on every
//! transport, and is made at the first step, before any update.

use burn_dp::accounting::Accountant;
use burn_dp::PrivateSetup;

use crate::error::DistributedError;

const CHUNK_BITS: u32 = 22;
const CHUNKS: usize = 3;
/// Slots per rank: presence, settings digest, parameter hash.
pub(crate) const SLOTS: usize = 1 + 2 * CHUNKS;

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A digest of what every peer of a run must agree on: σ, the clipping function, style and
/// bounds, q, N, δ, the accountant, the kind of noise source, and the world size. (A peer with a
/// smaller σ·R would noise its share of every parameter less; another N would overlap shards.)
pub fn settings_digest(setup: &PrivateSetup, world: u32) -> u64 {
    let p = &setup.privacy;
    let noise = match setup.noise {
        burn_dp::NoiseSource::Os => "os",
        burn_dp::NoiseSource::FixedSeedForExperiments(_) => "fixed-seed",
    };
    let text = format!(
        "sigma={:?};clipping={:?};q={:?};n={};delta={:?};accountant={:?};noise={noise};world={world}",
        p.noise_multiplier,
        setup.per_sample.clipping,
        p.sample_rate,
        setup.dataset_size,
        p.delta,
        p.accountant.kind(),
    );
    fnv(text.as_bytes())
}

fn chunks(v: u64) -> [f32; CHUNKS] {
    std::array::from_fn(|j| ((v >> (CHUNK_BITS * j as u32)) & ((1 << CHUNK_BITS) - 1)) as f32)
}

fn join(c: &[f32]) -> u64 {
    c.iter().enumerate().fold(0u64, |h, (j, &v)| {
        h | ((v as u64) << (CHUNK_BITS * j as u32))
    })
}

/// Peer `rank`'s header (`SLOTS · world` values, zeros outside its own slots).
pub(crate) fn encode(rank: u32, world: u32, settings: u64, params: Option<u64>) -> Vec<f32> {
    let mut out = vec![0f32; SLOTS * world as usize];
    let own = &mut out[rank as usize * SLOTS..(rank as usize + 1) * SLOTS];
    own[0] = 1.0;
    own[1..1 + CHUNKS].copy_from_slice(&chunks(settings));
    if let Some(h) = params {
        own[1 + CHUNKS..].copy_from_slice(&chunks(h));
    }
    out
}

/// Checks the summed headers of all peers at `step`: one peer per rank, every peer with this
/// peer's `settings`, and (with `check_params`) equal parameter hashes.
pub(crate) fn check(
    summed: &[f32],
    world: u32,
    settings: u64,
    check_params: bool,
    step: u64,
) -> Result<(), DistributedError> {
    if summed.len() != SLOTS * world as usize {
        return Err(DistributedError::Config(format!(
            "the step header has {} values, expected {}",
            summed.len(),
            SLOTS * world as usize
        )));
    }
    let per_rank: Vec<&[f32]> = summed.chunks(SLOTS).collect();
    if let Some((rank, slots)) = per_rank.iter().enumerate().find(|(_, s)| s[0] != 1.0) {
        return Err(DistributedError::Ranks {
            step,
            rank: rank as u32,
            peers: slots[0],
        });
    }
    let digests: Vec<u64> = per_rank.iter().map(|s| join(&s[1..1 + CHUNKS])).collect();
    if digests.iter().any(|&d| d != settings) {
        return Err(DistributedError::SettingsDiffer { step, digests });
    }
    if check_params {
        let hashes: Vec<u64> = per_rank.iter().map(|s| join(&s[1 + CHUNKS..])).collect();
        if hashes.iter().any(|&h| h != hashes[0]) {
            return Err(DistributedError::ReplicasDiverged { step, hashes });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(headers: &[Vec<f32>]) -> Vec<f32> {
        let mut out = vec![0.0; headers[0].len()];
        for h in headers {
            out.iter_mut().zip(h).for_each(|(a, b)| *a += b);
        }
        out
    }

    #[test]
    fn agreeing_peers_pass_and_every_disagreement_is_named() {
        let (s, h) = (0x1234_5678_9abc_def0, 42);
        let ok = sum(&[
            encode(0, 3, s, Some(h)),
            encode(1, 3, s, Some(h)),
            encode(2, 3, s, Some(h)),
        ]);
        check(&ok, 3, s, true, 0).unwrap();
        // Another σ (another digest) on peer 1.
        let other = sum(&[
            encode(0, 3, s, None),
            encode(1, 3, s ^ 1, None),
            encode(2, 3, s, None),
        ]);
        assert!(matches!(
            check(&other, 3, s, false, 5),
            Err(DistributedError::SettingsDiffer { step: 5, .. })
        ));
        // Two peers claiming rank 1, none rank 2.
        let dup = sum(&[
            encode(0, 3, s, None),
            encode(1, 3, s, None),
            encode(1, 3, s, None),
        ]);
        assert!(matches!(
            check(&dup, 3, s, false, 0),
            Err(DistributedError::Ranks { rank: 1, .. })
        ));
        // Replicas that diverged.
        let div = sum(&[encode(0, 2, s, Some(h)), encode(1, 2, s, Some(h + 1))]);
        assert!(matches!(
            check(&div, 2, s, true, 0),
            Err(DistributedError::ReplicasDiverged { .. })
        ));
    }
}
