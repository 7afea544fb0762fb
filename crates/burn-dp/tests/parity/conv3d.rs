//! Conv3d's rule against PyTorch's per-sample gradients (`layers-conv3d.safetensors`, written by
//! `tools/fixtures/layers.py`) and against a batch-of-one oracle on plain `Autodiff<NdArray>`.
//!
//! The fixture folder is `BURN_DP_FIXTURES` when set, else `tests/fixtures/`. A
//! `BURN_DP_FIXTURES` folder without `layers-conv3d.safetensors` (a copy of the shared fixture set
//! made before Conv3d had a rule) falls back to the repository's copy under `tests/fixtures/`.

use super::support::{tensor, Dp, Fixture, Inner, Plain};
use burn::module::Param;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::PaddingConfig3d;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};
use burn_dp::testing::{assert_close, to_vec};
use burn_dp::{
    batch, clipped_backward, per_sample_gradients, ClippingFn, NormMode, PerSampleConfig,
};

const FILE: &str = "layers-conv3d.safetensors";

fn losses<B: Backend>(layer: &Conv3d<B>, x: Tensor<B, 5>, r: Tensor<B, 5>) -> Tensor<B, 1> {
    let b = x.dims()[0];
    (layer.forward(x) * r)
        .reshape([b as i64, -1])
        .sum_dim(1)
        .reshape([b])
}

fn config(
    c_in: usize,
    c_out: usize,
    k: usize,
    s: usize,
    p: usize,
    d: usize,
    g: usize,
) -> Conv3dConfig {
    Conv3dConfig::new([c_in, c_out], [k; 3])
        .with_stride([s; 3])
        .with_padding(PaddingConfig3d::Explicit(p, p, p))
        .with_dilation([d; 3])
        .with_groups(g)
}

#[test]
fn conv3d_matches_pytorch() {
    let fixture = Fixture::open_or_repo_copy(FILE);
    for case in ["conv3d", "conv3d_groups"] {
        let m = fixture.meta(case);
        let u = |k: &str| m[k].as_u64().unwrap() as usize;
        let (w, ws) = fixture.f32(&format!("{case}.param.weight"));
        let (bias, bs) = fixture.f32(&format!("{case}.param.bias"));
        let (x, xs) = fixture.f32(&format!("{case}.input"));
        let (r, rs) = fixture.f32(&format!("{case}.upstream"));
        let (gw, _) = fixture.f32(&format!("{case}.per_sample_grad.weight"));
        let (gb, _) = fixture.f32(&format!("{case}.per_sample_grad.bias"));
        let (norms, _) = fixture.f32(&format!("{case}.per_sample_norm"));
        let cfg = config(
            u("in"),
            u("out"),
            u("kernel"),
            u("stride"),
            u("padding"),
            u("dilation"),
            u("groups"),
        );
        let mut layer: Conv3d<Dp> = cfg.init(&Default::default());
        layer.weight = Param::from_tensor(tensor(&w, &ws));
        layer.bias = Some(Param::from_tensor(tensor(&bias, &bs)));
        let loss = || losses(&layer, batch(tensor(&x, &xs)), tensor(&r, &rs));
        for (_, path, g) in per_sample_gradients(&layer, loss()).unwrap() {
            let want = if path.ends_with("weight") { &gw } else { &gb };
            assert_close(&format!("{case}.{path}"), &to_vec(g), want, 1e-4);
        }
        for mode in [NormMode::Ghost, NormMode::Instantiate, NormMode::Auto] {
            let config = PerSampleConfig {
                norm_mode: mode,
                ..PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 })
            };
            let out = clipped_backward(&config, &layer, loss()).unwrap();
            assert_close(
                &format!("{case} norms {mode:?}"),
                &to_vec(out.norms),
                &norms,
                1e-4,
            );
        }
    }
}

/// Random shapes and options against one plain backward pass per sample.
#[test]
fn conv3d_matches_batch_of_one_oracle() {
    let device = Default::default();
    for (b, (c_in, c_out, k, s, p, d, g)) in [
        (2, (2, 3, 2, 1, 0, 1, 1)),
        (3, (4, 2, 3, 2, 1, 1, 2)),
        (1, (2, 2, 2, 1, 1, 2, 1)),
    ] {
        let cfg = config(c_in, c_out, k, s, p, d, g);
        let plain: Conv3d<Plain> = cfg.init(&device);
        let mut dp: Conv3d<Dp> = cfg.init(&device);
        dp.weight = Param::from_tensor(Tensor::from_data(plain.weight.val().into_data(), &device));
        let pb = plain.bias.as_ref().unwrap().val().into_data();
        dp.bias = Some(Param::from_tensor(Tensor::from_data(pb, &device)));
        let x =
            Tensor::<Inner, 5>::random([b, c_in, 5, 6, 7], Distribution::Normal(0.0, 1.0), &device);
        let out_shape = plain
            .forward(Tensor::from_data(x.to_data(), &device))
            .dims();
        let r = Tensor::<Inner, 5>::random(out_shape, Distribution::Normal(0.0, 1.0), &device);
        let got = per_sample_gradients(
            &dp,
            losses(
                &dp,
                batch(Tensor::from_data(x.to_data(), &device)),
                Tensor::from_data(r.to_data(), &device),
            ),
        )
        .unwrap();
        for i in 0..b {
            let xi = Tensor::<Plain, 5>::from_data(x.clone().narrow(0, i, 1).into_data(), &device);
            let ri = Tensor::<Plain, 5>::from_data(r.clone().narrow(0, i, 1).into_data(), &device);
            let grads = losses(&plain, xi, ri).sum().backward();
            let want_w = to_vec(plain.weight.grad(&grads).unwrap());
            let want_b = to_vec(plain.bias.as_ref().unwrap().grad(&grads).unwrap());
            for (_, path, t) in &got {
                let row = to_vec(t.clone().narrow(0, i, 1));
                let want = if path.ends_with("weight") {
                    &want_w
                } else {
                    &want_b
                };
                assert_close(&format!("b={b} sample {i} {path}"), &row, want, 1e-4);
            }
        }
    }
}
