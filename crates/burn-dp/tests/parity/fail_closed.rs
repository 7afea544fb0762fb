//! Fail closed: models whose gradients mix samples (BatchNorm in training mode, a batch merged
//! into another dimension, a parameter through a plain matmul), an unmarked input and losses
//! that are not a vector are typed errors naming the parameter.

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_dp::{batch, per_sample_gradients, DpError};

use super::support::*;

#[derive(Module, Debug)]
struct BnNet<B: Backend> {
    fc1: Linear<B>,
    bn: burn::nn::BatchNorm<B>,
    fc2: Linear<B>,
}

#[derive(Module, Debug)]
struct RawMatmul<B: Backend> {
    w: Param<Tensor<B, 2>>,
}

#[test]
fn errors_name_the_parameter() {
    let mut values = Values::new(83);
    let dev = Default::default();
    let (b, t, d) = (4, 3, 5);
    let x = values.vec(b * t * d);

    // BatchNorm in training mode mixes samples.
    let net = BnNet::<Dp> {
        fc1: linear(&mut values, d, 4, true),
        bn: burn::nn::BatchNormConfig::new(4).init(&dev),
        fc2: linear(&mut values, 4, 2, true),
    };
    let losses = net.fc2.forward(
        net.bn
            .forward(
                net.fc1
                    .forward(batch(tensor::<Dp, 3>(&x, &[b, t, d])))
                    .swap_dims(1, 2),
            )
            .swap_dims(1, 2),
    );
    let losses = losses.reshape([b as i64, -1]).sum_dim(1).reshape([b]);
    // The cause is named where it happened: the op that first mixed the batch (BatchNorm's
    // swap of dimensions 0 and 1), with the fix, not the parameter whose gradient it reached.
    match per_sample_gradients(&net, losses) {
        Err(e @ DpError::LossMixesSamples { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("swap_dims") && msg.contains("GroupNorm"),
                "{msg}"
            );
        }
        other => panic!(
            "BatchNorm must be rejected, got {:?}",
            other.map(|v| v.len())
        ),
    }

    // A batch dimension merged into another ([B*T, d]).
    let fc = linear::<Dp>(&mut values, d, 2, true);
    let h = fc
        .forward(batch(tensor::<Dp, 3>(&x, &[b, t, d])).reshape([b * t, d]))
        .reshape([b, t * 2]);
    // The first op that mixed is named, with the fix ("keep the batch in dimension 0").
    match per_sample_gradients(&fc, h.sum_dim(1).reshape([b])) {
        Err(e @ DpError::LossMixesSamples { .. }) => {
            assert_eq!(
                e,
                DpError::LossMixesSamples {
                    op: "float_reshape".into()
                }
            );
            assert!(e.to_string().contains("dimension 0"), "{e}");
        }
        other => panic!(
            "a merged batch must be rejected, got {:?}",
            other.map(|v| v.len())
        ),
    }

    // The same, with an unmarked input: the first cause is that nothing marks the batch.
    let h = fc
        .forward(tensor::<Dp, 3>(&x, &[b, t, d]).reshape([b * t, d]))
        .reshape([b, t * 2]);
    match per_sample_gradients(&fc, h.sum_dim(1).reshape([b])) {
        Err(DpError::UnmarkedBatch) => {}
        other => panic!(
            "a merged batch must be rejected, got {:?}",
            other.map(|v| v.len())
        ),
    }

    // Unmarked float input.
    let h = fc.forward(tensor::<Dp, 3>(&x, &[b, t, d]));
    let err = per_sample_gradients(&fc, h.reshape([b as i64, -1]).sum_dim(1).reshape([b])).err();
    assert_eq!(err, Some(DpError::UnmarkedBatch));

    // A parameter through a plain rank-2 matmul has no per-sample rule.
    let raw = RawMatmul::<Dp> {
        w: values.param([d, 3]),
    };
    let h = batch(tensor::<Dp, 2>(&x[..b * d], &[b, d])).matmul(raw.w.val());
    match per_sample_gradients(&raw, h.sum_dim(1).reshape([b])) {
        Err(DpError::MixedSamples { param, .. }) | Err(DpError::NoPerSampleRule { param, .. }) => {
            assert_eq!(param, "w")
        }
        other => panic!(
            "rank-2 matmul must be rejected, got {:?}",
            other.map(|v| v.len())
        ),
    }

    // Per-sample losses that are not a vector.
    let h = fc.forward(batch(tensor::<Dp, 3>(&x, &[b, t, d])));
    let err = per_sample_gradients(&fc, h.sum());
    assert!(err.is_err());
}
