//! Every per-sample rule against PyTorch's per-sample gradients, norms and clipped sums in
//! `layers.safetensors` (cases `linear_2d`, `linear_3d`, `linear_nobias`, `conv2d`,
//! `conv2d_groups`, `embedding`, `layernorm`, `groupnorm`), in every norm mode.

use burn::module::Param;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{EmbeddingConfig, GroupNormConfig, LayerNormConfig, LinearConfig, PaddingConfig2d};
use burn::tensor::{Int, Tensor, TensorData};
use burn_dp::batch;

use super::support::*;

/// PyTorch's Linear weight layout `[B, out, in]` to ours `[B, in, out]`.
fn torch_linear(v: &[f32], s: &[usize]) -> Vec<f32> {
    transpose_last(v, s[0], s[1], s[2])
}

#[test]
fn linear() {
    let fx = Fixture::open("layers.safetensors");
    for case in ["linear_2d", "linear_3d", "linear_nobias"] {
        let (w, ws) = fx.f32(&format!("{case}.param.weight"));
        let (x, xs) = fx.f32(&format!("{case}.input"));
        let (r, rs) = fx.f32(&format!("{case}.upstream"));
        let (d_out, d_in) = (ws[0], ws[1]);
        let has_bias = fx.has(&format!("{case}.param.bias"));
        let mut layer = LinearConfig::new(d_in, d_out)
            .with_bias(has_bias)
            .init::<Dp>(&Default::default());
        layer.weight = Param::from_tensor(tensor::<Dp, 2>(
            &transpose_last(&w, 1, d_out, d_in),
            &[d_in, d_out],
        ));
        if has_bias {
            let (bias, bs) = fx.f32(&format!("{case}.param.bias"));
            layer.bias = Some(Param::from_tensor(tensor::<Dp, 1>(&bias, &bs)));
        }
        let mut params: Vec<(&str, &str, &dyn Fn(&[f32], &[usize]) -> Vec<f32>)> =
            vec![("weight", "weight", &torch_linear)];
        if has_bias {
            params.push(("bias", "bias", &same));
        }
        match xs.len() {
            2 => check_layer_case(
                &fx,
                case,
                &layer,
                || {
                    weighted_losses(
                        layer.forward(batch(tensor::<Dp, 2>(&x, &xs))),
                        tensor(&r, &rs),
                    )
                },
                &params,
            ),
            _ => check_layer_case(
                &fx,
                case,
                &layer,
                || {
                    weighted_losses(
                        layer.forward(batch(tensor::<Dp, 3>(&x, &xs))),
                        tensor(&r, &rs),
                    )
                },
                &params,
            ),
        }
    }
}

#[test]
fn conv2d() {
    let fx = Fixture::open("layers.safetensors");
    for case in ["conv2d", "conv2d_groups"] {
        let m = fx.meta(case);
        let get = |k: &str, d: usize| {
            m.get(k)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .unwrap_or(d)
        };
        let (c_in, c_out, k) = (get("in", 0), get("out", 0), get("kernel", 0));
        let (stride, pad, groups, dil) = (
            get("stride", 1),
            get("padding", 0),
            get("groups", 1),
            get("dilation", 1),
        );
        let mut conv = Conv2dConfig::new([c_in, c_out], [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
            .with_dilation([dil, dil])
            .with_groups(groups)
            .init::<Dp>(&Default::default());
        let (w, ws) = fx.f32(&format!("{case}.param.weight"));
        let (bias, bs) = fx.f32(&format!("{case}.param.bias"));
        conv.weight = Param::from_tensor(tensor::<Dp, 4>(&w, &ws));
        conv.bias = Some(Param::from_tensor(tensor::<Dp, 1>(&bias, &bs)));
        let (x, xs) = fx.f32(&format!("{case}.input"));
        let (r, rs) = fx.f32(&format!("{case}.upstream"));
        check_layer_case(
            &fx,
            case,
            &conv,
            || {
                weighted_losses(
                    conv.forward(batch(tensor::<Dp, 4>(&x, &xs))),
                    tensor(&r, &rs),
                )
            },
            &[("weight", "weight", &same), ("bias", "bias", &same)],
        );
    }
}

#[test]
fn embedding() {
    let fx = Fixture::open("layers.safetensors");
    let (w, ws) = fx.f32("embedding.param.weight");
    let mut emb = EmbeddingConfig::new(ws[0], ws[1]).init::<Dp>(&Default::default());
    emb.weight = Param::from_tensor(tensor::<Dp, 2>(&w, &ws));
    let (ids, is) = fx.i64("embedding.input");
    let (r, rs) = fx.f32("embedding.upstream");
    let ids = || {
        Tensor::<Dp, 2, Int>::from_data(
            TensorData::new(ids.clone(), is.clone()),
            &Default::default(),
        )
    };
    check_layer_case(
        &fx,
        "embedding",
        &emb,
        || weighted_losses(emb.forward(ids()), tensor(&r, &rs)),
        &[("weight", "weight", &same)],
    );
}

#[test]
fn norms() {
    let fx = Fixture::open("layers.safetensors");
    let m = fx.meta("layernorm");
    let dim = m["dim"].as_u64().unwrap() as usize;
    let mut ln = LayerNormConfig::new(dim)
        .with_epsilon(m["eps"].as_f64().unwrap())
        .init::<Dp>(&Default::default());
    let (g, gs) = fx.f32("layernorm.param.weight");
    let (bt, bs) = fx.f32("layernorm.param.bias");
    ln.gamma = Param::from_tensor(tensor::<Dp, 1>(&g, &gs));
    ln.beta = Some(Param::from_tensor(tensor::<Dp, 1>(&bt, &bs)));
    let (x, xs) = fx.f32("layernorm.input");
    let (r, rs) = fx.f32("layernorm.upstream");
    check_layer_case(
        &fx,
        "layernorm",
        &ln,
        || weighted_losses(ln.forward(batch(tensor::<Dp, 3>(&x, &xs))), tensor(&r, &rs)),
        &[("weight", "gamma", &same), ("bias", "beta", &same)],
    );

    let m = fx.meta("groupnorm");
    let (groups, channels) = (
        m["groups"].as_u64().unwrap() as usize,
        m["channels"].as_u64().unwrap() as usize,
    );
    let mut gn = GroupNormConfig::new(groups, channels)
        .with_epsilon(m["eps"].as_f64().unwrap())
        .init::<Dp>(&Default::default());
    let (g, gs) = fx.f32("groupnorm.param.weight");
    let (bt, bs) = fx.f32("groupnorm.param.bias");
    gn.gamma = Some(Param::from_tensor(tensor::<Dp, 1>(&g, &gs)));
    gn.beta = Some(Param::from_tensor(tensor::<Dp, 1>(&bt, &bs)));
    let (x, xs) = fx.f32("groupnorm.input");
    let (r, rs) = fx.f32("groupnorm.upstream");
    check_layer_case(
        &fx,
        "groupnorm",
        &gn,
        || weighted_losses(gn.forward(batch(tensor::<Dp, 4>(&x, &xs))), tensor(&r, &rs)),
        &[("weight", "gamma", &same), ("bias", "beta", &same)],
    );
}
