//! The language models of the example behind one small trait, [`CausalLm`] (GPT-2 and the
//! Llama-family decoder), the tiny architectures, LoRA's settings, and what is written once for
//! both: the sentence loss, the held-out loss, greedy decoding and BLEU.

use burn::module::Module;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use burn_dp_examples_common as common;
use burn_dp_models::{Gpt2, Gpt2Config, Llama, LlamaConfig, LoraConfig, LoraError, ProjectionBias};

use crate::{bleu, prompt, HeldOut, Sequences, Tokenizer};

/// The layers that get a LoRA adapter with `--freeze lora`: the attention's query and value
/// projections (Hu et al. 2021; PEFT's default for Llama, and the bench's `LORA_TARGETS`).
pub const LORA_TARGETS: [&str; 2] = ["q_proj", "v_proj"];

/// The seed of the adapters' initialisation (public; `A` is random, `B = 0`, so a fresh adapter
/// leaves the model as it is).
pub const ADAPTER_SEED: u64 = 20_240_603;

/// Errors of the model choice.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// `--freeze lora` on a model without LoRA support.
    #[error(
        "--freeze lora needs a model with LoRA adapters, and {model} has none: use \
         --model llama-tiny (or --freeze none, bias or head)"
    )]
    LoraUnsupported {
        /// The model's name.
        model: &'static str,
    },
    /// A LoRA setting the model refuses (rank 0, a target it does not have, …).
    #[error("LoRA: {0}")]
    Lora(#[from] LoraError),
}

// ANCHOR: causal_lm
/// The LoRA configuration of `--lora-rank R`: rank R, α = 2R (so the update is scaled by 2),
/// adapters on [`LORA_TARGETS`].
pub fn lora_config(rank: usize) -> LoraConfig {
    LoraConfig::new(rank, 2.0 * rank as f64, &LORA_TARGETS)
}

/// A causal language model: logits `[B, T, V]` of token ids `[B, T]`, and LoRA adapters where
/// the model has them.
pub trait CausalLm<B: Backend>: Module<B> + Sized {
    /// The model's name in messages.
    const NAME: &'static str;

    /// Next-token logits.
    ///
    /// # Shapes
    /// - `ids`: `[B, T]`
    /// - returns `[B, T, V]`
    fn logits(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3>;

    /// The model with fresh adapters of `config` (`B = 0`: the same function as before), or
    /// [`ModelError::LoraUnsupported`].
    fn with_adapters(self, config: &LoraConfig, device: &B::Device) -> Result<Self, ModelError>;

    /// The model with its adapters merged into the base weights (itself if it has none).
    fn merged(self) -> Self;
}
// ANCHOR_END: causal_lm

impl<B: Backend> CausalLm<B> for Gpt2<B> {
    const NAME: &'static str = "GPT-2";

    fn logits(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward(ids, None)
    }

    fn with_adapters(self, _: &LoraConfig, _: &B::Device) -> Result<Self, ModelError> {
        Err(ModelError::LoraUnsupported { model: Self::NAME })
    }

    fn merged(self) -> Self {
        self
    }
}

impl<B: Backend> CausalLm<B> for Llama<B> {
    const NAME: &'static str = "Llama";

    fn logits(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward(ids, None)
    }

    fn with_adapters(self, config: &LoraConfig, device: &B::Device) -> Result<Self, ModelError> {
        Ok(self.with_lora(config, device)?)
    }

    fn merged(self) -> Self {
        self.merge_adapters()
    }
}

/// Context length of the tiny models.
pub const TINY_CONTEXT: usize = 128;

/// The tiny GPT-2: 2 layers, 4 heads, width 64, context 128 (about 120k parameters with the
/// compact vocabulary).
pub fn gpt2_tiny(vocab_size: usize) -> Gpt2Config {
    Gpt2Config::custom(vocab_size, TINY_CONTEXT, 64, 2, 4)
}

/// The tiny Llama-family decoder: RMSNorm, rotary positions, 4 query heads sharing 2 key/value
/// heads (grouped-query attention), SwiGLU MLP of width 172 (about 8/3 of 64), width 64, 2
/// layers, tied embeddings, and biases on the q, k and v projections as Qwen2 has them (so
/// DP-BiTFiT has something to train: Llama itself has no bias at all).
pub fn llama_tiny(vocab_size: usize) -> LlamaConfig {
    let mut config = LlamaConfig::custom(vocab_size, 64, 172, 2, 4, 2)
        .with_tied_head(true)
        .with_bias(ProjectionBias::Qkv);
    config.max_position_embeddings = TINY_CONTEXT;
    config
}

/// The architecture part of the pre-trained weights' cache key of the tiny GPT-2 (the key the
/// example has always used, so cached weights stay valid).
pub fn gpt2_key(config: &Gpt2Config) -> String {
    format!(
        "tiny-v{}-ctx{}-d{}-l{}-h{}",
        config.vocab_size, config.n_positions, config.n_embd, config.n_layer, config.n_head
    )
}

/// The architecture part of the cache key of the tiny Llama: every shape setting, so GPT-2 and
/// Llama weights (or two Llama shapes) never share a file.
pub fn llama_key(config: &LlamaConfig) -> String {
    format!(
        "llama-tiny-v{}-ctx{}-d{}-i{}-l{}-h{}-kv{}-bias{:?}-tied{}-rope{}",
        config.vocab_size,
        config.max_position_embeddings,
        config.hidden_size,
        config.intermediate_size,
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.bias,
        config.tie_word_embeddings,
        config.rope_theta,
    )
}

// ANCHOR: lm_loss
/// Per-sample loss `[B]`: mean cross-entropy of the sentence tokens (the prompt and the padding
/// are masked out). Only reductions along dimension 1: the batch stays dimension 0.
pub fn sentence_loss<B: Backend, M: CausalLm<B>>(
    model: &M,
    ids: Tensor<B, 2, Int>,
    mask: Tensor<B, 2>,
) -> Tensor<B, 1> {
    let [b, t] = ids.dims();
    let logits = model.logits(ids.clone());
    let v = logits.dims()[2];
    let logp = log_softmax(logits.slice([0..b, 0..t - 1, 0..v]), 2);
    let next = ids.slice([0..b, 1..t]).reshape([b, t - 1, 1]);
    let nll = logp.gather(2, next).reshape([b, t - 1]).neg() * mask.clone();
    let count = mask.sum_dim(1).clamp_min(1.0).reshape([b]);
    nll.sum_dim(1).reshape([b]) / count
}
// ANCHOR_END: lm_loss

/// `[ids, mask]` tensors of rows `idx` of `seqs`.
pub fn batch_tensors<B: Backend>(
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

/// Mean per-sequence loss of `seqs` (held-out rows: public evaluation data), in chunks.
pub fn held_out_loss<B: Backend, M: CausalLm<B>>(
    model: &M,
    seqs: &Sequences,
    chunk: usize,
    dev: &B::Device,
) -> f64 {
    let n = seqs.ids.len() / seqs.len;
    if n == 0 {
        return f64::NAN;
    }
    let rows: Vec<usize> = (0..n).collect();
    let mut total = 0.0;
    for idx in rows.chunks(chunk.max(1)) {
        let (ids, mask) = batch_tensors::<B>(seqs, idx, dev);
        total += sentence_loss(model, ids, mask)
            .sum()
            .into_scalar()
            .elem::<f64>();
    }
    total / n as f64
}

/// The largest absolute difference between the logits of `a` and `b` on the first `rows`
/// sequences of `seqs` (how exact merging the adapters is).
pub fn max_logit_difference<B: Backend, M: CausalLm<B>>(
    a: &M,
    b: &M,
    seqs: &Sequences,
    rows: usize,
    dev: &B::Device,
) -> f64 {
    let n = (seqs.ids.len() / seqs.len).min(rows);
    if n == 0 {
        return 0.0;
    }
    let idx: Vec<usize> = (0..n).collect();
    let (ids, _) = batch_tensors::<B>(seqs, &idx, dev);
    (a.logits(ids.clone()) - b.logits(ids))
        .abs()
        .max()
        .into_scalar()
        .elem::<f64>()
}

// ANCHOR: greedy
/// Greedy decoding of one prompt until end-of-text, `max_new` tokens or the context length.
pub fn generate<B: Backend, M: CausalLm<B>>(
    model: &M,
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
        let logits = model.logits(input);
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

/// Greedy generations for `test` (at most `max_new` tokens each) and their corpus BLEU.
pub fn evaluate<B: Backend, M: CausalLm<B>>(
    model: &M,
    tok: &Tokenizer,
    test: &[HeldOut],
    max_new: usize,
    n_positions: usize,
    quiet: bool,
    dev: &B::Device,
) -> (Vec<String>, f64) {
    let bar = common::progress(test.len() as u64, "generating", quiet);
    let mut hypotheses = Vec::new();
    for (mr, _) in test {
        hypotheses.push(generate(model, tok, &prompt(mr), max_new, n_positions, dev));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let references: Vec<Vec<String>> = test.iter().map(|(_, r)| r.clone()).collect();
    let bleu = bleu::corpus_bleu(&hypotheses, &references);
    (hypotheses, bleu)
}

/// The peak resident memory of this process so far in MiB (`VmHWM` of `/proc/self/status`;
/// `None` where the file is missing, off Linux). In a sweep, one process runs every
/// configuration, so it is the peak of all runs so far.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}
