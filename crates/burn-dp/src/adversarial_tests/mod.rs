//! The catalogue of adversarial forwards: each pattern that mixes samples of the batch (or writes
//! the batch into module state) must be a typed error, and each look-alike that does not mix must
//! train. A new op with a tag rule gets a row here.
//!
//! Every forward is a small model on `DpAutodiff<Inner>` (run on Flex and on NdArray, `tests_on/`): a marked input `x [B, 4]`, or token
//! ids `[B, T]` entering an embedding, one loss per sample `[B]`, then the engine's backward.

use burn::module::{Module, RunningState};
use burn::nn::{
    BatchNorm, BatchNormConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{s, Bool, Int, Tensor, TensorData};

use crate::*;

mod in_the_loop;

use super::Inner;
type Dp = DpAutodiff<Inner>;

#[derive(Module, Debug)]
struct Net<B: Backend> {
    fc: Linear<B>,
}

fn net() -> Net<Dp> {
    Net {
        fc: LinearConfig::new(4, 3).init(&Default::default()),
    }
}

/// A marked input `[b, 4]` with distinct rows.
fn x(b: usize) -> Tensor<Dp, 2> {
    let data: Vec<f32> = (0..b * 4).map(|i| (i as f32 * 0.37).sin()).collect();
    batch(Tensor::from_data(
        TensorData::new(data, [b, 4]),
        &Default::default(),
    ))
}

fn int_data<const D: usize>(values: Vec<i64>, shape: [usize; D]) -> Tensor<Dp, D, Int> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

fn float_data<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> Tensor<Dp, D> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

/// One backward through the engine.
fn train<M: burn::module::AutodiffModule<Dp>>(
    model: &M,
    losses: Tensor<Dp, 1>,
) -> Result<(), DpError> {
    let config = PerSampleConfig::new(ClippingFn::AUTOMATIC);
    clipped_backward(&config, model, losses).map(|_| ())
}

/// Per-sample losses `[B]` of a `[B, 3]` output.
fn per_row(h: Tensor<Dp, 2>) -> Tensor<Dp, 1> {
    let b = h.dims()[0];
    h.powi_scalar(2).sum_dim(1).reshape([b])
}

#[track_caller]
fn assert_mixes(r: Result<(), DpError>) {
    match r {
        Err(DpError::MixedSamples { .. } | DpError::LossMixesSamples { .. }) => {}
        other => panic!("expected MixedSamples or LossMixesSamples, got {other:?}"),
    }
}

#[track_caller]
fn assert_unmarked_batch(r: Result<(), DpError>) {
    match r {
        Err(DpError::LossUsesUnmarkedBatch { .. }) => {}
        other => panic!("expected LossUsesUnmarkedBatch, got {other:?}"),
    }
}

// ---------------------------------------------------------------- int, bool, masks (issue 11.1)

#[test]
fn batch_mean_through_an_int_cast_mixes() {
    let m = net();
    let h = m.fc.forward(x(4));
    let mean = h.clone().int().float().mean_dim(0);
    assert_mixes(train(&m, per_row(h - mean)));
}

#[test]
fn batch_mean_mixes_with_one_sample() {
    // B = 1: nothing can be mixed numerically, but a reduction over the batch is still rejected
    // (it is what writes private statistics into BatchNorm's buffers).
    let m = net();
    let h = m.fc.forward(x(1));
    let mean = h.clone().mean_dim(0);
    assert_mixes(train(&m, per_row(h - mean)));
}

#[test]
fn mask_computed_across_the_batch_mixes() {
    let m = net();
    let h = m.fc.forward(x(4));
    let mask: Tensor<Dp, 2, Bool> = h.clone().mean_dim(0).greater_elem(0.0);
    assert_mixes(train(&m, per_row(h.mask_fill(mask.expand([4, 3]), 0.0))));
}

#[test]
fn mask_where_with_a_batch_dependent_mask_mixes() {
    let m = net();
    let h = m.fc.forward(x(4));
    let mask = h.clone().sum_dim(0).lower_elem(0.0).expand([4, 3]);
    let other = h.clone() * 2.0;
    assert_mixes(train(&m, per_row(h.mask_where(mask, other))));
}

#[test]
fn bool_cast_of_a_batch_statistic_mixes() {
    let m = net();
    let h = m.fc.forward(x(4));
    let above = h
        .clone()
        .greater(h.clone().max_dim(0).expand([4, 3]))
        .float();
    assert_mixes(train(&m, per_row(h * above)));
}

// ---------------------------------------------------------------- index ops (issue 11.2)

#[test]
fn gather_nd_with_a_permutation_mixes() {
    let m = net();
    let h = m.fc.forward(x(4));
    let perm = int_data(vec![1, 0, 3, 2], [4, 1]);
    let permuted: Tensor<Dp, 2> = h.clone().gather_nd(perm);
    assert_mixes(train(&m, per_row(h + permuted)));
}

#[test]
fn cumsum_along_the_batch_through_int_mixes() {
    let m = net();
    let h = m.fc.forward(x(4));
    let running = h.clone().int().cumsum(0).float();
    assert_mixes(train(&m, per_row(h + running)));
}

#[test]
fn indices_sorted_along_the_batch_mix() {
    let m = net();
    let h = m.fc.forward(x(4));
    // gather along dimension 1 keeps rows, but its indices come from a sort along 0
    let idx = h.clone().argsort(0).clamp_max(2);
    assert_mixes(train(&m, per_row(h.gather(1, idx))));
}

#[test]
fn mask_flipped_along_the_batch_mixes() {
    let m = net();
    let h = m.fc.forward(x(4));
    let mask = h.clone().greater_elem(0.0).flip([0]);
    assert_mixes(train(&m, per_row(h.mask_fill(mask, 0.0))));
}

#[derive(Module, Debug)]
struct Lm<B: Backend> {
    emb: Embedding<B>,
    head: Linear<B>,
}

fn lm() -> Lm<Dp> {
    let dev = Default::default();
    Lm {
        emb: EmbeddingConfig::new(6, 4).init(&dev),
        head: LinearConfig::new(4, 6).init(&dev),
    }
}

const B: usize = 3;
const T: usize = 4;

fn ids() -> Tensor<Dp, 2, Int> {
    int_data(
        (0..(B * T) as i64).map(|i| (i * 5 + 1) % 6).collect(),
        [B, T],
    )
}

/// Token losses `[B, T]` of next-token targets.
fn token_losses(m: &Lm<Dp>, ids: Tensor<Dp, 2, Int>) -> Tensor<Dp, 2> {
    let targets = int_data(
        (0..(B * T) as i64).map(|i| (i * 7 + 2) % 6).collect(),
        [B, T, 1],
    );
    let logits = m.head.forward(m.emb.forward(ids));
    log_softmax(logits, 2)
        .gather(2, targets)
        .reshape([B, T])
        .neg()
}

/// A mask of real tokens: lengths 4, 2, 3.
fn mask_values() -> Vec<f32> {
    vec![1., 1., 1., 1., 1., 1., 0., 0., 1., 1., 1., 0.]
}

#[test]
fn token_ids_rolled_along_the_batch_mix() {
    let m = lm();
    let rolled = ids().roll_dim(1, 0);
    let losses = token_losses(&m, rolled).sum_dim(1).reshape([B]);
    assert_unmarked_batch(train(&m, losses));
}

#[test]
fn token_ids_concatenated_along_the_batch_then_sliced_mix() {
    let m = lm();
    let both = Tensor::cat(vec![ids(), ids().flip([1])], 0);
    let second = both.slice(s![B..2 * B]);
    let losses = token_losses(&m, second).sum_dim(1).reshape([B]);
    assert_unmarked_batch(train(&m, losses));
}

// ---------------------------------------------------------------- unmarked batch data (11.3)

#[test]
fn token_mean_over_the_batch_is_rejected_with_the_per_sample_form() {
    let m = lm();
    let mask = float_data(mask_values(), [B, T]);
    let summed = (token_losses(&m, ids()) * mask.clone())
        .sum_dim(1)
        .reshape([B]);
    // The usual LM loss: every sample divided by the number of tokens in the whole batch.
    let losses = summed / mask.sum();
    let err = train(&m, losses).unwrap_err();
    assert!(matches!(
        err,
        DpError::LossUsesUnmarkedBatch { rows: B, .. }
    ));
    let msg = err.to_string();
    assert!(msg.contains("mask.sum_dim(1)"), "{msg}");
}

#[test]
fn token_mean_with_an_int_mask_over_the_batch_is_rejected() {
    let m = lm();
    let mask = int_data(mask_values().iter().map(|&v| v as i64).collect(), [B, T]);
    let summed = (token_losses(&m, ids()) * mask.clone().float())
        .sum_dim(1)
        .reshape([B]);
    assert_unmarked_batch(train(&m, summed / mask.sum().float()));
}

#[test]
fn labels_counted_over_the_batch_are_rejected() {
    // Class-balanced weights from the batch's own label counts.
    let m = net();
    let labels = int_data(vec![0, 1, 1, 2], [4]);
    let counts = labels.clone().equal_elem(1).int().sum().float();
    let losses = per_row(m.fc.forward(x(4))) / counts;
    assert_unmarked_batch(train(&m, losses));
}

#[test]
fn token_mean_per_sample_trains() {
    let m = lm();
    let mask = float_data(mask_values(), [B, T]);
    let summed = (token_losses(&m, ids()) * mask.clone()).sum_dim(1);
    let losses = (summed / mask.sum_dim(1)).reshape([B]);
    train(&m, losses).unwrap();
}

#[test]
fn token_mean_per_sample_with_an_int_mask_and_labels_trains() {
    let m = lm();
    let mask = int_data(mask_values().iter().map(|&v| v as i64).collect(), [B, T]);
    let summed = (token_losses(&m, ids()) * mask.clone().float()).sum_dim(1);
    let losses = (summed / mask.sum_dim(1).float()).reshape([B]);
    train(&m, losses).unwrap();
}

// ---------------------------------------------------------------- BatchNorm, state (11.5)

#[derive(Module, Debug)]
struct BnNet<B: Backend> {
    fc: Linear<B>,
    bn: BatchNorm<B>,
}

fn bn_net() -> BnNet<Dp> {
    let dev = Default::default();
    BnNet {
        fc: LinearConfig::new(4, 3).init(&dev),
        bn: BatchNormConfig::new(3).init(&dev),
    }
}

#[track_caller]
fn assert_batch_norm_rejected(r: Result<(), DpError>) {
    match r {
        Err(
            DpError::MixedSamples { .. }
            | DpError::LossMixesSamples { .. }
            | DpError::StateFromBatch { .. },
        ) => {}
        other => panic!("expected BatchNorm to be rejected, got {other:?}"),
    }
}

#[test]
fn batch_norm_in_training_mode_is_rejected() {
    let m = bn_net();
    let h = m.bn.forward(m.fc.forward(x(4)));
    assert_batch_norm_rejected(train(&m, per_row(h)));
}

#[test]
fn batch_norm_in_training_mode_is_rejected_with_one_sample() {
    let m = bn_net();
    let h = m.bn.forward(m.fc.forward(x(1)));
    assert_batch_norm_rejected(train(&m, per_row(h)));
}

/// Records the batch mean of its input in a buffer and returns the input unchanged: the loss and
/// the gradients are per sample, the buffer is not.
#[derive(Module, Debug)]
struct Tracker<B: Backend> {
    fc: Linear<B>,
    seen: RunningState<Tensor<B, 1>>,
}

#[test]
fn state_written_from_the_batch_is_rejected_even_when_the_loss_is_per_sample() {
    let dev = Default::default();
    let m = Tracker::<Dp> {
        fc: LinearConfig::new(4, 3).init(&dev),
        seen: RunningState::new(Tensor::zeros([3], &dev)),
    };
    let h = m.fc.forward(x(1));
    m.seen.update(h.clone().mean_dim(0).reshape([3]).detach());
    match train(&m, per_row(h)) {
        Err(DpError::StateFromBatch { param, .. }) => assert_eq!(param, "seen"),
        other => panic!("expected StateFromBatch, got {other:?}"),
    }
}

// ---------------------------------------------------------------- attention across the batch

#[test]
fn attention_across_the_batch_mixes() {
    let m = net();
    let h = m.fc.forward(x(4));
    let scores = softmax(h.clone().matmul(h.clone().transpose()), 1); // [B, B]
    assert_mixes(train(&m, per_row(scores.matmul(h))));
}

#[test]
fn attention_over_positions_of_each_sample_trains() {
    let m = net();
    let xs = batch(float_data(
        (0..2 * 5 * 4).map(|i| (i as f32 * 0.21).cos()).collect(),
        [2, 5, 4],
    ));
    let h = m.fc.forward(xs); // [B, T, 3]
    let scores = softmax(h.clone().matmul(h.clone().swap_dims(1, 2)), 2); // [B, T, T]
    let out = scores.matmul(h); // [B, T, 3]
    train(&m, out.powi_scalar(2).sum_dim(2).sum_dim(1).reshape([2])).unwrap();
}

// ---------------------------------------------------------------- look-alikes that train

#[test]
fn per_row_ops_train() {
    let m = net();
    let h = m.fc.forward(x(4));
    let row_mean = h.clone().mean_dim(1); // [B, 1]
    let through_int = h.clone().int().float(); // cast, row by row
    let mask = h.clone().greater_elem(0.0); // per-row mask
    let h = (h - row_mean + through_int).mask_fill(mask, 0.0);
    train(&m, per_row(h)).unwrap();
}

#[test]
fn the_same_ops_along_dimension_one_train() {
    let m = net();
    let h = m.fc.forward(x(4));
    let idx = h.clone().argsort(1);
    let sorted = h.clone().gather(1, idx);
    let scanned = h.clone().cumsum(1) + h.clone().int().cumsum(1).float();
    let flipped = h.clone().flip([1]) + h.clone().roll_dim(1, 1);
    let mask = h.clone().lower_elem(0.0).flip([1]);
    let h = (sorted + scanned + flipped + h.clone().sort(1)).mask_fill(mask, 0.0);
    train(&m, per_row(h)).unwrap();
}

#[test]
fn labels_and_per_sample_weights_from_the_host_train() {
    let m = net();
    let labels = int_data(vec![0, 2, 1, 1], [4]);
    let weights = float_data(vec![1.0, 0.5, 0.0, 2.0], [4]);
    let log_p = log_softmax(m.fc.forward(x(4)), 1);
    let nll = log_p.gather(1, labels.reshape([4, 1])).reshape([4]).neg();
    train(&m, nll * weights).unwrap();
}

#[test]
fn a_loaded_layer_norm_as_wide_as_the_batch_trains() {
    // Parameters loaded from the host are unmarked data with as many rows as the batch here;
    // broadcasting them to the batch is not combining rows.
    #[derive(Module, Debug)]
    struct Normed<B: Backend> {
        fc: Linear<B>,
        norm: LayerNorm<B>,
    }
    let dev = Default::default();
    let mut m = Normed::<Dp> {
        fc: LinearConfig::new(4, 3).init(&dev),
        norm: LayerNormConfig::new(3).init(&dev),
    };
    m.norm.gamma = burn::module::Param::from_tensor(float_data(vec![1.0, 0.5, 2.0], [3]));
    let h = m.norm.forward(m.fc.forward(x(3)));
    train(&m, per_row(h)).unwrap();
}

#[test]
fn one_sample_without_batch_ops_trains() {
    let m = net();
    let h = m.fc.forward(x(1));
    train(&m, per_row(h)).unwrap();
}

// ---------------------------------------------------------------- the book's table

/// The book's table of refusals (`book/src/fail-closed.md`) names only errors the code raises,
/// and every refusal of a privacy path is in it.
#[test]
fn the_books_table_of_refusals_matches_the_errors() {
    let book = include_str!("../../../../book/src/fail-closed.md");
    let errors = include_str!("../error.rs");
    let distributed = include_str!("../../../burn-dp-distributed/src/error.rs");
    let variants = |src: &str| -> Vec<String> {
        src.lines()
            .filter_map(|l| l.strip_prefix("    "))
            .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
            .filter_map(|l| l.split([' ', '{', '(', ',']).next().map(str::to_string))
            .collect()
    };
    let known: Vec<String> = variants(errors)
        .into_iter()
        .chain(variants(distributed))
        .collect();
    let table: Vec<&str> = book
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .collect();
    assert!(table.len() > 10, "the table was not found");
    for row in &table {
        let error_column = row.split(" | ").nth(1).unwrap_or_default();
        for name in error_column.split('`').skip(1).step_by(2) {
            assert!(
                known.iter().any(|k| k == name),
                "the book names `{name}`, which is no error variant"
            );
        }
    }
    for refusal in [
        "MixedSamples",
        "LossMixesSamples",
        "LossUsesUnmarkedBatch",
        "UnmarkedBatch",
        "StateFromBatch",
        "HostRead",
        "ParameterFromBatch",
        "UnmaskedBatch",
        "NoPerSampleRule",
        "ResumeAfterTraining",
        "OsSeededCheckpoint",
        "LogicalBatchOpen",
        "StepOutOfOrder",
        "SettingsDiffer",
        "Ranks",
    ] {
        assert!(
            known.iter().any(|k| k == refusal),
            "{refusal} is no variant"
        );
        assert!(
            table.iter().any(|r| r.contains(&format!("`{refusal}`"))),
            "the book's table does not list {refusal}"
        );
    }
}
