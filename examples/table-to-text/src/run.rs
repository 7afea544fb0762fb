//! One run of the example: the data and the vocabulary, the model (GPT-2 or the tiny Llama), its
//! public pre-training (cached), the fine-tuning (private or not; full, DP-BiTFiT, last layers
//! or LoRA), greedy generation and BLEU, and the files written.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use burn_dp::{batch, freeze, DpAutodiff, NoiseBackend, PerSample};
use burn_dp_examples_common::{self as common, Error, FreezeKind};
use burn_dp_models::{adapters, Gpt2, Llama, LoadOptions, PretrainedModel};

use crate::model::{
    batch_tensors, evaluate, gpt2_key, gpt2_tiny, held_out_loss, llama_key, llama_tiny,
    lora_config, max_logit_difference, peak_rss_mib, sentence_loss, CausalLm, ModelError,
    ADAPTER_SEED,
};
use crate::{
    check_pretraining_key, corpus, load, pretrained_path, pretraining_key, sequences,
    settings_path, Args, HeldOut, Row, Size, Summary, Tokenizer, CURVE_HELD_OUT, DEFAULT_LR,
    PRETRAIN_SEED,
};

type Ad<I> = DpAutodiff<I>;

/// The data of a run, read before the model is built.
struct Data {
    public: Vec<Row>,
    train: Vec<Row>,
    test: Vec<HeldOut>,
    tok: Tokenizer,
    start: Instant,
}

/// What the run needs to know of the architecture.
struct Arch {
    /// The architecture part of the pre-training cache key (`None`: not pre-trained here).
    key: Option<String>,
    /// Context length.
    n_positions: usize,
    /// Module paths of `--freeze head`.
    head: Vec<String>,
}

pub(crate) fn run_on<I: NoiseBackend>(args: &Args, dev: I::Device) -> Result<Summary, Error> {
    args.distributed.check(false, args.non_private)?;
    if args.train.freeze == FreezeKind::Lora && args.model != Size::LlamaTiny {
        return Err(ModelError::LoraUnsupported { model: "GPT-2" }.into());
    }
    let start = Instant::now();
    // The public part: generated, never read from `--data`.
    let public = corpus::generate(args.public_rows, 0, 0).public;
    let (train, mut test) = load(args.data.as_deref(), args.private_rows, args.test_mrs)?;
    if let Some(m) = args.max_eval {
        test.truncate(m);
    }
    // The vocabulary comes from public text (tiny models) or is GPT-2's own: never from the
    // private data.
    let tok = match args.model {
        Size::Tiny | Size::LlamaTiny => Tokenizer::public_compact(&public)?,
        _ => Tokenizer::gpt2()?,
    };
    let tiny = matches!(args.model, Size::Tiny | Size::LlamaTiny);
    if tiny && args.init.is_some() {
        return Err("--init needs a standard --model (small, medium, large)".into());
    }
    let vocab = tok.vocab_size();
    let data = Data {
        public,
        train,
        test,
        tok,
        start,
    };
    if args.model == Size::LlamaTiny {
        let config = llama_tiny(vocab);
        let arch = Arch {
            key: Some(llama_key(&config)),
            n_positions: config.max_position_embeddings,
            head: vec![
                format!("model.layers.{}", config.num_hidden_layers - 1),
                "model.norm".into(),
                "lm_head".into(),
            ],
        };
        let model: Llama<Ad<I>> = config.init(&dev);
        return fine_tune::<I, _>(args, data, arch, model, |d| config.init(d), dev);
    }
    let config = match args.model {
        Size::Small => burn_dp_models::Gpt2Config::small(),
        Size::Medium => burn_dp_models::Gpt2Config::medium(),
        Size::Large => burn_dp_models::Gpt2Config::large(),
        Size::Tiny | Size::LlamaTiny => gpt2_tiny(vocab),
    };
    // ANCHOR: import_gpt2
    let model: Gpt2<Ad<I>> = match &args.init {
        None => config.init(&dev),
        Some(path) if is_onnx(path) => {
            Gpt2::from_onnx(&config, path, &dev, LoadOptions::with_progress())?
        }
        Some(path) => Gpt2::from_safetensors(&config, path, &dev, LoadOptions::with_progress())?,
    };
    // ANCHOR_END: import_gpt2
    let last = format!("transformer.h.{}", config.n_layer - 1);
    let arch = Arch {
        key: tiny.then(|| gpt2_key(&config)),
        n_positions: config.n_positions,
        head: vec![last, "transformer.ln_f".into(), "lm_head".into()],
    };
    fine_tune::<I, _>(args, data, arch, model, |d| config.init(d), dev)
}

/// Public pre-training (cached), then the fine-tuning of `model`, generation, BLEU and the
/// files. `fresh` builds the randomly initialised model that pre-training starts from.
fn fine_tune<I, M>(
    args: &Args,
    data: Data,
    arch: Arch,
    model: M,
    fresh: impl Fn(&I::Device) -> M,
    dev: I::Device,
) -> Result<Summary, Error>
where
    I: NoiseBackend,
    M: CausalLm<Ad<I>> + AutodiffModule<Ad<I>>,
    M::InnerModule: CausalLm<PerSample<I>>,
{
    let Data {
        public,
        train,
        test,
        tok,
        start,
    } = data;
    let max_len = args.max_len.min(arch.n_positions);
    // Public pre-training of a tiny model (without privacy, on the public part only), cached.
    let (model, pretrained) = match &arch.key {
        Some(arch_key) if args.pretrain_epochs > 0 && !public.is_empty() => {
            let key = pretraining_key(args, arch_key, &public);
            let path = pretrained_path(args, &key);
            if path.exists() {
                check_pretraining_key(&path, &key)?;
            }
            let public_seqs = sequences(&public, &tok, max_len);
            let (model, trained_now) = common::pretrain_public(
                &path,
                common::PublicPretraining {
                    epochs: args.pretrain_epochs,
                    lr: args.pretrain_lr,
                    seed: PRETRAIN_SEED,
                },
                public.len(),
                args.train.quiet,
                || Ok(fresh(&dev)),
                &dev,
                |model: &M, idx| {
                    let (ids, mask) = batch_tensors::<Ad<I>>(&public_seqs, idx, &dev);
                    sentence_loss(model, ids, mask)
                },
            )?;
            if trained_now {
                std::fs::write(settings_path(&path), format!("{key}\n"))?;
            }
            (model, Some(path))
        }
        _ => (model, None),
    };
    let quiet = args.train.quiet;
    // Greedy generation on the held-out meaning representations, scored with corpus BLEU-4.
    let generate_and_score = |model: &M::InnerModule| {
        evaluate(
            model,
            &tok,
            &test,
            args.max_new_tokens,
            arch.n_positions,
            quiet,
            &dev,
        )
    };
    let pretrained_bleu = pretrained.as_ref().map(|_| {
        let (_, b) = generate_and_score(&model.valid());
        eprintln!("BLEU of the public pre-trained model: {b:.2}");
        b
    });
    // LoRA: fresh adapters on the pre-trained model (a public, fixed initialisation).
    let lora = (args.train.freeze == FreezeKind::Lora).then(|| lora_config(args.lora_rank));
    let model = match &lora {
        Some(config) => {
            <Ad<I> as Backend>::seed(&dev, ADAPTER_SEED);
            model.with_adapters(config, &dev)?
        }
        None => model,
    };
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
    let head: Vec<&str> = arch.head.iter().map(String::as_str).collect();
    let (model, report) = freeze(model, &common::freeze_policy(args.train.freeze, &head))?;
    let lr = args.train.learning_rate(DEFAULT_LR);
    let train_start = Instant::now();
    let tuned = common::fine_tune(
        common::FineTuning {
            train: &args.train,
            non_private: args.non_private,
            distributed: &args.distributed,
            dataset_size: n,
            batch_size: args.batch_size,
            epochs: args.epochs,
            physical_batch_size: args.physical_batch_size,
            lr,
            trainable: report,
        },
        model,
        // Token ids need no `batch` mark (the embedding lookup marks its output); the token mask
        // is per-sample data, marked as the batch like the inputs.
        |model: &M, indices| {
            let (ids, mask) = batch_tensors::<Ad<I>>(&seqs, indices, &dev);
            sentence_loss(model, ids, batch(mask))
        },
        // The published curve: held-out rows, never a private batch's loss.
        |model: &M| {
            let eval: M::InnerModule = model.valid();
            held_out_loss(&eval, &curve_seqs, args.physical_batch_size, &dev)
        },
    )?;
    let common::FineTuned {
        steps,
        planned_steps: planned,
        sample_rate: q,
        noise_multiplier: sigma,
        epsilon,
        step_seconds,
        loss_curve,
        epsilon_curve: eps_curve,
        ..
    } = tuned;
    let trained = tuned.model;
    let train_seconds = train_start.elapsed().as_secs_f64();
    // Expected passes over the data that the steps taken make.
    let epochs_done = steps as f64 * args.epochs as f64 / planned.max(1) as f64;

    // LoRA: the adapters alone are written; the merged model (adapters folded into the base
    // weights, an ordinary Llama) is what is evaluated.
    let adapters = args.out.join("adapters.safetensors");
    if let Some(config) = &lora {
        if args.distributed.is_leader() {
            std::fs::create_dir_all(&args.out)?;
            adapters::save_adapters::<Ad<I>, M>(&trained, config, &adapters)?;
            eprintln!("adapters:     {}", adapters.display());
        }
    }
    let adapted: M::InnerModule = trained.valid();
    let (eval, merge_difference) = if lora.is_some() {
        let merged = adapted.clone().merged();
        let diff = max_logit_difference(&adapted, &merged, &curve_seqs, 8, &dev);
        (merged, Some(diff))
    } else {
        (adapted, None)
    };

    let (hypotheses, bleu) = generate_and_score(&eval);
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
    let lora_json = lora.as_ref().map(|c| {
        serde_json::json!({
            "rank": c.rank, "alpha": c.alpha, "targets": c.targets,
            "adapters": adapters.display().to_string(), "evaluated": "merged",
            "merged_max_logit_difference": merge_difference,
        })
    });
    let metrics = serde_json::json!({
        "example": "table-to-text", "model": format!("{:?}", args.model),
        "freeze": format!("{:?}", args.train.freeze), "clipping": format!("{:?}", args.train.clipping),
        "max_norm": (args.train.clipping == common::ClippingKind::Abadi).then_some(args.train.max_norm),
        "lr": lr, "private": !args.non_private, "lora": lora_json,
        "trainable_parameters": report.trainable, "total_parameters": report.total,
        "public_rows": public.len(), "pretrained": pretrained.as_ref().map(|p: &PathBuf| p.display().to_string()),
        "pretrained_bleu": pretrained_bleu,
        "train_rows": n, "held_out_mrs": test.len(), "vocabulary": tok.vocab_size(), "max_len": max_len,
        "steps": steps, "planned_steps": planned, "sample_rate": q,
        "noise_multiplier": sigma, "epsilon": epsilon, "delta": args.train.delta, "target_epsilon": args.train.target_epsilon,
        "fixed_seed": args.train.seed, "bleu": bleu, "seconds": seconds,
        "train_seconds": train_seconds, "step_seconds": step_seconds,
        "seconds_per_step": step_seconds / steps.max(1) as f64,
        "seconds_per_epoch": (epochs_done > 0.0).then(|| step_seconds / epochs_done),
        "peak_rss_mib": peak_rss_mib(),
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

/// Whether `path` is an ONNX file (by its extension).
fn is_onnx(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}
