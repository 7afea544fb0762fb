//! burn-nn 0.21's modules, one test per row of the book's "What is supported" table
//! (`book/src/supported.md`): the engine's per-sample gradients, norms and clipped sums against
//! the batch-of-one oracle (B separate backward passes of plain `Autodiff<Inner>`), or the typed
//! refusal of a module that mixes samples or has no rule. Rows already covered elsewhere: Linear,
//! Conv1d/Conv2d, Embedding, LayerNorm, GroupNorm, RmsNorm, raw `Param`s ([`super::oracle`]),
//! Conv3d ([`super::conv3d`]). Tiny widths, B = 3, fixed values: each test is a few milliseconds.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::nn::attention::{MhaInput, MultiHeadAttention, MultiHeadAttentionConfig};
use burn::nn::conv::{
    Conv1d, Conv1dConfig, Conv2d, Conv2dConfig, ConvTranspose1d, ConvTranspose1dConfig,
    ConvTranspose2d, ConvTranspose2dConfig, ConvTranspose3d, ConvTranspose3dConfig,
};
use burn::nn::interpolate::{Interpolate1d, Interpolate1dConfig};
use burn::nn::pool::{
    AdaptiveAvgPool1d, AdaptiveAvgPool1dConfig, AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig,
    AvgPool1d, AvgPool1dConfig, AvgPool2d, AvgPool2dConfig, MaxPool1d, MaxPool1dConfig, MaxPool2d,
    MaxPool2dConfig,
};
use burn::nn::transformer::{
    TransformerDecoder, TransformerDecoderConfig, TransformerDecoderInput, TransformerEncoder,
    TransformerEncoderConfig, TransformerEncoderInput,
};
use burn::nn::{
    BatchNorm, BatchNormConfig, BiLstm, BiLstmConfig, Dropout, DropoutConfig, Gru, GruConfig,
    InstanceNorm, InstanceNormConfig, Linear, LinearConfig, LocalResponseNorm,
    LocalResponseNormConfig, Lstm, LstmConfig, PRelu, PReluConfig, PositionalEncoding,
    PositionalEncodingConfig, Rnn, RnnConfig, RotaryEncoding, RotaryEncodingConfig, SwiGlu,
    SwiGluConfig, Unfold4d, Unfold4dConfig,
};
use burn::tensor::activation::{gelu, relu, sigmoid, silu, tanh};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burn_dp::testing::{assert_close, batch_of_one, sample, to_vec};
use burn_dp::{mark_batch, per_sample_gradients};

use super::support::*;

const BATCH: usize = 3;

/// Copies the float parameters of `plain` into `dp` (same module, other backend), in visiting
/// order, keeping `dp`'s parameter ids and trainability.
fn same_weights<MP: Module<Plain>, MD: Module<Dp>>(plain: &MP, dp: MD) -> MD {
    struct Collect(Vec<TensorData>);
    impl ModuleVisitor<Plain> for Collect {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<Plain, D>>) {
            self.0.push(p.val().into_data());
        }
    }
    struct Assign(std::vec::IntoIter<TensorData>);
    impl ModuleMapper<Dp> for Assign {
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<Dp, D>>) -> Param<Tensor<Dp, D>> {
            let data = self.0.next().expect("same module on both backends");
            p.map(|t| {
                let trainable = t.is_require_grad();
                let copy = Tensor::from_data(data, &t.device());
                if trainable {
                    copy.require_grad()
                } else {
                    copy
                }
            })
        }
    }
    let mut collect = Collect(Vec::new());
    plain.visit(&mut collect);
    dp.map(&mut Assign(collect.0.into_iter()))
}

/// A per-sample loss of a module's output `[BATCH, …]`: `Σ_j o_j (o_j + ½)` over sample i's
/// elements (quadratic, so that every parameter gets a non-trivial gradient).
fn loss_of<B: Backend, const D: usize>(out: Tensor<B, D>) -> Tensor<B, 1> {
    let b = out.dims()[0];
    (out.clone() * (out + 0.5))
        .reshape([b as i64, -1])
        .sum_dim(1)
        .reshape([b])
}

/// The engine against the batch-of-one oracle for a module on both backends (`dp` gets `plain`'s
/// weights), on an input of `shape` with fixed values. `losses` is generic over the backend.
fn check<M, const D: usize>(
    what: &str,
    plain: M,
    dp: M::Dp,
    shape: [usize; D],
    losses_plain: impl Fn(&M, Tensor<Plain, D>) -> Tensor<Plain, 1>,
    losses_dp: impl Fn(&M::Dp, Tensor<Dp, D>) -> Tensor<Dp, 1>,
) where
    M: AutodiffModule<Plain> + WithDp,
{
    let dp = same_weights(&plain, dp);
    let x = Values::new(11).vec(shape.iter().product());
    let xp = tensor::<Plain, D>(&x, &shape);
    property(
        what,
        &plain,
        &dp,
        shape[0],
        |i| losses_plain(&plain, sample(&xp, i)),
        || losses_dp(&dp, mark_batch(tensor::<Dp, D>(&x, &shape))),
    );
}

/// The same module type on the DP backend.
trait WithDp {
    type Dp: AutodiffModule<Dp>;
}

/// One test: a module `Net<B>` with the given fields (each `name: type = init`, with the device named by `|dev|`) and
/// per-sample output `body`, on an input of rank `rank` and shape `shape`, checked by [`check`].
macro_rules! case {
    ($test:ident, $what:literal, $rank:literal, $shape:expr,
     |$dev:ident| { $($field:ident: $ty:ty = $init:expr),* $(,)? },
     |$m:ident, $x:ident| $body:expr) => {
        #[test]
        fn $test() {
            #[derive(Module, Debug)]
            struct Net<B: Backend> {
                $($field: $ty,)*
            }
            impl WithDp for Net<Plain> {
                type Dp = Net<Dp>;
            }
            fn build<B: Backend>($dev: &B::Device) -> Net<B> {
                Net { $($field: $init,)* }
            }
            #[allow(unused_variables)]
            fn losses<B: Backend>($m: &Net<B>, $x: Tensor<B, $rank>) -> Tensor<B, 1> {
                loss_of($body)
            }
            check::<Net<Plain>, $rank>(
                $what,
                build::<Plain>(&Default::default()),
                build::<Dp>(&Default::default()),
                $shape,
                losses::<Plain>,
                losses::<Dp>,
            );
        }
    };
}

// ------------------------------------------------------------------ works

case!(conv_transpose_frozen, "frozen ConvTranspose2d before a Linear", 4, [BATCH, 2, 2, 2],
    |dev| {
        up: ConvTranspose2d<B> = ConvTranspose2dConfig::new([2, 1], [2, 2]).init(dev).no_grad(),
        head: Linear<B> = LinearConfig::new(3, 2).init(dev),
    },
    |m, x| m.head.forward(m.up.forward(x).narrow(3, 0, 3)));

case!(instance_norm, "Conv1d, InstanceNorm (affine)", 3, [BATCH, 2, 4],
    |dev| {
        conv: Conv1d<B> = Conv1dConfig::new(2, 4, 1).init(dev),
        norm: InstanceNorm<B> = InstanceNormConfig::new(4).with_affine(true).init(dev),
    },
    |m, x| m.norm.forward(m.conv.forward(x)));

case!(activations_and_prelu, "Linear, PRelu, SwiGlu and the activation functions", 2, [BATCH, 3],
|dev| {
    fc: Linear<B> = LinearConfig::new(3, 4).init(dev),
    prelu: PRelu<B> = PReluConfig::new().with_num_parameters(4).init(dev),
    swiglu: SwiGlu<B> = SwiGluConfig::new(4, 3).init(dev),
},
|m, x| {
    let h = m.prelu.forward(m.fc.forward(x));
    m.swiglu.forward(gelu(h.clone()) + tanh(h.clone()) + sigmoid(h.clone()) + silu(h.clone()) + relu(h))
});

case!(pooling_1d, "Conv1d, AvgPool1d, MaxPool1d, AdaptiveAvgPool1d", 3, [BATCH, 2, 8],
    |dev| {
        conv: Conv1d<B> = Conv1dConfig::new(2, 2, 1).init(dev),
        avg: AvgPool1d = AvgPool1dConfig::new(2).init(),
        max: MaxPool1d = MaxPool1dConfig::new(2).init(),
        adaptive: AdaptiveAvgPool1d = AdaptiveAvgPool1dConfig::new(1).init(),
    },
    |m, x| m.adaptive.forward(m.max.forward(m.avg.forward(m.conv.forward(x)))));

case!(pooling_2d, "Conv2d, AvgPool2d, MaxPool2d, AdaptiveAvgPool2d", 4, [BATCH, 2, 4, 4],
    |dev| {
        conv: Conv2d<B> = Conv2dConfig::new([2, 2], [1, 1]).init(dev),
        avg: AvgPool2d = AvgPool2dConfig::new([2, 2]).with_strides([1, 1]).init(),
        max: MaxPool2d = MaxPool2dConfig::new([2, 2]).init(),
        adaptive: AdaptiveAvgPool2d = AdaptiveAvgPool2dConfig::new([1, 1]).init(),
    },
    |m, x| m.adaptive.forward(m.max.forward(m.avg.forward(m.conv.forward(x)))));

case!(interpolate_and_unfold, "Conv2d, Unfold4d; Conv1d, Interpolate1d", 4, [BATCH, 2, 3, 3],
    |dev| {
        conv: Conv2d<B> = Conv2dConfig::new([2, 2], [1, 1]).init(dev),
        unfold: Unfold4d = Unfold4dConfig::new([2, 2]).init(),
        conv1: Conv1d<B> = Conv1dConfig::new(8, 2, 1).init(dev),
        interp: Interpolate1d = Interpolate1dConfig::new().with_output_size(Some(6)).init(),
    },
    |m, x| m.interp.forward(m.conv1.forward(m.unfold.forward(m.conv.forward(x)))));

case!(positional_encodings, "Linear, PositionalEncoding, RotaryEncoding, Linear", 3, [BATCH, 3, 4],
    |dev| {
        fc: Linear<B> = LinearConfig::new(4, 4).init(dev),
        pos: PositionalEncoding<B> = PositionalEncodingConfig::new(4).with_max_sequence_size(8).init(dev),
        rope: RotaryEncoding<B> = RotaryEncodingConfig::new(8, 4).init(dev),
        head: Linear<B> = LinearConfig::new(4, 2).init(dev),
    },
    |m, x| m.head.forward(m.rope.forward(m.pos.forward(m.fc.forward(x)))));

case!(rnn_and_lstm, "Rnn, Lstm", 3, [BATCH, 3, 2],
    |dev| {
        rnn: Rnn<B> = RnnConfig::new(2, 3, true).init(dev),
        lstm: Lstm<B> = LstmConfig::new(3, 2, true).init(dev),
    },
    |m, x| m.lstm.forward(m.rnn.forward(x, None).0, None).0);

case!(gru_frozen, "a frozen Gru between Linear layers", 3, [BATCH, 3, 2],
    |dev| {
        fc: Linear<B> = LinearConfig::new(2, 3).init(dev),
        gru: Gru<B> = GruConfig::new(3, 2, true).init(dev).no_grad(),
        head: Linear<B> = LinearConfig::new(2, 2).init(dev),
    },
    |m, x| m.head.forward(m.gru.forward(m.fc.forward(x), None)));

case!(bi_lstm, "BiLstm", 3, [BATCH, 3, 2],
    |dev| { lstm: BiLstm<B> = BiLstmConfig::new(2, 2, true).init(dev) },
    |m, x| m.lstm.forward(x, None).0);

case!(multi_head_attention, "MultiHeadAttention (self-attention)", 3, [BATCH, 3, 4],
    |dev| { mha: MultiHeadAttention<B> = MultiHeadAttentionConfig::new(4, 2).with_dropout(0.0).init(dev) },
    |m, x| m.mha.forward(MhaInput::self_attn(x)).context);

case!(transformer_encoder, "TransformerEncoder (pre- and post-norm)", 3, [BATCH, 3, 4],
    |dev| {
        pre: TransformerEncoder<B> = TransformerEncoderConfig::new(4, 6, 2, 1).with_dropout(0.0).with_norm_first(true).init(dev),
        post: TransformerEncoder<B> = TransformerEncoderConfig::new(4, 6, 2, 1).with_dropout(0.0).init(dev),
    },
    |m, x| m.post.forward(TransformerEncoderInput::new(m.pre.forward(TransformerEncoderInput::new(x)))));

case!(transformer_decoder, "TransformerDecoder (memory from the same sample)", 3, [BATCH, 3, 4],
    |dev| { dec: TransformerDecoder<B> = TransformerDecoderConfig::new(4, 6, 2, 1).with_dropout(0.0).init(dev) },
    |m, x| m.dec.forward(TransformerDecoderInput::new(x.clone(), x.narrow(1, 0, 2))));

#[test]
fn attention_masks() {
    // A padding mask and burn's causal mask (`generate_autoregressive_mask`, host bool data
    // expanded over the batch): masks are host data used row by row.
    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        enc: TransformerEncoder<B>,
    }
    impl WithDp for Net<Plain> {
        type Dp = Net<Dp>;
    }
    fn build<B: Backend>(dev: &B::Device) -> Net<B> {
        Net {
            enc: TransformerEncoderConfig::new(4, 6, 2, 1)
                .with_dropout(0.0)
                .init(dev),
        }
    }
    fn losses<B: Backend>(m: &Net<B>, x: Tensor<B, 3>) -> Tensor<B, 1> {
        let [b, t, _] = x.dims();
        let dev = x.device();
        let causal = burn::nn::attention::generate_autoregressive_mask::<B>(b, t, &dev);
        // Sample i pads its last i mod 2 positions (a pattern that survives `sample(x, i)`:
        // position-based, so the oracle sees row i's mask as row 0 of a batch of one).
        let pad = Tensor::<B, 2, burn::tensor::Bool>::from_data(
            TensorData::new([false, false, true].repeat(b), [b, t]),
            &dev,
        );
        loss_of(
            m.enc.forward(
                TransformerEncoderInput::new(x)
                    .mask_attn(causal)
                    .mask_pad(pad),
            ),
        )
    }
    check::<Net<Plain>, 3>(
        "TransformerEncoder with causal and padding masks",
        build::<Plain>(&Default::default()),
        build::<Dp>(&Default::default()),
        [BATCH, 3, 4],
        losses::<Plain>,
        losses::<Dp>,
    );
}

/// Dropout draws its mask element-wise, so rows stay independent. The oracle cannot redraw the
/// same mask one sample at a time; with the same seed, the per-sample gradients sum to the
/// ordinary batch gradient, and the engine accepts the forward.
#[test]
fn dropout() {
    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        fc: Linear<B>,
        drop: Dropout,
        head: Linear<B>,
    }
    fn build<B: Backend>(dev: &B::Device) -> Net<B> {
        Net {
            fc: LinearConfig::new(3, 8).init(dev),
            drop: DropoutConfig::new(0.5).init(),
            head: LinearConfig::new(8, 2).init(dev),
        }
    }
    fn losses<B: Backend>(m: &Net<B>, x: Tensor<B, 2>) -> Tensor<B, 1> {
        loss_of(m.head.forward(m.drop.forward(m.fc.forward(x))))
    }
    let dev = Default::default();
    let plain = build::<Plain>(&dev);
    let dp = same_weights(&plain, build::<Dp>(&dev));
    let x = Values::new(5).vec(BATCH * 3);
    Plain::seed(&dev, 42);
    let batch_grads = batch_of_one(&plain, 1, |_| {
        losses(&plain, tensor::<Plain, 2>(&x, &[BATCH, 3]))
            .sum()
            .reshape([1])
    });
    Dp::seed(&dev, 42);
    let per_sample = per_sample_gradients(&dp, losses(&dp, mark_batch(tensor(&x, &[BATCH, 3]))))
        .expect("Dropout keeps samples apart");
    for ((path, want), (_, _, got)) in batch_grads.iter().zip(&per_sample) {
        let got = to_vec(got.clone().sum_dim(0));
        assert_close(&format!("dropout: Σ_i g_i of {path}"), &got, want, 1e-4);
    }
}

/// BatchNorm in training mode mixes the samples of the batch (its statistics are batch means) and
/// writes running statistics from the batch: refused, for any batch size. Use GroupNorm or
/// LayerNorm.
#[test]
fn batch_norm_is_rejected() {
    #[derive(Module, Debug)]
    struct Net<B: Backend> {
        conv: Conv1d<B>,
        bn: BatchNorm<B>,
    }
    let dev = Default::default();
    let net = Net::<Dp> {
        conv: Conv1dConfig::new(2, 2, 1).init(&dev),
        bn: BatchNormConfig::new(2).init(&dev),
    };
    for b in [1, BATCH] {
        let x = mark_batch(tensor::<Dp, 3>(&Values::new(3).vec(b * 8), &[b, 2, 4]));
        let losses = loss_of(net.bn.forward(net.conv.forward(x)));
        assert!(
            per_sample_gradients(&net, losses).is_err(),
            "BatchNorm must be refused at B = {b}"
        );
    }
}

/// Transposed convolutions have no per-sample rule in the library (their weight gradient
/// `conv_transpose*_weight_backward` sums over the batch): a trainable one is an error naming its
/// weight; frozen, it works ([`conv_transpose_frozen`]); `tests/custom-rule` registers a rule for
/// ConvTranspose1d from outside the crate.
#[test]
fn conv_transpose_needs_a_rule() {
    let dev = Default::default();
    let mut values = Values::new(9);
    let x1 = mark_batch(tensor::<Dp, 3>(&values.vec(BATCH * 2 * 3), &[BATCH, 2, 3]));
    let up1: ConvTranspose1d<Dp> = ConvTranspose1dConfig::new([2, 2], 2).init(&dev);
    let err = per_sample_gradients(&up1, loss_of(up1.forward(x1))).err();
    let x2 = mark_batch(tensor::<Dp, 4>(
        &values.vec(BATCH * 2 * 4),
        &[BATCH, 2, 2, 2],
    ));
    let up2: ConvTranspose2d<Dp> = ConvTranspose2dConfig::new([2, 2], [2, 2]).init(&dev);
    let err2 = per_sample_gradients(&up2, loss_of(up2.forward(x2))).err();
    let x3 = mark_batch(tensor::<Dp, 5>(
        &values.vec(BATCH * 2 * 8),
        &[BATCH, 2, 2, 2, 2],
    ));
    let up3: ConvTranspose3d<Dp> = ConvTranspose3dConfig::new([2, 2], [2, 2, 2]).init(&dev);
    let err3 = per_sample_gradients(&up3, loss_of(up3.forward(x3))).err();
    for (what, err) in [("1d", err), ("2d", err2), ("3d", err3)] {
        let err = err.unwrap_or_else(|| panic!("a trainable ConvTranspose{what} must be refused"));
        assert!(
            err.to_string().contains("weight"),
            "ConvTranspose{what}: the error names the weight: {err}"
        );
    }
}

/// Modules that mix the batch in their implementation, for any batch size: `Gru` (and `BiGru`)
/// multiply their inputs by the gate weights with a raw rank-2 `matmul`, whose weight gradient
/// `xᵀ·g` sums over the batch (no rule: the error names the gate's weight; frozen, it works:
/// [`gru_frozen`]); `LocalResponseNorm` reshapes `[N, D, C]` to `[N·D, 1, C]`, merging the batch
/// with the positions (it has no parameters, so the error names the layer before it).
#[test]
fn batch_mixing_implementations_are_rejected() {
    #[derive(Module, Debug)]
    struct WithGru<B: Backend> {
        gru: Gru<B>,
    }
    #[derive(Module, Debug)]
    struct WithLrn<B: Backend> {
        conv: Conv1d<B>,
        norm: LocalResponseNorm,
    }
    let dev = Default::default();
    let net = WithGru::<Dp> {
        gru: GruConfig::new(2, 2, true).init(&dev),
    };
    let x = mark_batch(tensor::<Dp, 3>(
        &Values::new(4).vec(BATCH * 6),
        &[BATCH, 3, 2],
    ));
    let err = per_sample_gradients(&net, loss_of(net.gru.forward(x, None)))
        .map(|g| g.len())
        .expect_err("a trainable Gru must be refused");
    assert!(
        err.to_string().contains("gru."),
        "the error names the Gru's weight: {err}"
    );
    let net = WithLrn::<Dp> {
        conv: Conv1dConfig::new(2, 4, 1).init(&dev),
        norm: LocalResponseNormConfig::new(3).init(),
    };
    let x = mark_batch(tensor::<Dp, 3>(
        &Values::new(4).vec(BATCH * 8),
        &[BATCH, 2, 4],
    ));
    let losses = loss_of(net.norm.forward(net.conv.forward(x)));
    assert!(
        per_sample_gradients(&net, losses).is_err(),
        "LocalResponseNorm must be refused"
    );
}
