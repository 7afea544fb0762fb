//! The program of the book's "Making any burn model private" (`book/src/any-model.md` includes its
//! anchors): a text classifier of ordinary burn modules (Embedding → mean over each sample's
//! tokens → LayerNorm → Linear) trained with DP through the library's public API only — an
//! integration test sees nothing else — then moved to the plain backend for inference.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn_dp::Flex;

// ANCHOR: model
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};

/// An ordinary burn model: nothing in it knows about DP.
#[derive(Module, Debug)]
pub struct TextClassifier<B: Backend> {
    embed: Embedding<B>,
    norm: LayerNorm<B>,
    head: Linear<B>,
}

impl<B: Backend> TextClassifier<B> {
    pub fn new(vocab: usize, width: usize, classes: usize, device: &B::Device) -> Self {
        TextClassifier {
            embed: EmbeddingConfig::new(vocab, width).init(device),
            norm: LayerNormConfig::new(width).init(device),
            head: LinearConfig::new(width, classes).init(device),
        }
    }

    /// Logits `[B, classes]` of token ids `[B, T]`. The mean is over each sample's own tokens
    /// (dimension 1), never over the batch (dimension 0).
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let h = self.embed.forward(ids).mean_dim(1); // [B, 1, width]
        let [b, _, width] = h.dims();
        self.head.forward(self.norm.forward(h.reshape([b, width])))
    }
}
// ANCHOR_END: model

/// A toy corpus: `n` sentences (a fixed stream per `seed`) of `LEN` token ids; class 1 draws its tokens from the upper half
/// of the vocabulary more often than class 0.
pub struct Corpus {
    ids: Vec<i64>,
    labels: Vec<i64>,
}

const VOCAB: usize = 16;
const LEN: usize = 6;

impl Corpus {
    pub fn new(n: usize, seed: u64) -> Corpus {
        let mut state = 0x2545_F491_4F6C_DD1Du64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let labels: Vec<i64> = (0..n).map(|i| (i % 2) as i64).collect();
        let ids = labels
            .iter()
            .flat_map(|&y| {
                let draws: Vec<i64> = (0..LEN)
                    .map(|_| {
                        let half = if next() % 4 == 0 { 1 - y } else { y };
                        half * (VOCAB as i64 / 2) + (next() % (VOCAB as u64 / 2)) as i64
                    })
                    .collect();
                draws
            })
            .collect();
        Corpus { ids, labels }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// The token ids `[P, LEN]` and labels `[P]` of the examples `indices` (host data: int
    /// tensors need no mark).
    pub fn batch<B: Backend>(
        &self,
        indices: &[usize],
        device: &B::Device,
    ) -> (Tensor<B, 2, Int>, Tensor<B, 1, Int>) {
        let ids = indices
            .iter()
            .flat_map(|&i| self.ids[i * LEN..(i + 1) * LEN].iter().copied())
            .collect();
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        (
            Tensor::from_data(TensorData::new(ids, [indices.len(), LEN]), device),
            Tensor::from_data(TensorData::new(labels, [indices.len()]), device),
        )
    }
}

// ANCHOR: train
use burn::optim::AdamConfig;
use burn_dp::{
    into_plain_model, AccountantKind, ClippingFn, DpAutodiff, DpError, NoiseSource,
    PerSampleConfig, PerSampleCrossEntropyConfig, PrivacyState, PrivateSetup, PrivateTrainer,
    Schedule,
};

/// DP training at (ε, δ) = (`epsilon`, 1e-5); returns the model on the plain backend and the ε
/// spent.
pub fn train_private(
    corpus: &Corpus,
    epsilon: f64,
) -> Result<(TextClassifier<Flex>, f64), DpError> {
    type B = DpAutodiff<Flex>; // instead of Autodiff<Flex>
    let device = Default::default();
    // 4 expected passes over the data in logical batches of 64: q = 64 / N, ⌈4N / 64⌉ steps,
    // σ calibrated so that they spend exactly the target ε.
    let schedule = Schedule::from_epochs(corpus.len(), 64, 4)?;
    let privacy = PrivacyState::for_target_epsilon(epsilon, 1e-5, schedule, AccountantKind::Rdp)?;
    let loss = PerSampleCrossEntropyConfig::new()
        .with_smoothing(Some(0.1))
        .init()?;
    let mut trainer = PrivateTrainer::new(
        TextClassifier::<B>::new(VOCAB, 8, 2, &device),
        AdamConfig::new().init(),
        PrivateSetup {
            per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
            privacy,
            dataset_size: corpus.len(),
            physical_batch_size: 64, // rows per forward: memory, not privacy
            noise: NoiseSource::Os,
        },
    )?;
    for _ in 0..schedule.steps {
        trainer.step(2e-2, |model, indices| {
            let (ids, labels) = corpus.batch::<B>(indices, &device);
            // One loss per sample, [P]: the trainer masks the padding rows, clips, adds noise.
            loss.forward(model.forward(ids), labels)
                .expect("the corpus gives one label per sentence")
        })?;
    }
    let spent = trainer.epsilon()?.epsilon;
    // The same module on Flex, for inference or export without the DP backend.
    let plain = into_plain_model(
        trainer.into_model(),
        TextClassifier::<Flex>::new(VOCAB, 8, 2, &device),
        &device,
    )?;
    Ok((plain, spent))
}
// ANCHOR_END: train

fn accuracy(model: &TextClassifier<Flex>, corpus: &Corpus) -> f32 {
    let indices: Vec<usize> = (0..corpus.len()).collect();
    let (ids, labels) = corpus.batch::<Flex>(&indices, &Default::default());
    let pred = model.forward(ids).argmax(1).reshape([corpus.len()]);
    let right = pred.equal(labels).int().sum().into_scalar().elem::<i64>();
    right as f32 / corpus.len() as f32
}

/// The book's program runs, spends at most its ε, and learns the toy task (a majority-class model
/// is at 0.5; the noise is drawn from the OS, so the bound is loose).
#[test]
fn book_text_classifier_trains_privately() {
    let (model, epsilon) = train_private(&Corpus::new(1024, 1), 8.0).expect("private training");
    assert!(epsilon <= 8.0, "{epsilon}");
    let accuracy = accuracy(&model, &Corpus::new(512, 2));
    assert!(accuracy > 0.7, "accuracy {accuracy}");
}
