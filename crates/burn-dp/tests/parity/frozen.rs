//! Frozen parameters: autodiff does not track them, so no rule runs for them and they get no
//! per-sample gradient; the trainable ones still match the oracle.

use burn_dp::{batch, clipped_backward, ClippingFn, PerSampleConfig};

use burn_dp::testing::sample;

use super::support::*;

#[test]
fn frozen_parameters_cost_nothing() {
    let mut values = Values::new(61);
    let (b, d, h, k) = (4, 5, 6, 3);
    let (x, up) = (values.vec(b * d), values.vec(b * k));
    let freeze = |mut m: Mlp<Dp>| {
        m.fc1.weight = m.fc1.weight.set_require_grad(false);
        m.fc2.weight = m.fc2.weight.set_require_grad(false);
        m
    };
    let mut plain = build_mlp::<Plain>(9, d, h, k, true);
    plain.fc1.weight = plain.fc1.weight.set_require_grad(false);
    plain.fc2.weight = plain.fc2.weight.set_require_grad(false);
    let dp = freeze(build_mlp::<Dp>(9, d, h, k, true));
    let xp = tensor::<Plain, 2>(&x, &[b, d]);
    let upp = tensor::<Plain, 2>(&up, &[b, k]);
    let losses = || {
        mlp_losses(
            &dp,
            batch(tensor::<Dp, 2>(&x, &[b, d])),
            tensor(&up, &[b, k]),
        )
    };
    property(
        "bias-only mlp",
        &plain,
        &dp,
        b,
        |i| mlp_losses(&plain, sample(&xp, i), sample(&upp, i)),
        losses,
    );
    let out =
        clipped_backward(&PerSampleConfig::new(ClippingFn::AUTOMATIC), &dp, losses()).unwrap();
    assert_eq!(out.params.len(), 2, "only the two biases are trainable");
    assert_eq!(
        burn_dp::backend::rule_calls_in_last_pass(),
        2,
        "no rule runs for a frozen weight"
    );
}
