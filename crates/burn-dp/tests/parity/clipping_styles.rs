//! Per-layer and group clipping against group norms computed from the oracle's per-sample
//! gradients; their sensitivities; and the configuration errors (a parameter in no group, an
//! invalid clipping bound).

use burn_dp::{
    batch, clipped_backward, ClippingFn, ClippingStyle, DpError, ParamGroup, ParamSelector,
    PerSampleConfig,
};

use burn_dp::testing::{assert_close, batch_of_one, sample, to_vec};

use super::support::*;

/// Group norms and clipped sums from oracle per-sample gradients.
fn oracle_groups(
    grads: &[(String, Vec<f32>)],
    b: usize,
    groups: &[(&dyn Fn(&str) -> bool, ClippingFn)],
) -> Vec<(String, Vec<f32>)> {
    let mut out = Vec::new();
    for (p, g) in grads {
        let (_, f) = groups.iter().find(|(sel, _)| sel(p)).expect("grouped");
        let members: Vec<&(String, Vec<f32>)> = grads
            .iter()
            .filter(|(q, _)| {
                groups
                    .iter()
                    .find(|(sel, _)| sel(q))
                    .map(|(_, g2)| std::ptr::eq(g2, f))
                    .unwrap_or(false)
            })
            .collect();
        let n = g.len() / b;
        let mut s = vec![0f64; n];
        for i in 0..b {
            let norm: f64 = members
                .iter()
                .map(|(_, m)| {
                    let nm = m.len() / b;
                    m[i * nm..(i + 1) * nm]
                        .iter()
                        .map(|x| (*x as f64).powi(2))
                        .sum::<f64>()
                })
                .sum::<f64>()
                .sqrt();
            let c = match f {
                ClippingFn::Automatic { gamma } => 1.0 / (norm + gamma),
                ClippingFn::Abadi { max_norm } => (max_norm / (norm + 1e-6)).min(1.0),
            };
            for j in 0..n {
                s[j] += g[i * n + j] as f64 * c;
            }
        }
        out.push((p.clone(), s.into_iter().map(|x| x as f32).collect()));
    }
    out
}

#[test]
fn group_and_per_layer_clipping() {
    let mut values = Values::new(71);
    let (b, d, h, k) = (5, 4, 6, 3);
    let (x, up) = (values.vec(b * d), values.vec(b * k));
    let plain = build_mlp::<Plain>(13, d, h, k, true);
    let dp = build_mlp::<Dp>(13, d, h, k, true);
    let xp = tensor::<Plain, 2>(&x, &[b, d]);
    let upp = tensor::<Plain, 2>(&up, &[b, k]);
    let want = batch_of_one(&plain, b, |i| {
        mlp_losses(&plain, sample(&xp, i), sample(&upp, i))
    });
    let losses = || {
        mlp_losses(
            &dp,
            batch(tensor::<Dp, 2>(&x, &[b, d])),
            tensor(&up, &[b, k]),
        )
    };

    let abadi = ClippingFn::Abadi { max_norm: 0.3 };
    let auto = ClippingFn::Automatic { gamma: 0.05 };
    let style = ClippingStyle::Groups(vec![
        ParamGroup {
            name: "first".into(),
            selector: ParamSelector::PathPrefix("fc1.".into()),
            clipping: abadi,
        },
        ParamGroup {
            name: "rest".into(),
            selector: ParamSelector::All,
            clipping: auto,
        },
    ]);
    let is_fc1 = |p: &str| p.starts_with("fc1.");
    let not_fc1 = |p: &str| !p.starts_with("fc1.");
    let expected = oracle_groups(&want, b, &[(&is_fc1, abadi), (&not_fc1, auto)]);
    for mode in MODES {
        let cfg = PerSampleConfig::new(ClippingFn::AUTOMATIC)
            .with_style(style.clone())
            .with_norm_mode(mode);
        let out = clipped_backward(&cfg, &dp, losses()).unwrap();
        assert!((out.sensitivity - (0.3f64.powi(2) + 1.0).sqrt()).abs() < 1e-12);
        for (id, p) in &out.params {
            let want = &expected.iter().find(|(q, _)| q == p).unwrap().1;
            assert_close(
                &format!("groups {p} {mode:?}"),
                &to_vec(out.sums[id].clone()),
                want,
                1e-4,
            );
        }
    }

    let is_l1 = |p: &str| p.starts_with("fc1.");
    let is_l2 = |p: &str| p.starts_with("fc2.");
    let expected = oracle_groups(
        &want,
        b,
        &[
            (&is_l1, auto),
            (&is_l2, ClippingFn::Automatic { gamma: 0.05 }),
        ],
    );
    let cfg = PerSampleConfig::new(auto).with_style(ClippingStyle::PerLayer);
    let out = clipped_backward(&cfg, &dp, losses()).unwrap();
    assert_eq!(out.groups.len(), 2);
    assert!((out.sensitivity - 2f64.sqrt()).abs() < 1e-12);
    for (id, p) in &out.params {
        let want = &expected.iter().find(|(q, _)| q == p).unwrap().1;
        assert_close(
            &format!("per-layer {p}"),
            &to_vec(out.sums[id].clone()),
            want,
            1e-4,
        );
    }

    let only_fc2 = ClippingStyle::Groups(vec![ParamGroup {
        name: "fc2".into(),
        selector: ParamSelector::PathPrefix("fc2.".into()),
        clipping: auto,
    }]);
    let err = clipped_backward(
        &PerSampleConfig::new(auto).with_style(only_fc2),
        &dp,
        losses(),
    )
    .err();
    assert!(matches!(err, Some(DpError::Selection(_))), "{err:?}");
    let err = clipped_backward(
        &PerSampleConfig::new(ClippingFn::Abadi { max_norm: -1.0 }),
        &dp,
        losses(),
    )
    .err();
    assert!(matches!(err, Some(DpError::InvalidClipping(_))), "{err:?}");
}
