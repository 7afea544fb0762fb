//! Issue 27.1: the seed's workflow on one backend, as a newcomer writes it — a text classifier of
//! their own (Embedding → mean over tokens → LayerNorm → Linear), pre-trained on public data with
//! an ordinary `backward()` + Adam loop on `DpAutodiff`, then fine-tuned privately: DP-BiTFiT and
//! DP full. The book includes this file ("What is rejected, and why").

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use burn_dp::Flex;
use burn_dp::{
    declare_public, freeze, AccountantKind, ClippingFn, DpAutodiff, DpError, FreezePolicy,
    NoiseSource, PerSampleConfig, PrivacyState, PrivateSetup, PrivateTrainer,
};

type B = DpAutodiff<Flex>;

const VOCAB: usize = 20;
const T: usize = 6;
const N: usize = 32;

#[derive(Module, Debug)]
struct TextClassifier<B: Backend> {
    embed: Embedding<B>,
    norm: LayerNorm<B>,
    head: Linear<B>,
}

impl<B: Backend> TextClassifier<B> {
    fn new(device: &B::Device) -> Self {
        TextClassifier {
            embed: EmbeddingConfig::new(VOCAB, 8).init(device),
            norm: LayerNormConfig::new(8).init(device),
            head: LinearConfig::new(8, 2).init(device),
        }
    }

    /// Per-sample losses `[B]` of token ids `[B, T]` and labels `[B]`.
    fn losses(&self, ids: Tensor<B, 2, Int>, labels: Tensor<B, 1, Int>) -> Tensor<B, 1> {
        let b = ids.dims()[0];
        let h = self.embed.forward(ids).mean_dim(1).reshape([b, 8]); // mean over each text's tokens
        let logits = self.head.forward(self.norm.forward(h));
        log_softmax(logits, 1)
            .gather(1, labels.reshape([b, 1]))
            .reshape([b])
            .neg()
    }
}

/// Example `i` of a data set: tokens and a label (whether token 3 occurs).
fn example(i: usize, public: bool) -> (Vec<i64>, i64) {
    let offset = if public { 7 } else { 1 };
    let ids: Vec<i64> = (0..T)
        .map(|t| ((i * 5 + t * 3 + offset) % VOCAB) as i64)
        .collect();
    let label = ids.contains(&3) as i64;
    (ids, label)
}

fn tensors(indices: &[usize], public: bool) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
    let dev = Default::default();
    let (ids, labels): (Vec<Vec<i64>>, Vec<i64>) =
        indices.iter().map(|&i| example(i, public)).unzip();
    let ids = TensorData::new(ids.concat(), [indices.len(), T]);
    let labels = TensorData::new(labels, [indices.len()]);
    (
        Tensor::from_data(ids, &dev),
        Tensor::from_data(labels, &dev),
    )
}

fn setup() -> PrivateSetup {
    PrivateSetup {
        per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
        privacy: PrivacyState::with_noise_multiplier(1.0, 0.25, 1e-5, AccountantKind::Rdp).unwrap(),
        dataset_size: N,
        physical_batch_size: 8,
        noise: NoiseSource::FixedSeedForExperiments(3),
    }
}

#[test]
fn public_pre_training_then_dp_bitfit_and_dp_full_on_one_backend() -> Result<(), DpError> {
    // ANCHOR: public_pretraining
    // Public pre-training: an ordinary loop on the same backend.
    let mut model = TextClassifier::<B>::new(&Default::default());
    let mut adam = AdamConfig::new().init();
    for step in 0..4 {
        let rows: Vec<usize> = (step * 8..step * 8 + 8).collect();
        let (ids, labels) = tensors(&rows, true);
        let loss = model.losses(ids, labels).mean();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = adam.step(1e-2, model, grads);
    }
    // ANCHOR_END: public_pretraining

    // Without a word from the user, the parameters carry the pre-training's data: refused up
    // front, naming the parameter, the cause and the fix.
    let err = PrivateTrainer::new(model.clone(), AdamConfig::new().init(), setup())?
        .step(1e-2, |m, idx| {
            let (ids, labels) = tensors(idx, false);
            m.losses(ids, labels)
        })
        .unwrap_err();
    assert!(matches!(err, DpError::ParameterFromBatch { .. }), "{err}");
    assert!(err.to_string().contains("declare_public"), "{err}");

    // ANCHOR: private_fine_tuning
    // The pre-training data was public: say so, then fine-tune privately.
    let model = declare_public(model);
    for policy in [FreezePolicy::BiasOnly, FreezePolicy::None] {
        let (start, _report) = freeze(model.clone(), &policy)?;
        let mut trainer = PrivateTrainer::new(start, AdamConfig::new().init(), setup())?;
        for _ in 0..3 {
            trainer.step(1e-2, |m, indices| {
                let (ids, labels) = tensors(indices, false);
                m.losses(ids, labels)
            })?;
        }
        assert!(trainer.epsilon()?.epsilon > 0.0);
    }
    // ANCHOR_END: private_fine_tuning
    Ok(())
}
