//! Oracle-parity tests of the per-sample engine.
//!
//! - every rule against PyTorch's per-sample gradients in `layers.safetensors` (the folder comes
//!   from `BURN_DP_FIXTURES` when set, else `tests/fixtures/`; a missing file fails);
//! - property tests against a batch-of-one oracle computed with plain `Autodiff<NdArray>` on
//!   random shapes, batch sizes 0..=5, bias on and off, ghost and instantiation;
//! - tied parameters, frozen parameters, and the fail-closed errors.

use std::path::PathBuf;

use burn::backend::{Autodiff, NdArray};
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::conv::{Conv1dConfig, Conv2dConfig};
use burn::nn::{
    EmbeddingConfig, GroupNormConfig, LayerNormConfig, LinearConfig, PaddingConfig1d, PaddingConfig2d, RmsNormConfig,
};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use burn_dp::{
    batch, clipped_backward, per_sample_gradients, ClippingFn, ClippingStyle, DpAutodiff, DpError, NormMode,
    ParamGroup, ParamSelector, PerSampleConfig,
};

type Inner = NdArray<f32>;
type Dp = DpAutodiff<Inner>;
type Plain = Autodiff<Inner>;

const MODES: [NormMode; 3] = [NormMode::Ghost, NormMode::Instantiate, NormMode::Auto];

// ------------------------------------------------------------------ helpers

fn fixtures_dir() -> PathBuf {
    match std::env::var("BURN_DP_FIXTURES") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"),
    }
}

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn open(name: &str) -> Fixture {
        let path = fixtures_dir().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("missing fixture {}: {e}", path.display()));
        Fixture { bytes }
    }
    fn st(&self) -> safetensors::SafeTensors<'_> {
        safetensors::SafeTensors::deserialize(&self.bytes).expect("valid safetensors")
    }
    fn meta(&self, case: &str) -> serde_json::Value {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&self.bytes).expect("header");
        let m = meta.metadata().as_ref().expect("metadata");
        serde_json::from_str(&m[case]).expect("json metadata")
    }
    fn f32(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture tensor {name}"));
        let v = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        (v, t.shape().to_vec())
    }
    fn i64(&self, name: &str) -> (Vec<i64>, Vec<usize>) {
        let st = self.st();
        let t = st.tensor(name).unwrap_or_else(|_| panic!("fixture tensor {name}"));
        let v = t.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
        (v, t.shape().to_vec())
    }
    fn has(&self, name: &str) -> bool {
        self.st().tensor(name).is_ok()
    }
}

fn tensor<B: Backend, const D: usize>(v: &[f32], shape: &[usize]) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape.to_vec()), &Default::default())
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// `[B, rows, cols]` → `[B, cols, rows]` (torch Linear layout to burn's).
fn transpose_last(v: &[f32], b: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; v.len()];
    for i in 0..b {
        for r in 0..rows {
            for c in 0..cols {
                out[i * rows * cols + c * rows + r] = v[i * rows * cols + r * cols + c];
            }
        }
    }
    out
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let err = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err / scale <= tol, "{what}: relative error {} > {tol}\n got  {:?}\n want {:?}", err / scale, &got[..got.len().min(8)], &want[..want.len().min(8)]);
}

/// Per-sample losses `Σ f(x_i) · R_i`.
fn weighted_losses<B: Backend, const D: usize>(out: Tensor<B, D>, upstream: Tensor<B, D>) -> Tensor<B, 1> {
    let b = out.dims()[0];
    (out * upstream).reshape([b as i64, -1]).sum_dim(1).reshape([b])
}

/// Everything the engine computes for `model`, as plain vectors, per parameter path:
/// per-sample gradients `[B, numel]`, flat norms `[B]`, and automatic/Abadi clipped sums.
struct EngineOut {
    grads: Vec<(String, Vec<f32>)>,
    norms: Vec<f32>,
    auto_sums: Vec<(String, Vec<f32>)>,
    abadi_sums: Vec<(String, Vec<f32>)>,
}

fn run_engine<M: AutodiffModule<Dp>>(model: &M, losses: impl Fn() -> Tensor<Dp, 1>, mode: NormMode, abadi_c: f64) -> EngineOut {
    let grads = per_sample_gradients(model, losses()).expect("per-sample gradients");
    let grads = grads.into_iter().map(|(_, p, t)| (p, to_vec(t))).collect();
    let sums = |f: ClippingFn| {
        let cfg = PerSampleConfig::new(f).with_norm_mode(mode);
        let out = clipped_backward(&cfg, model, losses()).expect("clipped backward");
        let norms = to_vec(out.norms.clone());
        let mut s: Vec<(String, Vec<f32>)> =
            out.params.iter().map(|(id, p)| (p.clone(), to_vec(out.sums[id].clone()))).collect();
        s.sort_by(|a, b| a.0.cmp(&b.0));
        (norms, s)
    };
    let (norms, auto_sums) = sums(ClippingFn::Automatic { gamma: 0.01 });
    let (_, abadi_sums) = sums(ClippingFn::Abadi { max_norm: abadi_c });
    EngineOut { grads, norms, auto_sums, abadi_sums }
}

/// Norms and clipped sums from explicit per-sample gradients `(path, [B, numel])`.
fn oracle_clip(grads: &[(String, Vec<f32>)], b: usize, abadi_c: f64) -> (Vec<f32>, Vec<(String, Vec<f32>)>, Vec<(String, Vec<f32>)>) {
    let mut norms = vec![0f64; b];
    for (_, g) in grads {
        let n = if b == 0 { 0 } else { g.len() / b };
        for i in 0..b {
            norms[i] += g[i * n..(i + 1) * n].iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
        }
    }
    let norms: Vec<f64> = norms.iter().map(|x| x.sqrt()).collect();
    let weighted = |c: &dyn Fn(f64) -> f64| {
        let mut out: Vec<(String, Vec<f32>)> = grads
            .iter()
            .map(|(p, g)| {
                let n = if b == 0 { g.len() } else { g.len() / b };
                let mut s = vec![0f64; n];
                for i in 0..b {
                    for j in 0..n {
                        s[j] += g[i * n + j] as f64 * c(norms[i]);
                    }
                }
                (p.clone(), s.into_iter().map(|x| x as f32).collect())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    };
    let auto = weighted(&|n| 1.0 / (n + 0.01));
    let abadi = weighted(&|n| (abadi_c / (n + 1e-6)).min(1.0));
    (norms.iter().map(|x| *x as f32).collect(), auto, abadi)
}

fn check_against(what: &str, out: &EngineOut, want_grads: &[(String, Vec<f32>)], b: usize, abadi_c: f64, tol: f32) {
    let (norms, auto, abadi) = oracle_clip(want_grads, b, abadi_c);
    for (path, want) in want_grads {
        let got = &out.grads.iter().find(|(p, _)| p == path).unwrap_or_else(|| panic!("{what}: no gradient for {path}")).1;
        assert_close(&format!("{what}: per-sample grad {path}"), got, want, tol);
    }
    assert_eq!(out.grads.len(), want_grads.len(), "{what}: trainable parameter count");
    assert_close(&format!("{what}: norms"), &out.norms, &norms, tol);
    for ((p, got), (_, want)) in out.auto_sums.iter().zip(&auto) {
        assert_close(&format!("{what}: automatic clipped sum {p}"), got, want, tol);
    }
    for ((p, got), (_, want)) in out.abadi_sums.iter().zip(&abadi) {
        assert_close(&format!("{what}: Abadi clipped sum {p}"), got, want, tol);
    }
}

// ------------------------------------------------------------------ PyTorch layer fixtures

/// Checks a layer case: our per-sample gradients, norms and clipped sums against PyTorch's.
/// `layout` converts a fixture per-sample gradient `[B, ...]` to our parameter layout.
fn check_layer_case<M: AutodiffModule<Dp>>(
    fx: &Fixture,
    case: &str,
    model: &M,
    losses: impl Fn() -> Tensor<Dp, 1>,
    params: &[(&str, &str, &dyn Fn(&[f32], &[usize]) -> Vec<f32>)],
) {
    let (norm, _) = fx.f32(&format!("{case}.per_sample_norm"));
    let b = norm.len();
    let want: Vec<(String, Vec<f32>)> = params
        .iter()
        .map(|(torch, ours, layout)| {
            let (v, shape) = fx.f32(&format!("{case}.per_sample_grad.{torch}"));
            (ours.to_string(), layout(&v, &shape))
        })
        .collect();
    for mode in MODES {
        let out = run_engine(model, &losses, mode, 0.5);
        check_against(&format!("{case} ({mode:?})"), &out, &want, b, 0.5, 1e-4);
        assert_close(&format!("{case} ({mode:?}): PyTorch norms"), &out.norms, &norm, 1e-4);
    }
}

fn same(v: &[f32], _: &[usize]) -> Vec<f32> {
    v.to_vec()
}

fn torch_linear(v: &[f32], s: &[usize]) -> Vec<f32> {
    transpose_last(v, s[0], s[1], s[2])
}

#[test]
fn layer_fixtures_linear() {
    let fx = Fixture::open("layers.safetensors");
    for case in ["linear_2d", "linear_3d", "linear_nobias"] {
        let (w, ws) = fx.f32(&format!("{case}.param.weight"));
        let (x, xs) = fx.f32(&format!("{case}.input"));
        let (r, rs) = fx.f32(&format!("{case}.upstream"));
        let (d_out, d_in) = (ws[0], ws[1]);
        let has_bias = fx.has(&format!("{case}.param.bias"));
        let mut layer = LinearConfig::new(d_in, d_out).with_bias(has_bias).init::<Dp>(&Default::default());
        layer.weight = Param::from_tensor(tensor::<Dp, 2>(&transpose_last(&w, 1, d_out, d_in), &[d_in, d_out]));
        if has_bias {
            let (bias, bs) = fx.f32(&format!("{case}.param.bias"));
            layer.bias = Some(Param::from_tensor(tensor::<Dp, 1>(&bias, &bs)));
        }
        let mut params: Vec<(&str, &str, &dyn Fn(&[f32], &[usize]) -> Vec<f32>)> = vec![("weight", "weight", &torch_linear)];
        if has_bias {
            params.push(("bias", "bias", &same));
        }
        match xs.len() {
            2 => check_layer_case(&fx, case, &layer, || weighted_losses(layer.forward(batch(tensor::<Dp, 2>(&x, &xs))), tensor(&r, &rs)), &params),
            _ => check_layer_case(&fx, case, &layer, || weighted_losses(layer.forward(batch(tensor::<Dp, 3>(&x, &xs))), tensor(&r, &rs)), &params),
        }
    }
}

#[test]
fn layer_fixtures_conv2d() {
    let fx = Fixture::open("layers.safetensors");
    for case in ["conv2d", "conv2d_groups"] {
        let m = fx.meta(case);
        let get = |k: &str, d: usize| m.get(k).and_then(|v| v.as_u64()).map(|v| v as usize).unwrap_or(d);
        let (c_in, c_out, k) = (get("in", 0), get("out", 0), get("kernel", 0));
        let (stride, pad, groups, dil) = (get("stride", 1), get("padding", 0), get("groups", 1), get("dilation", 1));
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
        check_layer_case(&fx, case, &conv, || weighted_losses(conv.forward(batch(tensor::<Dp, 4>(&x, &xs))), tensor(&r, &rs)), &[("weight", "weight", &same), ("bias", "bias", &same)]);
    }
}

#[test]
fn layer_fixtures_embedding() {
    let fx = Fixture::open("layers.safetensors");
    let (w, ws) = fx.f32("embedding.param.weight");
    let mut emb = EmbeddingConfig::new(ws[0], ws[1]).init::<Dp>(&Default::default());
    emb.weight = Param::from_tensor(tensor::<Dp, 2>(&w, &ws));
    let (ids, is) = fx.i64("embedding.input");
    let (r, rs) = fx.f32("embedding.upstream");
    let ids = || Tensor::<Dp, 2, Int>::from_data(TensorData::new(ids.clone(), is.clone()), &Default::default());
    check_layer_case(&fx, "embedding", &emb, || weighted_losses(emb.forward(ids()), tensor(&r, &rs)), &[("weight", "weight", &same)]);
}

#[test]
fn layer_fixtures_norms() {
    let fx = Fixture::open("layers.safetensors");
    let m = fx.meta("layernorm");
    let dim = m["dim"].as_u64().unwrap() as usize;
    let mut ln = LayerNormConfig::new(dim).with_epsilon(m["eps"].as_f64().unwrap()).init::<Dp>(&Default::default());
    let (g, gs) = fx.f32("layernorm.param.weight");
    let (bt, bs) = fx.f32("layernorm.param.bias");
    ln.gamma = Param::from_tensor(tensor::<Dp, 1>(&g, &gs));
    ln.beta = Some(Param::from_tensor(tensor::<Dp, 1>(&bt, &bs)));
    let (x, xs) = fx.f32("layernorm.input");
    let (r, rs) = fx.f32("layernorm.upstream");
    check_layer_case(&fx, "layernorm", &ln, || weighted_losses(ln.forward(batch(tensor::<Dp, 3>(&x, &xs))), tensor(&r, &rs)), &[("weight", "gamma", &same), ("bias", "beta", &same)]);

    let m = fx.meta("groupnorm");
    let (groups, channels) = (m["groups"].as_u64().unwrap() as usize, m["channels"].as_u64().unwrap() as usize);
    let mut gn = GroupNormConfig::new(groups, channels).with_epsilon(m["eps"].as_f64().unwrap()).init::<Dp>(&Default::default());
    let (g, gs) = fx.f32("groupnorm.param.weight");
    let (bt, bs) = fx.f32("groupnorm.param.bias");
    gn.gamma = Some(Param::from_tensor(tensor::<Dp, 1>(&g, &gs)));
    gn.beta = Some(Param::from_tensor(tensor::<Dp, 1>(&bt, &bs)));
    let (x, xs) = fx.f32("groupnorm.input");
    let (r, rs) = fx.f32("groupnorm.upstream");
    check_layer_case(&fx, "groupnorm", &gn, || weighted_losses(gn.forward(batch(tensor::<Dp, 4>(&x, &xs))), tensor(&r, &rs)), &[("weight", "gamma", &same), ("bias", "beta", &same)]);
}
