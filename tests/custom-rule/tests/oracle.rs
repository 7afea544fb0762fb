//! The outside rule against the batch-of-one oracle (one plain `Autodiff<NdArray>` backward per
//! sample), as burn-dp's built-in rules are tested, and fail-closed without it.

use std::sync::Mutex;

use burn::backend::{Autodiff, NdArray};
use burn::module::Param;
use burn::nn::conv::{ConvTranspose1d, ConvTranspose1dConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use burn_dp::rules::{register_rule, unregister_rule, PerSampleRule};
use burn_dp::{
    batch, clipped_backward, per_sample_gradients, ClippingFn, DpAutodiff, DpError, NormMode,
    PerSampleConfig,
};

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

/// Per-sample gradients from burn-dp (one backward pass) against one plain backward per sample.
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
    let dp_losses = || {
        let xb = batch(Tensor::<Dp, 3>::from_data(x.to_data(), &device));
        losses(&dp, xb, Tensor::from_data(r.to_data(), &device))
    };
    let got = per_sample_gradients(&dp, dp_losses()).unwrap();
    let mut norms = Vec::with_capacity(b);
    for i in 0..b {
        let xi = Tensor::<Plain, 3>::from_data(x.clone().narrow(0, i, 1).into_data(), &device);
        let ri = Tensor::<Plain, 3>::from_data(r.clone().narrow(0, i, 1).into_data(), &device);
        let grads = losses(&plain, xi, ri).sum().backward();
        let want_w = to_vec(plain.weight.grad(&grads).unwrap());
        let want_b = to_vec(plain.bias.as_ref().unwrap().grad(&grads).unwrap());
        norms.push(
            want_w
                .iter()
                .chain(&want_b)
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt(),
        );
        for (_, path, t) in &got {
            let want = if path.ends_with("weight") {
                &want_w
            } else {
                &want_b
            };
            assert_close(
                &format!("sample {i} {path}"),
                &to_vec(t.clone().narrow(0, i, 1)),
                want,
            );
        }
    }
    for mode in [NormMode::Ghost, NormMode::Instantiate, NormMode::Auto] {
        let config = PerSampleConfig {
            norm_mode: mode,
            ..PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 })
        };
        let clipped = clipped_backward(&config, &dp, dp_losses()).unwrap();
        assert_close(&format!("norms {mode:?}"), &to_vec(clipped.norms), &norms);
    }
}
// ANCHOR_END: oracle

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err / scale <= 1e-4,
        "{what}: relative error {}",
        err / scale
    );
}

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
    let x = batch(Tensor::<Dp, 3>::random(
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
    let x = batch(Tensor::<Dp, 3>::random(
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
