//! The per-sample losses against hand-computed values, against burn's batch losses (the sum of
//! the per-sample losses is the batch sum), their shape errors, and their use on `DpAutodiff`.

use burn::backend::NdArray;
use burn::module::Module;
use burn::nn::loss::{CrossEntropyLossConfig, MseLoss, Reduction};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::*;
use crate::{mark_batch, per_sample_gradients, DpAutodiff};

type Nd = NdArray<f32>;
type Dp = DpAutodiff<Nd>;

fn float<const D: usize>(v: &[f32], shape: [usize; D]) -> Tensor<Nd, D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

fn int<const D: usize>(v: &[i64], shape: [usize; D]) -> Tensor<Nd, D, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), &Default::default())
}

fn values(t: Tensor<Nd, 1>) -> Vec<f32> {
    t.into_data().to_vec().unwrap()
}

fn assert_close(got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-5, "{got:?} vs {want:?}");
    }
}

/// Logits `[[1, 2, 3], [0, 0, 0]]`: `−log p(2) = ln(1 + e⁻¹ + e⁻²) = 0.40760596` for the first
/// row, `ln 3 = 1.09861229` for any class of the second.
fn logits() -> Tensor<Nd, 2> {
    float(&[1.0, 2.0, 3.0, 0.0, 0.0, 0.0], [2, 3])
}

#[test]
fn cross_entropy_hand_computed() {
    let ce = PerSampleCrossEntropyConfig::new().init().unwrap();
    let got = ce.forward(logits(), int(&[2, 1], [2])).unwrap();
    assert_close(&values(got), &[0.407_605_96, 1.098_612_3]);
    // α = 0.1: 0.9 · 0.40760596 + 0.1 · mean(2.40760596, 1.40760596, 0.40760596) = 0.50760596;
    // the uniform row is ln 3 whatever the smoothing.
    let smoothed = PerSampleCrossEntropyConfig::new()
        .with_smoothing(Some(0.1))
        .init()
        .unwrap();
    let got = smoothed.forward(logits(), int(&[2, 1], [2])).unwrap();
    assert_close(&values(got), &[0.507_605_96, 1.098_612_3]);
    // PyTorch's ignore index −100 is out of 0..C: the sample gets 0, no out-of-range gather.
    let ignoring = PerSampleCrossEntropyConfig::new()
        .with_ignore_index(Some(-100))
        .init()
        .unwrap();
    let got = ignoring.forward(logits(), int(&[2, -100], [2])).unwrap();
    assert_close(&values(got), &[0.407_605_96, 0.0]);
}

#[test]
fn cross_entropy_sums_to_burns_batch_loss() {
    let dev = Default::default();
    let x = float(
        &[
            0.3, -1.2, 2.0, 0.5, 0.1, 0.0, -0.7, 1.1, 0.9, 0.4, -0.2, 0.8,
        ],
        [4, 3],
    );
    let y = int(&[0, 2, 1, 2], [4]);
    for smoothing in [None, Some(0.2)] {
        for pad in [None, Some(2usize)] {
            let ours = PerSampleCrossEntropyConfig::new()
                .with_smoothing(smoothing)
                .with_ignore_index(pad.map(|p| p as i64))
                .init()
                .unwrap()
                .forward(x.clone(), y.clone())
                .unwrap();
            // burn averages over all B rows, padded ones included (they count 0).
            let burns = CrossEntropyLossConfig::new()
                .with_smoothing(smoothing)
                .with_pad_tokens(pad.map(|p| vec![p]))
                .init::<Nd>(&dev)
                .forward(x.clone(), y.clone());
            let sum = values(ours.sum())[0];
            let want = 4.0 * values(burns)[0];
            assert!(
                (sum - want).abs() < 1e-5,
                "smoothing {smoothing:?} pad {pad:?}: {sum} vs {want}"
            );
        }
    }
}

#[test]
fn mse_hand_computed_and_burns_mean() {
    let (p, t) = (
        float(&[1.0, 2.0, 3.0, 5.0], [2, 2]),
        float(&[0.0, 0.0, 3.0, 3.0], [2, 2]),
    );
    let got = PerSampleMse::new().forward(p.clone(), t.clone()).unwrap();
    assert_close(&values(got.clone()), &[2.5, 2.0]);
    let burns = MseLoss::new().forward(p, t, Reduction::Mean);
    assert_close(&values(got.mean()), &values(burns));
    // Rank 1 and rank 3.
    let got = PerSampleMse::new()
        .forward(float(&[1.0, -2.0], [2]), float(&[0.0, 0.0], [2]))
        .unwrap();
    assert_close(&values(got), &[1.0, 4.0]);
    let got = PerSampleMse::new()
        .forward(float(&[1.0; 8], [2, 2, 2]), float(&[0.0; 8], [2, 2, 2]))
        .unwrap();
    assert_close(&values(got), &[1.0, 1.0]);
}

/// Sample 0: logits `[[0, ln 3], [0, 0]]`, targets `[1, 0]`: `−log ¾ = 0.28768207`, `ln 2`.
/// Sample 1: logits `[[0, 0], [0, ln 3]]`, targets `[0, 0]`: `ln 2`, `−log ¼ = 1.38629436`.
fn lm_inputs() -> (Tensor<Nd, 3>, Tensor<Nd, 2, Int>) {
    let l3 = 3f32.ln();
    (
        float(&[0.0, l3, 0.0, 0.0, 0.0, 0.0, 0.0, l3], [2, 2, 2]),
        int(&[1, 0, 0, 0], [2, 2]),
    )
}

#[test]
fn lm_loss_is_each_samples_own_token_mean() {
    let (ln2, a, c) = (2f32.ln(), 0.287_682_07, 1.386_294_4);
    let lm = PerSampleLmLossConfig::new().init().unwrap();
    let (x, y) = lm_inputs();
    let got = lm.forward(x.clone(), y.clone(), None).unwrap();
    assert_close(&values(got), &[(a + ln2) / 2.0, (ln2 + c) / 2.0]);
    // Masking sample 1's last token: sample 1 is divided by its own count 1, sample 0 by 2 (a
    // batch-wide count would divide both by 3).
    let mask = Tensor::<Nd, 2, Bool>::from_data(
        TensorData::new(vec![true, true, true, false], [2, 2]),
        &Default::default(),
    );
    let want = [(a + ln2) / 2.0, ln2];
    let got = lm.forward(x.clone(), y.clone(), Some(mask)).unwrap();
    assert_close(&values(got), &want);
    // The same through an ignore index, and a sample with no counted token gets 0.
    let lm = PerSampleLmLossConfig::new()
        .with_ignore_index(Some(-100))
        .init()
        .unwrap();
    let got = lm
        .forward(x.clone(), int(&[1, 0, 0, -100], [2, 2]), None)
        .unwrap();
    assert_close(&values(got), &want);
    let got = lm
        .forward(x, int(&[1, 0, -100, -100], [2, 2]), None)
        .unwrap();
    assert_close(&values(got), &[(a + ln2) / 2.0, 0.0]);
}

#[test]
fn lm_loss_matches_cross_entropy_per_token() {
    // One token per sample: the LM loss is the classifier's cross entropy, smoothing included.
    let (x, y) = (logits().reshape([2, 1, 3]), int(&[2, 1], [2, 1]));
    let lm = PerSampleLmLossConfig::new()
        .with_smoothing(Some(0.1))
        .init()
        .unwrap();
    let got = lm.forward(x, y, None).unwrap();
    assert_close(&values(got), &[0.507_605_96, 1.098_612_3]);
}

#[test]
fn bad_shapes_and_settings_are_typed_errors() {
    let ce = PerSampleCrossEntropy::default();
    let err = ce.forward(logits(), int(&[0, 1, 2], [3])).unwrap_err();
    assert!(matches!(err, LossError::Shape { .. }), "{err}");
    assert!(err.to_string().contains("[2, 3]"), "{err}");
    let err = PerSampleMse::new()
        .forward(float(&[0.0; 4], [2, 2]), float(&[0.0; 4], [4, 1]))
        .unwrap_err();
    assert!(matches!(err, LossError::Shape { .. }), "{err}");
    let (x, _) = lm_inputs();
    let lm = PerSampleLmLoss::default();
    let err = lm
        .forward(x.clone(), int(&[0; 6], [2, 3]), None)
        .unwrap_err();
    assert!(err.to_string().contains("targets [2, 3]"), "{err}");
    let mask = Tensor::<Nd, 2, Bool>::from_data(
        TensorData::new(vec![true; 2], [2, 1]),
        &Default::default(),
    );
    let err = lm.forward(x, int(&[0; 4], [2, 2]), Some(mask)).unwrap_err();
    assert!(err.to_string().contains("mask [2, 1]"), "{err}");
    for bad in [-0.1, 1.5, f32::NAN] {
        let err = PerSampleCrossEntropyConfig::new()
            .with_smoothing(Some(bad))
            .init()
            .unwrap_err();
        assert!(matches!(err, LossError::Smoothing { .. }), "{err}");
        assert!(PerSampleLmLossConfig::new()
            .with_smoothing(Some(bad))
            .init()
            .is_err());
    }
    let dp: DpError = PerSampleCrossEntropy::default()
        .forward(logits(), int(&[0], [1]))
        .unwrap_err()
        .into();
    assert!(dp.to_string().contains("PerSampleCrossEntropy"), "{dp}");
}

#[derive(Module, Debug)]
struct Tagger<B: Backend> {
    embed: Embedding<B>,
    head: Linear<B>,
}

/// On `DpAutodiff` the losses are per sample: the engine accepts them, with a host bool mask and
/// an ignore index, and an ignored sample's gradient is zero.
#[test]
fn losses_are_accepted_by_the_engine() {
    let dev = Default::default();
    let model = Tagger::<Dp> {
        embed: EmbeddingConfig::new(5, 4).init(&dev),
        head: LinearConfig::new(4, 5).init(&dev),
    };
    let ids =
        Tensor::<Dp, 2, Int>::from_data(TensorData::new(vec![1i64, 2, 3, 4, 0, 1], [3, 2]), &dev);
    let targets = Tensor::<Dp, 2, Int>::from_data(
        TensorData::new(vec![2i64, 3, 4, -100, 1, 2], [3, 2]),
        &dev,
    );
    let mask = Tensor::<Dp, 2, Bool>::from_data(
        TensorData::new(vec![true, true, true, true, false, false], [3, 2]),
        &dev,
    );
    let lm = PerSampleLmLossConfig::new()
        .with_ignore_index(Some(-100))
        .init()
        .unwrap();
    let losses = lm
        .forward(
            model.head.forward(model.embed.forward(ids.clone())),
            targets,
            Some(mask),
        )
        .unwrap();
    let grads = per_sample_gradients(&model, losses).expect("per-sample LM losses");
    let head: Vec<f32> = grads
        .iter()
        .find(|(_, p, _)| p == "head.weight")
        .map(|(_, _, g)| g.clone().into_data().to_vec().unwrap())
        .unwrap();
    let row = head.len() / 3;
    assert!(
        head[2 * row..].iter().all(|g| *g == 0.0),
        "sample 2 counts no token"
    );
    assert!(head[..row].iter().any(|g| *g != 0.0));

    // A classifier on marked float inputs, one ignored sample.
    let x = mark_batch(Tensor::<Dp, 2>::from_data(
        TensorData::new(
            vec![
                0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2,
            ],
            [3, 4],
        ),
        &dev,
    ));
    let y = Tensor::<Dp, 1, Int>::from_data(TensorData::new(vec![0i64, 4, 2], [3]), &dev);
    let ce = PerSampleCrossEntropyConfig::new()
        .with_smoothing(Some(0.1))
        .with_ignore_index(Some(4))
        .init()
        .unwrap();
    let losses = ce.forward(model.head.forward(x.clone()), y).unwrap();
    per_sample_gradients(&model.head, losses).expect("per-sample cross entropy");
    let mse = PerSampleMse::new()
        .forward(model.head.forward(x), Tensor::zeros([3, 5], &dev))
        .unwrap();
    per_sample_gradients(&model.head, mse).expect("per-sample MSE");
}
