//! The outside rule against the batch-of-one oracle (one plain `Autodiff<NdArray>` backward per
//! sample), as burn-dp's built-in rules are tested, and fail-closed without it.

use std::sync::Mutex;

use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::nn::conv::{ConvTranspose1d, ConvTranspose1dConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use burn_dp::rules::{register_rule, unregister_rule, PerSampleRule};
use burn_dp::testing::{batch_of_one, check_against, engine_outputs, sample};
use burn_dp::{mark_batch, per_sample_gradients, DpAutodiff, DpError, NormMode};

type Inner = NdArray<f32>;
type Dp = DpAutodiff<Inner>;
type Plain = Autodiff<Inner>;

/// Registration is process-wide: tests that register or rely on no registration take turns.
static REGISTRY: Mutex<()> = Mutex::new(());

// ANCHOR: oracle
fn losses<B: Backend>(
    layer: &ConvTranspose1d<B>,
    x: Tensor<B, 3>,
    r: Tensor<B, 3>,
) -> Tensor<B, 1> {
    let b = x.dims()[0];
    (layer.forward(x) * r)
        .reshape([b as i64, -1])
        .sum_dim(1)
        .reshape([b])
}

/// Per-sample gradients, norms and clipped sums from burn-dp (one backward pass) against one
/// plain backward per sample (`burn_dp::testing`).
fn check(b: usize, cfg: ConvTranspose1dConfig) {
    let device = Default::default();
    let plain: ConvTranspose1d<Plain> = cfg.init(&device);
    let mut dp: ConvTranspose1d<Dp> = cfg.init(&device);
    dp.weight = Param::from_tensor(Tensor::from_data(plain.weight.val().into_data(), &device));
    let bias = plain.bias.as_ref().unwrap().val().into_data();
    dp.bias = Some(Param::from_tensor(Tensor::from_data(bias, &device)));
    let c_in = cfg.channels[0];
    let x = Tensor::<Inner, 3>::random([b, c_in, 7], Distribution::Normal(0.0, 1.0), &device);
    let out = plain
        .forward(Tensor::from_data(x.to_data(), &device))
        .dims();
    let r = Tensor::<Inner, 3>::random(out, Distribution::Normal(0.0, 1.0), &device);
    // The oracle: sample i's loss alone, one ordinary backward pass each.
    let (xp, rp) = (
        Tensor::<Plain, 3>::from_data(x.to_data(), &device),
        Tensor::<Plain, 3>::from_data(r.to_data(), &device),
    );
    let want = batch_of_one(&plain, b, |i| {
        losses(&plain, sample(&xp, i), sample(&rp, i))
    });
    // burn-dp: the whole batch, marked, in every norm mode.
    let dp_losses = || {
        let xb = mark_batch(Tensor::<Dp, 3>::from_data(x.to_data(), &device));
        losses(&dp, xb, Tensor::from_data(r.to_data(), &device))
    };
    for mode in [NormMode::Ghost, NormMode::Instantiate, NormMode::Auto] {
        let got = engine_outputs(&dp, dp_losses, mode, 0.5);
        check_against(&format!("B={b} ({mode:?})"), &got, &want, b, 0.5, 1e-4);
    }
}
// ANCHOR_END: oracle

#[test]
fn outside_rule_matches_batch_of_one_oracle() {
    let _turn = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let ids = burn_dp_custom_rule::register::<Inner>().unwrap();
    for (b, cfg) in [
        (3, ConvTranspose1dConfig::new([2, 3], 3)),
        (
            2,
            ConvTranspose1dConfig::new([4, 2], 2)
                .with_stride(2)
                .with_padding(1)
                .with_groups(2),
        ),
        (
            1,
            ConvTranspose1dConfig::new([2, 4], 3)
                .with_dilation(2)
                .with_padding_out(1)
                .with_stride(2),
        ),
    ] {
        check(b, cfg);
    }
    for id in ids {
        assert!(unregister_rule(id));
    }
}

/// Without the rule, the same layer is refused: its gradient arrives summed over the batch.
#[test]
fn without_the_rule_it_fails_closed() {
    let _turn = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let layer: ConvTranspose1d<Dp> = ConvTranspose1dConfig::new([2, 3], 3).init(&device);
    let x = mark_batch(Tensor::<Dp, 3>::random(
        [3, 2, 5],
        Distribution::Default,
        &device,
    ));
    let r = Tensor::<Dp, 3>::ones([3, 3, 7], &device);
    let err = per_sample_gradients(&layer, losses(&layer, x, r)).unwrap_err();
    assert!(
        matches!(
            err,
            DpError::MixedSamples { .. } | DpError::NoPerSampleRule { .. }
        ),
        "{err:?}"
    );
}

/// A rule whose predicate declines a call leaves it to fail closed.
#[test]
fn a_declined_call_fails_closed() {
    struct Never;
    impl<B: burn_backend::Backend> PerSampleRule<B> for Never {
        fn op(&self) -> &'static str {
            "conv_transpose1d_weight_backward"
        }
        fn matches(&self, _: &burn_dp::rules::OpCall<'_, B>) -> bool {
            false
        }
        fn cache(
            &self,
            _: &burn_dp::rules::OpCall<'_, B>,
        ) -> Option<burn_dp::backend::Deferred<B>> {
            unreachable!("declined")
        }
    }
    let _turn = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    let id = register_rule::<Inner>(std::sync::Arc::new(Never)).unwrap();
    let device = Default::default();
    let layer: ConvTranspose1d<Dp> = ConvTranspose1dConfig::new([2, 3], 3)
        .with_bias(false)
        .init(&device);
    let x = mark_batch(Tensor::<Dp, 3>::random(
        [2, 2, 5],
        Distribution::Default,
        &device,
    ));
    let r = Tensor::<Dp, 3>::ones([2, 3, 7], &device);
    assert!(per_sample_gradients(&layer, losses(&layer, x, r)).is_err());
    assert!(unregister_rule(id));
}

/// Only hooked ops can get a rule: an op burn-dp does not hook is refused at registration.
#[test]
fn an_unhooked_op_is_refused() {
    struct MatmulRule;
    impl<B: burn_backend::Backend> PerSampleRule<B> for MatmulRule {
        fn op(&self) -> &'static str {
            "float_matmul"
        }
        fn cache(
            &self,
            _: &burn_dp::rules::OpCall<'_, B>,
        ) -> Option<burn_dp::backend::Deferred<B>> {
            None
        }
    }
    let err = register_rule::<Inner>(std::sync::Arc::new(MatmulRule)).unwrap_err();
    assert!(matches!(err, DpError::NoRuleHook { .. }), "{err:?}");
}
