//! DP fine-tuning of GPT-2 on table-to-text generation (the E2E task: a meaning representation
//! `name[The Eagle], eatType[coffee shop], ...` → a sentence), full or DP-BiTFiT, with greedy
//! decoding and corpus BLEU-4 on a held-out split. `run` is the whole example.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::AdamWConfig;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn_dp::{batch, freeze, DpAutodiff, PerSample, PrivateSetup};
use burn_dp_examples_common::{self as common, BackendKind, Curve, Error, PlainTraining};
use burn_dp_models::{Gpt2, Gpt2Config, LoadOptions, PretrainedModel};
use clap::{Parser, ValueEnum};

pub mod bleu;
pub mod corpus;

/// The default learning rates (AdamW) of the fine-tuning, the best private settings of the sweep.
pub const DEFAULT_LR: common::DefaultLearningRates = common::DefaultLearningRates {
    full: 5e-3,
    bias_only: 1e-1,
};

/// Command-line arguments.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "table-to-text",
    about = "DP fine-tuning of GPT-2 on E2E-style table-to-text with burn-dp"
)]
pub struct Args {
    /// Privacy, clipping, freezing, backend and run-control flags shared by the examples.
    #[command(flatten)]
    pub train: common::PrivateTrainingArgs,
    /// Private E2E data: a CSV file with columns `mr`, `ref` (split 80/20 by meaning
    /// representation), or the E2E folder (`trainset.csv` for training, `devset.csv` held out).
    /// Default: the private part of the bundled generated corpus (`src/corpus.rs`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Architecture (`tiny`: 2 layers, width 64, a vocabulary cut down to the tokens of the public
    /// vocabulary text `data/public_vocabulary.txt` and of the public part of the corpus).
    #[arg(long, value_enum, default_value_t = Size::Tiny)]
    pub model: Size,
    /// Pretrained GPT-2 weights: `.onnx` (PyTorch export) or `.safetensors` (HF). Requires a
    /// standard `--model` (small, medium, large).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Tokens per training sequence (prompt + sentence): every sequence is padded or cut to
    /// exactly this length, a fixed setting (a length taken from the data would publish the
    /// longest private record's length).
    #[arg(long, default_value_t = 64)]
    pub max_len: usize,
    /// Maximum generated tokens per sentence.
    #[arg(long, default_value_t = 40)]
    pub max_new_tokens: usize,
    /// Epochs of private fine-tuning.
    #[arg(long, default_value_t = 16)]
    pub epochs: u64,
    /// Expected logical batch size.
    #[arg(long, default_value_t = 512)]
    pub batch_size: u64,
    /// Rows of the generated public part (pre-training and vocabulary).
    #[arg(long, default_value_t = 3000)]
    pub public_rows: usize,
    /// Rows of the generated private training part (without `--data`).
    #[arg(long, default_value_t = 2000)]
    pub private_rows: usize,
    /// Held-out private meaning representations generated for the test (without `--data`).
    #[arg(long, default_value_t = 100)]
    pub test_mrs: usize,
    /// Epochs of non-private pre-training of the tiny model on the public part (0: none).
    #[arg(long, default_value_t = 8)]
    pub pretrain_epochs: u64,
    /// Learning rate of the pre-training (AdamW, batches of 32).
    #[arg(long, default_value_t = 3e-3)]
    pub pretrain_lr: f64,
    /// The pre-trained weights (safetensors): read when the file exists, else written after
    /// pre-training. Default: a file named after the settings under
    /// `target/examples/table-to-text/pretrained/`.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// Fine-tune WITHOUT privacy (plain AdamW on the private part: the baseline of a sweep).
    #[arg(long)]
    pub non_private: bool,
    /// The results sweep (`--sweep` and its grid).
    #[command(flatten)]
    pub results: common::SweepArgs,
    /// Data-parallel fine-tuning (`--peers`/`--devices`, or MPI's rank and world under `mpirun`).
    #[command(flatten)]
    pub distributed: common::DistributedArgs,
    /// Samples per forward/backward pass.
    #[arg(long, default_value_t = 64)]
    pub physical_batch_size: usize,
    /// Output folder (metrics.json, loss.svg, epsilon.svg, generations.tsv).
    #[arg(long, default_value = "target/examples/table-to-text")]
    pub out: PathBuf,
    /// Generate for at most this many held-out meaning representations.
    #[arg(long)]
    pub max_eval: Option<usize>,
}

/// `--model`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Size {
    /// 2 layers, 4 heads, width 64, random initialisation, compact vocabulary (CPU).
    Tiny,
    /// GPT-2 small (124M).
    Small,
    /// GPT-2 medium (355M).
    Medium,
    /// GPT-2 large (774M).
    Large,
}

/// One E2E row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Meaning representation.
    pub mr: String,
    /// Reference sentence.
    pub reference: String,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Summary {
    /// ε spent.
    pub epsilon: f64,
    /// Corpus BLEU-4 (0..100) on the held-out split.
    pub bleu: f64,
    /// Steps taken.
    pub steps: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Output files.
    pub outputs: common::Outputs,
    /// Everything in `metrics.json` but the curves.
    pub metrics: serde_json::Value,
    /// BLEU of the public pre-trained model before fine-tuning (`None`: none).
    pub pretrained_bleu: Option<f64>,
}

/// Public text of the E2E domain (slot names and values, template sentences), fixed before any
/// private data is seen: the tiny model's vocabulary is built from it, never from training data.
pub const PUBLIC_VOCABULARY: &str = include_str!("../data/public_vocabulary.txt");
/// Held-out meaning representations whose loss is published as the training curve.
pub const CURVE_HELD_OUT: usize = 32;
/// GPT-2's `<|endoftext|>`.
pub const EOS: u32 = 50256;
/// The compact vocabulary's unknown token (outside GPT-2's id range; decodes to nothing).
const UNK: u32 = u32::MAX;

/// Read E2E CSV text (header with `mr` and `ref`, case-insensitive).
pub fn read_csv(text: &str) -> Result<Vec<Row>, Error> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim().eq_ignore_ascii_case(name))
    };
    let (Some(mr), Some(rf)) = (col("mr"), col("ref")) else {
        return Err(format!(
            "E2E CSV needs columns `mr` and `ref`, found {:?}",
            headers.iter().collect::<Vec<_>>()
        )
        .into());
    };
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record?;
        rows.push(Row {
            mr: record[mr].trim().to_string(),
            reference: record[rf].trim().to_string(),
        });
    }
    Ok(rows)
}

fn read_file(path: &Path) -> Result<Vec<Row>, Error> {
    read_csv(
        &std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    )
}

/// A held-out meaning representation and its references.
pub type HeldOut = (String, Vec<String>);

/// Private train rows and held-out `(mr, references)`: the private part of the generated corpus
/// (`private` rows, `test` held-out meaning representations) without `data`; a folder gives
/// `trainset.csv` / `devset.csv`, a file is split by meaning representation, every fifth held out.
pub fn load(
    data: Option<&Path>,
    private: usize,
    test: usize,
) -> Result<(Vec<Row>, Vec<HeldOut>), Error> {
    let group = |rows: Vec<Row>| {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in rows {
            map.entry(r.mr).or_default().push(r.reference);
        }
        map
    };
    match data {
        Some(dir) if dir.is_dir() => {
            let train = read_file(&dir.join("trainset.csv"))?;
            let dev = group(read_file(&dir.join("devset.csv"))?);
            Ok((train, dev.into_iter().collect()))
        }
        None => {
            let c = corpus::generate(0, private, test);
            Ok((c.private_train, c.test))
        }
        Some(file) => {
            let rows = read_file(file)?;
            let (mut train, mut test) = (Vec::new(), Vec::new());
            for (i, (mr, refs)) in group(rows).into_iter().enumerate() {
                if i % 5 == 4 {
                    test.push((mr, refs));
                } else {
                    train.extend(refs.into_iter().map(|reference| Row {
                        mr: mr.clone(),
                        reference,
                    }));
                }
            }
            Ok((train, test))
        }
    }
}

/// GPT-2's byte-pair encoding (tiktoken's `r50k_base`, bundled in the crate: no download), with,
/// for the tiny model, a vocabulary cut down to the tokens of a public text.
pub struct Tokenizer {
    bpe: tiktoken_rs::CoreBPE,
    /// BPE id → model id (compact vocabulary), or `None` for the full GPT-2 vocabulary.
    compact: Option<HashMap<u32, u32>>,
    /// Model id → BPE id.
    inverse: Vec<u32>,
}

impl Tokenizer {
    /// The full GPT-2 vocabulary.
    pub fn gpt2() -> Result<Self, Error> {
        Ok(Self {
            bpe: tiktoken_rs::r50k_base().map_err(|e| e.to_string())?,
            compact: None,
            inverse: Vec::new(),
        })
    }

    /// GPT-2's encoding with a vocabulary of `<|endoftext|>` (id 0), an unknown token (id 1,
    /// decoded as nothing) and the tokens of `texts`; any other token maps to the unknown one.
    ///
    /// `texts` must be public: the vocabulary (and so the model's embedding table) shows which
    /// tokens occur in them.
    pub fn compact<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Self, Error> {
        let mut t = Self::gpt2()?;
        let mut map = HashMap::from([(EOS, 0u32)]);
        let mut inverse = vec![EOS, UNK];
        for text in texts {
            for id in t.bpe.encode_ordinary(text) {
                map.entry(id).or_insert_with(|| {
                    inverse.push(id);
                    inverse.len() as u32 - 1
                });
            }
        }
        t.compact = Some(map);
        t.inverse = inverse;
        Ok(t)
    }

    /// The tiny model's vocabulary: the tokens of [`PUBLIC_VOCABULARY`] (each line as it is and
    /// after a space, as sentences and prompts tokenise) and of the public rows (prompt and
    /// sentence as [`sequences`] tokenises them), never of the private data.
    pub fn public_compact(public: &[Row]) -> Result<Self, Error> {
        let lines: Vec<&str> = PUBLIC_VOCABULARY
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let mut texts: Vec<String> = lines.iter().map(|l| format!(" {l}")).collect();
        texts.extend(lines.iter().map(|l| l.to_string()));
        for r in public {
            texts.push(prompt(&r.mr));
            texts.push(format!(" {}", r.reference));
        }
        Self::compact(texts.iter().map(String::as_str))
    }

    /// Vocabulary size of the model.
    pub fn vocab_size(&self) -> usize {
        if self.compact.is_some() {
            self.inverse.len()
        } else {
            50257
        }
    }

    /// The end-of-text id of the model.
    pub fn eos(&self) -> u32 {
        if self.compact.is_some() {
            0
        } else {
            EOS
        }
    }

    /// Model ids of `text`.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let ids = self.bpe.encode_ordinary(text);
        match &self.compact {
            Some(map) => ids
                .iter()
                .map(|id| map.get(id).copied().unwrap_or(1))
                .collect(),
            None => ids,
        }
    }

    /// Text of model ids.
    pub fn decode(&self, ids: &[u32]) -> String {
        let bpe: Vec<u32> = if self.compact.is_some() {
            ids.iter()
                .filter_map(|&i| self.inverse.get(i as usize).copied())
                .filter(|&i| i != UNK)
                .collect()
        } else {
            ids.to_vec()
        };
        self.bpe.decode(bpe).unwrap_or_default()
    }
}

/// The prompt of a meaning representation: the sentence follows ` =`.
pub fn prompt(mr: &str) -> String {
    format!("{mr} =")
}

/// Training sequences: `[N, T]` token ids (padded with end-of-text) and a loss mask `[N, T-1]`
/// that is 1 where the next token belongs to the sentence (or its closing end-of-text).
pub struct Sequences {
    /// Length T.
    pub len: usize,
    /// `N·T` ids.
    pub ids: Vec<i64>,
    /// `N·(T-1)` mask.
    pub mask: Vec<f32>,
}

/// Tokenise rows into sequences of exactly `len` tokens (cut, or padded with end-of-text). The
/// length is a setting, never read from the rows.
pub fn sequences(rows: &[Row], tok: &Tokenizer, len: usize) -> Sequences {
    let len = len.max(2);
    let seqs: Vec<(Vec<u32>, usize)> = rows
        .iter()
        .map(|r| {
            let mut ids = tok.encode(&prompt(&r.mr));
            let p = ids.len();
            ids.extend(tok.encode(&format!(" {}", r.reference)));
            ids.push(tok.eos());
            ids.truncate(len);
            (ids, p)
        })
        .collect();
    let mut out = Sequences {
        len,
        ids: Vec::new(),
        mask: Vec::new(),
    };
    for (s, p) in &seqs {
        for t in 0..len {
            out.ids.push(*s.get(t).unwrap_or(&tok.eos()) as i64);
        }
        // Position t predicts token t+1.
        for t in 0..len - 1 {
            out.mask.push(if t + 1 >= *p && t + 1 < s.len() {
                1.0
            } else {
                0.0
            });
        }
    }
    out
}

// ANCHOR: lm_loss
/// Per-sample loss `[B]`: mean cross-entropy of the sentence tokens (the prompt and the padding
/// are masked out). Only reductions along dimension 1: the batch stays dimension 0.
pub fn sentence_loss<B: Backend>(
    model: &Gpt2<B>,
    ids: Tensor<B, 2, Int>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [b, t] = ids.dims();
    let logits = model.forward(ids.clone(), None);
    let v = logits.dims()[2];
    let logp = log_softmax(logits.slice([0..b, 0..t - 1, 0..v]), 2);
    let next = ids.slice([0..b, 1..t]).reshape([b, t - 1, 1]);
    let nll = logp.gather(2, next).reshape([b, t - 1]).neg() * mask.clone();
    let count = mask.sum_dim(1).clamp_min(1.0).reshape([b]);
    nll.sum_dim(1).reshape([b]) / count
}
// ANCHOR_END: lm_loss

/// Mean per-sequence loss of `seqs` (held-out rows: public evaluation data), in chunks.
pub fn held_out_loss<B: Backend>(
    model: &Gpt2<B>,
    seqs: &Sequences,
    chunk: usize,
    dev: &B::Device,
) -> f64 {
    let t = seqs.len;
    let n = seqs.ids.len() / t;
    if n == 0 {
        return f64::NAN;
    }
    let mut total = 0.0;
    for start in (0..n).step_by(chunk.max(1)) {
        let b = chunk.max(1).min(n - start);
        let ids = seqs.ids[start * t..(start + b) * t].to_vec();
        let mask = seqs.mask[start * (t - 1)..(start + b) * (t - 1)].to_vec();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, t]), dev);
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, t - 1]), dev);
        total += sentence_loss(model, ids, mask)
            .sum()
            .into_scalar()
            .elem::<f64>();
    }
    total / n as f64
}

// ANCHOR: greedy
/// Greedy decoding of one prompt until end-of-text, `max_new` tokens or the context length.
pub fn generate<B: Backend>(
    model: &Gpt2<B>,
    tok: &Tokenizer,
    prompt: &str,
    max_new: usize,
    n_positions: usize,
    dev: &B::Device,
) -> String {
    let mut ids: Vec<i64> = tok.encode(prompt).into_iter().map(i64::from).collect();
    let start = ids.len();
    while ids.len() < start + max_new && ids.len() < n_positions {
        let t = ids.len();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(ids.clone(), [1, t]), dev);
        let logits = model.forward(input, None);
        let v = logits.dims()[2];
        let next = logits
            .slice([0..1, t - 1..t, 0..v])
            .reshape([1, v])
            .argmax(1)
            .into_scalar()
            .elem::<i64>();
        if next == tok.eos() as i64 {
            break;
        }
        ids.push(next);
    }
    let out: Vec<u32> = ids[start..].iter().map(|&i| i as u32).collect();
    tok.decode(&out).trim().to_string()
}
// ANCHOR_END: greedy

fn is_onnx(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

/// Run the example.
pub fn run(args: Args) -> Result<Summary, Error> {
    match args.train.backend {
        BackendKind::Flex => run_on::<burn_dp::Flex>(&args, Default::default()),
        BackendKind::Ndarray => run_on::<burn::backend::NdArray<f32>>(&args, Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => run_on::<burn_dp::Cuda>(&args, Default::default()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(common::cuda_missing("burn-dp-table-to-text")),
    }
}

/// Seed of the weight initialisation before pre-training (public).
pub const PRETRAIN_SEED: u64 = 20_240_602;

/// What the pre-trained weights depend on: the architecture, the pre-training settings and an
/// FNV-1a hash of the public text (the public rows and [`PUBLIC_VOCABULARY`]). It names the
/// cached file and is written next to it (`<file>.settings`), so weights pre-trained on another
/// corpus or with other settings are never reused.
pub fn pretraining_key(args: &Args, config: &Gpt2Config, public: &[Row]) -> String {
    // FNV-1a, 64 bits: a fingerprint of public text (not a security measure).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |text: &str| {
        for b in text.bytes().chain([0u8]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(PUBLIC_VOCABULARY);
    for r in public {
        feed(&r.mr);
        feed(&r.reference);
    }
    format!(
        "tiny-v{}-ctx{}-d{}-l{}-h{}-public{}-len{}-e{}-lr{}-seed{}-text{hash:016x}",
        config.vocab_size,
        config.n_positions,
        config.n_embd,
        config.n_layer,
        config.n_head,
        public.len(),
        args.max_len,
        args.pretrain_epochs,
        args.pretrain_lr,
        PRETRAIN_SEED,
    )
}

/// Where the pre-trained weights of `args` are cached: `--pretrained`, or a file named after
/// [`pretraining_key`] under `target/examples/table-to-text/pretrained/`.
pub fn pretrained_path(args: &Args, key: &str) -> PathBuf {
    args.pretrained.clone().unwrap_or_else(|| {
        PathBuf::from("target/examples/table-to-text/pretrained").join(format!("{key}.safetensors"))
    })
}

/// The file next to pre-trained weights that records their [`pretraining_key`].
pub fn settings_path(weights: &Path) -> PathBuf {
    let mut name = weights.as_os_str().to_owned();
    name.push(".settings");
    PathBuf::from(name)
}

/// Checks that cached weights at `path` were pre-trained with `key`: a recorded other key is an
/// error (another corpus or other settings); weights without a record (not written by this
/// example) are used with a warning.
fn check_pretraining_key(path: &Path, key: &str) -> Result<(), Error> {
    match std::fs::read_to_string(settings_path(path)) {
        Ok(recorded) if recorded.trim() == key => Ok(()),
        Ok(recorded) => Err(format!(
            "{} was pre-trained with other settings or another public corpus ({}; this run: {key}): \
             delete it or choose another --pretrained file",
            path.display(),
            recorded.trim()
        )
        .into()),
        Err(_) => {
            eprintln!(
                "warning: {} has no {} record: using it as given, unchecked",
                path.display(),
                settings_path(path).display()
            );
            Ok(())
        }
    }
}

/// `[ids, mask]` tensors of rows `idx` of `seqs`.
fn batch_tensors<B: Backend>(
    seqs: &Sequences,
    idx: &[usize],
    dev: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2>) {
    let (b, t) = (idx.len(), seqs.len);
    let ids: Vec<i64> = idx
        .iter()
        .flat_map(|&i| seqs.ids[i * t..(i + 1) * t].iter().copied())
        .collect();
    let mask: Vec<f32> = idx
        .iter()
        .flat_map(|&i| seqs.mask[i * (t - 1)..(i + 1) * (t - 1)].iter().copied())
        .collect();
    (
        Tensor::from_data(TensorData::new(ids, [b, t]), dev),
        Tensor::from_data(TensorData::new(mask, [b, t - 1]), dev),
    )
}

/// Greedy generations for `test` and their corpus BLEU.
fn evaluate<B: Backend>(
    model: &Gpt2<B>,
    tok: &Tokenizer,
    test: &[HeldOut],
    args: &Args,
    n_positions: usize,
    dev: &B::Device,
) -> (Vec<String>, f64) {
    let bar = common::progress(test.len() as u64, "generating", args.train.quiet);
    let mut hypotheses = Vec::new();
    for (mr, _) in test {
        hypotheses.push(generate(
            model,
            tok,
            &prompt(mr),
            args.max_new_tokens,
            n_positions,
            dev,
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let references: Vec<Vec<String>> = test.iter().map(|(_, r)| r.clone()).collect();
    let bleu = bleu::corpus_bleu(&hypotheses, &references);
    (hypotheses, bleu)
}

fn run_on<I: burn_dp::NoiseBackend>(args: &Args, dev: I::Device) -> Result<Summary, Error> {
    args.distributed.check(false, args.non_private)?;
    type B<I> = DpAutodiff<I>;
    let start = Instant::now();
    // The public part: generated, never read from `--data`.
    let public = corpus::generate(args.public_rows, 0, 0).public;
    let (train, mut test) = load(args.data.as_deref(), args.private_rows, args.test_mrs)?;
    if let Some(m) = args.max_eval {
        test.truncate(m);
    }
    // The vocabulary comes from public text (tiny model) or is GPT-2's own: never from the
    // private data.
    let tok = match args.model {
        Size::Tiny => Tokenizer::public_compact(&public)?,
        _ => Tokenizer::gpt2()?,
    };
    let config = match args.model {
        Size::Tiny => Gpt2Config::custom(tok.vocab_size(), 128, 64, 2, 4),
        Size::Small => Gpt2Config::small(),
        Size::Medium => Gpt2Config::medium(),
        Size::Large => Gpt2Config::large(),
    };
    let max_len = args.max_len.min(config.n_positions);
    // ANCHOR: import_gpt2
    let model: Gpt2<B<I>> = match &args.init {
        None => config.init(&dev),
        Some(_) if args.model == Size::Tiny => {
            return Err("--init needs a standard --model (small, medium, large)".into())
        }
        Some(path) if is_onnx(path) => {
            Gpt2::from_onnx(&config, path, &dev, LoadOptions::with_progress())?
        }
        Some(path) => Gpt2::from_safetensors(&config, path, &dev, LoadOptions::with_progress())?,
    };
    // ANCHOR_END: import_gpt2
    // Public pre-training of the tiny model (without privacy, on the public part only), cached.
    let pretrained = if args.init.is_none()
        && args.model == Size::Tiny
        && args.pretrain_epochs > 0
        && !public.is_empty()
    {
        let key = pretraining_key(args, &config, &public);
        let path = pretrained_path(args, &key);
        if !path.exists() {
            <B<I> as Backend>::seed(&dev, PRETRAIN_SEED);
            let fresh: Gpt2<B<I>> = config.init(&dev);
            let public_seqs = sequences(&public, &tok, max_len);
            let model = common::train_non_private(
                fresh,
                public.len(),
                PlainTraining {
                    epochs: args.pretrain_epochs,
                    batch_size: 32,
                    lr: args.pretrain_lr,
                    seed: PRETRAIN_SEED,
                },
                "public pre-training",
                args.train.quiet,
                |model: &Gpt2<B<I>>, idx| {
                    let (ids, mask) = batch_tensors::<B<I>>(&public_seqs, idx, &dev);
                    sentence_loss(model, ids, mask)
                },
            );
            common::save_safetensors::<B<I>, _>(&model, &path)?;
            std::fs::write(settings_path(&path), format!("{key}\n"))?;
            eprintln!("pre-trained weights written: {}", path.display());
        } else {
            check_pretraining_key(&path, &key)?;
            eprintln!("pre-trained weights read: {}", path.display());
        }
        Some(path)
    } else {
        None
    };
    let model = match &pretrained {
        Some(path) => common::load_safetensors::<B<I>, _>(model, path, &dev)?,
        None => model,
    };
    let pretrained_bleu = pretrained.as_ref().map(|_| {
        let (_, b) = evaluate(&model.valid(), &tok, &test, args, config.n_positions, &dev);
        eprintln!("BLEU of the public pre-trained model: {b:.2}");
        b
    });
    let seqs = sequences(&train, &tok, max_len);
    // The published loss curve is measured on held-out rows (one reference each), not on the
    // private batches: a batch's exact loss is one person's loss when the batch holds one example.
    let curve_rows: Vec<Row> = test
        .iter()
        .take(CURVE_HELD_OUT)
        .map(|(mr, refs)| Row {
            mr: mr.clone(),
            reference: refs[0].clone(),
        })
        .collect();
    let curve_seqs = sequences(&curve_rows, &tok, seqs.len);
    let n = train.len();
    eprintln!(
        "data: {} public rows (pre-training), {} private train rows, {} held-out meaning representations; sequences cut or padded to {} tokens (--max-len); vocabulary {} (fixed before training)",
        public.len(),
        n,
        test.len(),
        seqs.len,
        tok.vocab_size()
    );
    let last = format!("transformer.h.{}", config.n_layer - 1);
    let head = [last.as_str(), "transformer.ln_f", "lm_head"];
    let (model, report) = freeze(model, &common::freeze_policy(args.train.freeze, &head))?;
    let (mut loss_curve, mut eps_curve) = (Curve::default(), Curve::default());
    let (eval, steps, planned, q, sigma, epsilon) = if args.non_private {
        let batch = (args.batch_size as usize).max(1);
        let model = common::train_non_private(
            model,
            n,
            PlainTraining {
                epochs: args.epochs,
                batch_size: batch,
                lr: args.train.learning_rate(DEFAULT_LR),
                seed: args.train.seed.unwrap_or(0),
            },
            "NON-PRIVATE fine-tuning",
            args.train.quiet,
            |model: &Gpt2<B<I>>, idx| {
                let (ids, mask) = batch_tensors::<B<I>>(&seqs, idx, &dev);
                sentence_loss(model, ids, mask)
            },
        );
        let steps = args.epochs * n.div_ceil(batch) as u64;
        let eval: Gpt2<PerSample<I>> = model.valid();
        (eval, steps, steps, 0.0, 0.0, f64::INFINITY)
    } else {
        let noise = common::noise_source(args.train.seed);
        let (schedule, privacy) = args.train.privacy(n, args.batch_size, args.epochs)?;
        let sigma = privacy.noise_multiplier;
        let mut trainer = common::PrivateRun::new(
            &args.distributed,
            model,
            AdamWConfig::new().init::<B<I>, Gpt2<B<I>>>(),
            PrivateSetup {
                per_sample: common::clipping(args.train.clipping, args.train.max_norm),
                privacy,
                dataset_size: n,
                physical_batch_size: args.physical_batch_size,
                noise,
            },
        )?;
        eprintln!(
            "training {} of {} parameters ({} tensors); σ = {sigma:.4} for ε = {} at δ = {} over {} steps (q = {:.4})",
            report.trainable, report.total, report.trainable_tensors, args.train.target_epsilon, args.train.delta, schedule.steps, schedule.sample_rate
        );
        common::announce_first_step(args.train.backend, args.train.quiet);
        let steps = args
            .train
            .max_steps
            .map_or(schedule.steps, |m| m.min(schedule.steps));
        let bar = common::progress(steps, "DP fine-tuning", args.train.quiet);
        let every = (steps / 50).max(1);
        for step in 1..=steps {
            // Token ids need no `batch` mark: the embedding lookup marks its output.
            trainer.step(args.train.learning_rate(DEFAULT_LR), |model, indices| {
                let (ids, mask) = batch_tensors::<B<I>>(&seqs, indices, &dev);
                // The token mask is per-sample data: marked as the batch like the inputs.
                sentence_loss(model, ids, batch(mask))
            })?;
            if step % every == 0 || step == steps {
                eps_curve.push(step, trainer.epsilon()?.epsilon);
                let eval: Gpt2<PerSample<I>> = trainer.model().valid();
                loss_curve.push(
                    step,
                    held_out_loss(&eval, &curve_seqs, args.physical_batch_size, &dev),
                );
            }
            bar.set_message(format!(
                "held-out loss {:.3}",
                loss_curve.points.last().map_or(f64::NAN, |p| p.1)
            ));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let epsilon = trainer.epsilon()?.epsilon;
        let eval: Gpt2<PerSample<I>> = trainer.into_model()?.valid();
        (
            eval,
            steps,
            schedule.steps,
            schedule.sample_rate,
            sigma,
            epsilon,
        )
    };

    // Greedy generation on the held-out meaning representations, scored with corpus BLEU-4.
    let (hypotheses, bleu) = evaluate(&eval, &tok, &test, args, config.n_positions, &dev);
    let generations = args.out.join("generations.tsv");
    let mut tsv = String::from("mr\tgenerated\treference\n");
    for ((mr, refs), h) in test.iter().zip(&hypotheses) {
        tsv.push_str(&format!("{mr}\t{h}\t{}\n", refs[0]));
    }
    // Rank 0 of a data-parallel run writes the results (the replicas are identical).
    if args.distributed.is_leader() {
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(&generations, tsv)?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let metrics = serde_json::json!({
        "example": "table-to-text", "model": format!("{:?}", args.model),
        "freeze": format!("{:?}", args.train.freeze), "clipping": format!("{:?}", args.train.clipping),
        "max_norm": (args.train.clipping == common::ClippingKind::Abadi).then_some(args.train.max_norm),
        "lr": args.train.learning_rate(DEFAULT_LR), "private": !args.non_private,
        "trainable_parameters": report.trainable, "total_parameters": report.total,
        "public_rows": public.len(), "pretrained": pretrained.as_ref().map(|p| p.display().to_string()),
        "pretrained_bleu": pretrained_bleu,
        "train_rows": n, "held_out_mrs": test.len(), "vocabulary": tok.vocab_size(), "max_len": max_len,
        "steps": steps, "planned_steps": planned, "sample_rate": q,
        "noise_multiplier": sigma, "epsilon": epsilon, "delta": args.train.delta, "target_epsilon": args.train.target_epsilon,
        "fixed_seed": args.train.seed, "bleu": bleu, "seconds": seconds,
        "examples": test.iter().zip(&hypotheses).take(3).map(|((mr, r), h)| serde_json::json!({"mr": mr, "generated": h, "reference": r[0]})).collect::<Vec<_>>(),
    });
    let outputs = if args.distributed.is_leader() {
        common::write_outputs(&args.out, metrics.clone(), &loss_curve, &eps_curve)?
    } else {
        common::Outputs::at(&args.out)
    };
    eprintln!("generations:  {}", generations.display());
    Ok(Summary {
        epsilon,
        bleu,
        steps,
        seconds,
        outputs,
        metrics,
        pretrained_bleu,
    })
}

impl common::Example for Args {
    const SWEEP_TITLE: &'static str = "BLEU on held-out private meaning representations";
    const METRIC: &'static str = "BLEU";

    fn shared_flags(&mut self) -> common::SharedFlags<'_> {
        common::SharedFlags {
            train: &mut self.train,
            non_private: &mut self.non_private,
            results: &mut self.results,
            distributed: &mut self.distributed,
            out: &mut self.out,
        }
    }

    fn run_once(self) -> Result<common::RunReport, Error> {
        let s = run(self)?;
        Ok(common::RunReport {
            outcome: common::SweepOutcome {
                epsilon: s.epsilon,
                metric: s.bleu,
                pretrained_metric: s.pretrained_bleu,
                trainable: s.metrics["trainable_parameters"].as_u64().unwrap_or(0),
                steps: s.steps,
                seconds: s.seconds,
            },
            line: s.metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cached pre-trained weights are keyed by the public corpus and the settings: another corpus
    /// gives another file name, and a file recorded with another key is refused, not reused.
    #[test]
    fn pretrained_cache_is_keyed_by_the_public_corpus() {
        let args = Args::parse_from(["table-to-text"]);
        let config = Gpt2Config::custom(180, 128, 64, 2, 4);
        let public = corpus::generate(20, 0, 0).public;
        let key = pretraining_key(&args, &config, &public);
        let mut changed = public.clone();
        changed[3].reference.push('!');
        let other = pretraining_key(&args, &config, &changed);
        assert_ne!(key, other);
        assert_ne!(pretrained_path(&args, &key), pretrained_path(&args, &other));
        let dir = std::env::temp_dir().join(format!("burn-dp-t2t-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let weights = dir.join("w.safetensors");
        std::fs::write(settings_path(&weights), format!("{other}\n")).unwrap();
        let e = check_pretraining_key(&weights, &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("other settings"), "{e}");
        std::fs::write(settings_path(&weights), format!("{key}\n")).unwrap();
        assert!(check_pretraining_key(&weights, &key).is_ok());
        std::fs::remove_dir_all(&dir).ok();
    }
}
