//! The pieces of a Llama decoder layer, with HF module names: rotary positions, grouped-query
//! attention (`self_attn`), the SwiGLU MLP (`mlp`) and the layer around them.

use burn::module::Module;
use burn::nn::RmsNorm;
use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::act::Activation;
use crate::lora::LoraLinear;

/// The rotary tables `cos` and `sin` of one forward pass (Su et al. 2021, RoFormer, eq. 34, in
/// HF's "rotate half" layout: dimension `j` and `j + head_dim/2` form a pair rotated by angle
/// `p·θ_j`, `θ_j = base^(-2j/head_dim)`).
///
/// The tables are computed on the device from `arange`, so burn-dp tags them
/// batch-independent: a table of `T` rows is never mistaken for batch data, whatever `T` is.
/// Per-sample position ids (host data `[B, T]`) give per-sample tables.
///
/// # Shapes
/// - `cos`, `sin`: `[P, 1, T, head_dim]`, `P = 1` for the default positions `0..T`, `B` for
///   position ids `[B, T]`
#[derive(Debug, Clone)]
pub struct Rotary<B: Backend> {
    /// `cos(p·θ_j)` for both members of each pair.
    pub cos: Tensor<B, 4>,
    /// `sin(p·θ_j)` for both members of each pair.
    pub sin: Tensor<B, 4>,
}

impl<B: Backend> Rotary<B> {
    /// The tables for `t` positions `0..t`, or for `position_ids` `[B, T]` when given.
    pub fn new(
        head_dim: usize,
        base: f64,
        t: usize,
        position_ids: Option<Tensor<B, 2, Int>>,
        device: &B::Device,
    ) -> Self {
        let half = head_dim / 2;
        // θ_j = base^(-2j/head_dim) = exp(-2j·ln(base)/head_dim), j = 0..half.
        let inv_freq = Tensor::<B, 1, Int>::arange(0..half as i64, device)
            .float()
            .mul_scalar(-2.0 * base.ln() / head_dim as f64)
            .exp();
        let positions = match position_ids {
            Some(p) => p.float(),
            None => Tensor::<B, 1, Int>::arange(0..t as i64, device)
                .float()
                .reshape([1, t]),
        };
        let [p, t] = positions.dims();
        let angles = positions.reshape([p, t, 1]) * inv_freq.reshape([1, 1, half]);
        let angles = Tensor::cat(vec![angles.clone(), angles], 2).reshape([p, 1, t, head_dim]);
        Self {
            cos: angles.clone().cos(),
            sin: angles.sin(),
        }
    }

    /// Rotates queries or keys: `x·cos + rotate_half(x)·sin`, `rotate_half([x₁, x₂]) = [-x₂, x₁]`.
    ///
    /// # Shapes
    /// `[B, heads, T, head_dim] -> [B, heads, T, head_dim]`
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, h, t, d] = x.dims();
        let half = d / 2;
        let x1 = x.clone().slice([0..b, 0..h, 0..t, 0..half]);
        let x2 = x.clone().slice([0..b, 0..h, 0..t, half..d]);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
        x * self.cos.clone() + rotated * self.sin.clone()
    }
}

/// Grouped-query self-attention (`model.layers.N.self_attn`): `num_heads` query heads share
/// `num_kv_heads` key/value heads, causal, rotary positions on queries and keys.
#[derive(Module, Debug)]
pub struct LlamaAttention<B: Backend> {
    /// Query projection `[d, heads·head_dim]`.
    pub q_proj: LoraLinear<B>,
    /// Key projection `[d, kv_heads·head_dim]`.
    pub k_proj: LoraLinear<B>,
    /// Value projection `[d, kv_heads·head_dim]`.
    pub v_proj: LoraLinear<B>,
    /// Output projection `[heads·head_dim, d]`.
    pub o_proj: LoraLinear<B>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (divides `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl<B: Backend> LlamaAttention<B> {
    /// Causal attention; the batch stays dimension 0 throughout (heads are split and merged on
    /// the trailing dimensions only).
    ///
    /// # Shapes
    /// `x`: `[B, T, d]` -> `[B, T, d]`
    pub fn forward(&self, x: Tensor<B, 3>, rotary: &Rotary<B>) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let (h, kv, dh) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor<B, 3>, n: usize| y.reshape([b, t, n, dh]).swap_dims(1, 2);
        let q = rotary.apply(heads(self.q_proj.forward(x.clone()), h));
        let k = rotary.apply(heads(self.k_proj.forward(x.clone()), kv));
        let v = heads(self.v_proj.forward(x), kv);
        // Each key/value head serves a group of h / kv query heads (HF `repeat_kv`).
        let repeat = |y: Tensor<B, 4>| {
            if kv == h {
                y
            } else {
                y.unsqueeze_dim::<5>(2)
                    .expand([b, kv, h / kv, t, dh])
                    .reshape([b, h, t, dh])
            }
        };
        let (k, v) = (repeat(k), repeat(v));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((dh as f64).sqrt());
        let mask = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &scores.device()).unsqueeze::<4>();
        let probs = softmax(scores.mask_fill(mask, f32::MIN), 3);
        let out = probs.matmul(v).swap_dims(1, 2).reshape([b, t, h * dh]);
        self.o_proj.forward(out)
    }
}

/// The SwiGLU MLP (`model.layers.N.mlp`; Shazeer 2020, "GLU variants improve Transformer",
/// eq. 6): `down(act(gate(x)) ⊙ up(x))`.
#[derive(Module, Debug)]
pub struct LlamaMlp<B: Backend> {
    /// Gate projection `[d, intermediate]`.
    pub gate_proj: LoraLinear<B>,
    /// Up projection `[d, intermediate]`.
    pub up_proj: LoraLinear<B>,
    /// Down projection `[intermediate, d]`.
    pub down_proj: LoraLinear<B>,
    /// Activation of the gate (SiLU).
    pub act: Activation,
}

impl<B: Backend> LlamaMlp<B> {
    /// # Shapes
    /// `[B, T, d] -> [B, T, d]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = self.act.forward(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}

/// One pre-norm decoder layer (`model.layers.N`).
#[derive(Module, Debug)]
pub struct LlamaDecoderLayer<B: Backend> {
    /// RMSNorm before attention (burn's `gamma`, torch name `input_layernorm.weight`).
    pub input_layernorm: RmsNorm<B>,
    /// Attention.
    pub self_attn: LlamaAttention<B>,
    /// RMSNorm before the MLP.
    pub post_attention_layernorm: RmsNorm<B>,
    /// MLP.
    pub mlp: LlamaMlp<B>,
}

impl<B: Backend> LlamaDecoderLayer<B> {
    /// `h = x + attn(norm(x)); h + mlp(norm(h))`.
    ///
    /// # Shapes
    /// `[B, T, d] -> [B, T, d]`
    pub fn forward(&self, x: Tensor<B, 3>, rotary: &Rotary<B>) -> Tensor<B, 3> {
        let h = x.clone()
            + self
                .self_attn
                .forward(self.input_layernorm.forward(x), rotary);
        h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
    }

    /// Every linear layer of the layer with its path relative to the layer
    /// (`self_attn.q_proj`, …, `mlp.down_proj`), for adding, merging and visiting adapters.
    pub(crate) fn map_linears(
        self,
        prefix: &str,
        f: &mut impl FnMut(&str, LoraLinear<B>) -> LoraLinear<B>,
    ) -> Self {
        let Self {
            input_layernorm,
            self_attn: a,
            post_attention_layernorm,
            mlp: m,
        } = self;
        let mut g = |name: &str, l: LoraLinear<B>| f(&format!("{prefix}.{name}"), l);
        Self {
            input_layernorm,
            self_attn: LlamaAttention {
                q_proj: g("self_attn.q_proj", a.q_proj),
                k_proj: g("self_attn.k_proj", a.k_proj),
                v_proj: g("self_attn.v_proj", a.v_proj),
                o_proj: g("self_attn.o_proj", a.o_proj),
                ..a
            },
            post_attention_layernorm,
            mlp: LlamaMlp {
                gate_proj: g("mlp.gate_proj", m.gate_proj),
                up_proj: g("mlp.up_proj", m.up_proj),
                down_proj: g("mlp.down_proj", m.down_proj),
                ..m
            },
        }
    }
}
