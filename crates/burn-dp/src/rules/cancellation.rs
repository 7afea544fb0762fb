//! Ghost norms that cannot be underestimated by cancellation.
//!
//! A ghost norm is a sum of products, `‖g_i‖² = Σ_{t,s} (a_t·a_s)(g_t·g_s)`, whose terms can have
//! either sign. In f32 a sum whose terms nearly cancel keeps only the rounding errors: the
//! computed value can be far below the true one, or negative (then clamped to 0). Automatic
//! clipping then scales that sample by `1/(n̂ + γ)` with `n̂ ≈ 0`, and its clipped contribution
//! can be ~`1/γ` times its bound `R`: the sensitivity the noise is calibrated to no longer holds.
//!
//! The rounding error of a floating-point sum is bounded by a multiple of the sum of the absolute
//! values of its terms (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed. 2002,
//! eq. (4.4): `|ŝ − s| ≤ γ_{n−1} Σ|x_i|`, with errors that in practice grow like `√n · u`). So
//! where the computed sum of a sample's `n` products is below [`CANCELLATION`] `· √n · u ·
//! Σ|products|` (`u = 2⁻²⁴`, f32's unit roundoff) — a margin of 64 over that typical rounding
//! error — it is rounding noise and cannot be trusted, and the sum of the absolute terms, an upper
//! bound on the true squared norm computed without cancellation, is used instead. Clipping by an
//! upper bound of the norm only clips harder: no sample's clipped contribution exceeds `R`.
//! Elsewhere the value is the ordinary ghost norm, bit for bit: a sum that cancels exactly in real
//! arithmetic but is computed accurately (small against its terms, far above the rounding noise)
//! stays exact.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// How many typical rounding errors (`√n · u · Σ|terms|`) a sum of `n` products must exceed to
/// be trusted.
pub const CANCELLATION: f32 = 64.0;

/// f32's unit roundoff, `2⁻²⁴`.
const UNIT_ROUNDOFF: f32 = 5.960_464_5e-8;

/// The fraction of `Σ|terms|` below which a sum of `n` terms is rounding noise.
fn threshold(n: usize) -> f32 {
    CANCELLATION * (n.max(1) as f32).sqrt() * UNIT_ROUNDOFF
}

/// `Σ_k p[i, k]` per sample `i`, or `Σ_k |p[i, k]|` where the former is rounding noise against
/// the latter (see the module docs). A NaN stays NaN.
///
/// # Shapes
/// `products`: `[B, K]`, the terms of each sample's squared norm; result: `[B]`.
pub fn guarded_sum<B: Backend>(products: Tensor<B, 2>) -> Tensor<B, 1> {
    let [b, n] = products.dims();
    let abs = products.clone().abs().sum_dim(1).reshape([b]);
    let sum = products.sum_dim(1).reshape([b]);
    let unreliable = sum.clone().lower(abs.clone().mul_scalar(threshold(n)));
    sum.mask_where(unreliable, abs)
}

/// The squared norm of a sum of `K` per-sample terms from their own squared norms `sq_k` and the
/// ghost total `total = Σ_k sq_k + 2 Σ_{k<l} ⟨G_k, G_l⟩`: `total`, or the Cauchy–Schwarz bound
/// `(Σ_k ‖G_k‖)² ≥ ‖Σ_k G_k‖²` where `total` is rounding noise against it (cross terms of tied
/// weights that cancel).
///
/// # Shapes
/// `total`: `[B]`; each of `sq`: `[B]`; result: `[B]`.
pub fn guarded_total<B: Backend>(total: Tensor<B, 1>, sq: &[Tensor<B, 1>]) -> Tensor<B, 1> {
    let Some(first) = sq.first() else {
        return total;
    };
    let norms = sq
        .iter()
        .skip(1)
        .fold(first.clone().clamp_min(0.0).sqrt(), |acc, s| {
            acc + s.clone().clamp_min(0.0).sqrt()
        });
    let bound = norms.powi_scalar(2);
    let unreliable = total
        .clone()
        .lower(bound.clone().mul_scalar(threshold(sq.len() * sq.len())));
    total.mask_where(unreliable, bound)
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::module::Module;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::backend::Backend;
    use burn::tensor::{Tensor, TensorData};

    use crate::*;

    type Dp = DpAutodiff<NdArray<f32>>;

    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        fc: Linear<B>,
    }

    /// One sample whose two positions carry the same activation `a` and the output gradients
    /// `b` and `−(1+ε)b`: its weight gradient is `−ε·a bᵀ`, of norm `ε‖a‖‖b‖` = 1 here, while the
    /// ghost norm's four Gram products are `±‖a‖²‖b‖²` = ±10⁸, which cancel in f32 to rounding
    /// noise (a negative sum was clamped to 0, a tiny one passed as is).
    fn clipped_norm(clipping: ClippingFn) -> (f32, f64) {
        let dev = Default::default();
        let m = Net::<Dp> {
            fc: LinearConfig::new(4, 4).with_bias(false).init(&dev),
        };
        let (s, eps) = (100.0f32, 1e-4f32);
        let a = [s / 2.0, -s / 2.0, s / 2.0, s / 2.0]; // ‖a‖ = s
        let x: Vec<f32> = a.iter().chain(a.iter()).copied().collect();
        let x = mark_batch(Tensor::<Dp, 3>::from_data(
            TensorData::new(x, [1, 2, 4]),
            &dev,
        ));
        let b = [s / 2.0, s / 2.0, -s / 2.0, s / 2.0]; // ‖b‖ = s
        let w: Vec<f32> = b
            .iter()
            .copied()
            .chain(b.iter().map(|v| -(1.0 + eps) * v))
            .collect();
        let w = Tensor::<Dp, 3>::from_data(TensorData::new(w, [1, 2, 4]), &dev);
        let losses = (m.fc.forward(x) * w).sum_dim(2).sum_dim(1).reshape([1]);
        let config = PerSampleConfig::new(clipping).with_norm_mode(NormMode::Ghost);
        let clipped = clipped_backward(&config, &m, losses).unwrap();
        let sum = clipped.sums.get(&m.fc.weight.id).unwrap().clone();
        let norm = sum.powi_scalar(2).sum().sqrt().into_scalar();
        (norm, clipped.sensitivity)
    }

    /// Issue 22.10: no sample's clipped contribution exceeds its bound R(1 + 1e-3), whatever its
    /// Gram products cancel to, for each clipping function.
    #[test]
    fn cancelling_ghost_norms_never_exceed_the_clipping_bound() {
        for clipping in [
            ClippingFn::Automatic { gamma: 0.01 },
            ClippingFn::Abadi { max_norm: 0.5 },
            ClippingFn::Abadi { max_norm: 10.0 },
        ] {
            let (norm, r) = clipped_norm(clipping);
            assert!(
                (norm as f64) <= r * (1.0 + 1e-3),
                "{clipping:?}: contribution {norm} > R = {r}"
            );
        }
    }

    /// Without cancellation the guard changes nothing, bit for bit.
    #[test]
    fn a_sum_without_cancellation_is_the_plain_sum() {
        let dev = Default::default();
        let p = Tensor::<NdArray<f32>, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, -0.5, 4.0, 0.25, 0.0], [2, 3]),
            &dev,
        );
        let plain = p.clone().sum_dim(1).reshape([2]).into_data();
        assert_eq!(super::guarded_sum(p).into_data(), plain);
        let cancelled = Tensor::<NdArray<f32>, 2>::from_data(
            TensorData::new(vec![1e8f32, -1e8, 1.0], [1, 3]),
            &dev,
        );
        assert_eq!(
            super::guarded_sum(cancelled)
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
            vec![2e8 + 1.0]
        );
    }
}
