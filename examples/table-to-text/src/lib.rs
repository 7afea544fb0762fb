//! DP fine-tuning of GPT-2 or a tiny Llama-family decoder on table-to-text generation (the E2E
//! task: a meaning representation `name[The Eagle], eatType[coffee shop], ...` → a sentence),
//! full, DP-BiTFiT or DP-LoRA, with greedy decoding and corpus BLEU-4 on a held-out split. `run`
//! is the whole example.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn_dp_examples_common::{self as common, BackendKind, Error};
use clap::{Parser, ValueEnum};

pub mod bleu;
pub mod corpus;
pub mod model;
mod run;

pub use model::{CausalLm, ModelError};

/// The default learning rates (AdamW) of the fine-tuning, the best private settings of the sweep
/// (GPT-2) and of a check at ε = 3 (LoRA on the tiny Llama; see `results/results-llama.md`).
pub const DEFAULT_LR: common::DefaultLearningRates = common::DefaultLearningRates {
    full: 5e-3,
    bias_only: 1e-1,
    lora: 2e-2,
};

/// Command-line arguments.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "table-to-text",
    about = "DP fine-tuning of GPT-2 or a tiny Llama on E2E-style table-to-text with burn-dp"
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
    /// Architecture (`tiny`: GPT-2 with 2 layers, width 64; `llama-tiny`: a Llama-family decoder
    /// of the same size; both with a vocabulary cut down to the tokens of the public vocabulary
    /// text `data/public_vocabulary.txt` and of the public part of the corpus).
    #[arg(long, value_enum, default_value_t = Size::Tiny)]
    pub model: Size,
    /// Rank R of the LoRA adapters of `--freeze lora` (α = 2R, on the q and v projections;
    /// `--model llama-tiny`).
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
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
    /// GPT-2 with 2 layers, 4 heads, width 64, compact vocabulary, pre-trained on the public part
    /// (CPU).
    Tiny,
    /// A Llama-family decoder (RMSNorm, rotary positions, 4 query / 2 key-value heads, SwiGLU,
    /// q/k/v biases, tied embeddings) with 2 layers, width 64, the same compact vocabulary and
    /// public pre-training; the model of `--freeze lora`.
    LlamaTiny,
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

/// Run the example.
pub fn run(args: Args) -> Result<Summary, Error> {
    match args.train.backend {
        BackendKind::Flex => run::run_on::<burn_dp::Flex>(&args, Default::default()),
        BackendKind::Ndarray => {
            run::run_on::<burn::backend::NdArray<f32>>(&args, Default::default())
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => run::run_on::<burn_dp::Cuda>(&args, Default::default()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(common::cuda_missing("burn-dp-table-to-text")),
    }
}

/// Seed of the weight initialisation before pre-training (public).
pub const PRETRAIN_SEED: u64 = 20_240_602;

/// What the pre-trained weights depend on: the architecture, the pre-training settings and an
/// FNV-1a hash of the public text (the public rows and [`PUBLIC_VOCABULARY`]). It names the
/// cached file and is written next to it (`<file>.settings`), so weights pre-trained on another
/// corpus, with other settings or for another architecture are never reused. `arch` describes
/// the architecture ([`model::gpt2_key`], [`model::llama_key`]).
pub fn pretraining_key(args: &Args, arch: &str, public: &[Row]) -> String {
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
        "{arch}-public{}-len{}-e{}-lr{}-seed{}-text{hash:016x}",
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
pub(crate) fn check_pretraining_key(path: &Path, key: &str) -> Result<(), Error> {
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

    /// Cached pre-trained weights are keyed by the public corpus, the settings and the
    /// architecture: another corpus or GPT-2 against Llama gives another file name, and a file
    /// recorded with another key is refused, not reused.
    #[test]
    fn pretrained_cache_is_keyed_by_the_public_corpus() {
        let args = Args::parse_from(["table-to-text"]);
        let config = model::gpt2_key(&model::gpt2_tiny(180));
        // The GPT-2 key is the one the example has always used: cached weights stay valid.
        assert_eq!(config, "tiny-v180-ctx128-d64-l2-h4");
        let public = corpus::generate(20, 0, 0).public;
        let key = pretraining_key(&args, &config, &public);
        let mut changed = public.clone();
        changed[3].reference.push('!');
        let other = pretraining_key(&args, &config, &changed);
        assert_ne!(key, other);
        let llama = pretraining_key(&args, &model::llama_key(&model::llama_tiny(180)), &public);
        assert!(
            llama.starts_with("llama-tiny-v180-ctx128-d64-i172-l2-h4-kv2"),
            "{llama}"
        );
        assert_ne!(pretrained_path(&args, &key), pretrained_path(&args, &llama));
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
