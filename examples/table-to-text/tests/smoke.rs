//! CI-sized runs of the example: a short public pre-training and two DP steps of the tiny GPT-2
//! on a small generated corpus, with
//! generation and BLEU on a few held-out meaning representations.

use burn_dp_table_to_text::{
    corpus, load, read_csv, run, sequences, Args, ModelError, Row, Tokenizer,
};
use clap::Parser;

fn args(extra: &[&str]) -> Args {
    let out = std::env::temp_dir().join(format!(
        "burn-dp-t2t-smoke-{}-{}",
        std::process::id(),
        extra.join("_").replace('-', "")
    ));
    let pretrained = out.join("pretrained.safetensors");
    let (out, pretrained) = (
        out.to_string_lossy().into_owned(),
        pretrained.to_string_lossy().into_owned(),
    );
    let mut argv = vec![
        "table-to-text",
        "--public-rows",
        "48",
        "--private-rows",
        "32",
        "--test-mrs",
        "4",
        "--pretrain-epochs",
        "1",
        "--max-len",
        "48",
        "--pretrained",
        &pretrained,
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--physical-batch-size",
        "8",
        "--max-eval",
        "2",
        "--max-new-tokens",
        "8",
        "--quiet",
        "--seed",
        "1",
        "--out",
        &out,
    ];
    argv.extend_from_slice(extra);
    Args::parse_from(argv)
}

#[test]
fn smoke_full_and_bitfit() {
    for extra in [&[][..], &["--freeze", "bias", "--clipping", "abadi"][..]] {
        let s = run(args(extra)).expect("run");
        assert_eq!(s.steps, 2);
        assert!(s.epsilon > 0.0 && s.epsilon < 8.0, "{}", s.epsilon);
        assert!((0.0..=100.0).contains(&s.bleu));
        assert!(
            s.outputs.metrics.exists()
                && s.outputs.loss_svg.exists()
                && s.outputs.epsilon_svg.exists()
        );
        assert!(s.outputs.metrics.with_file_name("generations.tsv").exists());
        assert!(s.pretrained_bleu.is_some());
    }
    let plain = run(args(&["--non-private", "--epochs", "1"])).expect("run");
    assert!(plain.metrics["epsilon"].is_null());
}

/// DP-LoRA on the tiny Llama: two steps train the adapters alone (the trainable count is the
/// adapters' size), write them next to the outputs and evaluate the merged model, which computes
/// what the adapted one does; GPT-2 refuses `--freeze lora` with a typed error.
#[test]
fn llama_lora_trains_only_the_adapters() {
    let s = run(args(&[
        "--model",
        "llama-tiny",
        "--freeze",
        "lora",
        "--lora-rank",
        "2",
    ]))
    .expect("run");
    assert_eq!(s.steps, 2);
    assert!(s.epsilon > 0.0 && s.epsilon < 8.0, "{}", s.epsilon);
    assert!((0.0..=100.0).contains(&s.bleu));
    // Rank 2 on q (64 -> 64) and v (64 -> 2 KV heads of 16 = 32) of each of the 2 layers.
    let adapters = 2 * (2 * (64 + 64) + 2 * (64 + 32));
    assert_eq!(s.metrics["trainable_parameters"], adapters);
    assert_eq!(s.metrics["lora"]["alpha"], 4.0);
    let diff = s.metrics["lora"]["merged_max_logit_difference"]
        .as_f64()
        .unwrap();
    assert!(diff < 1e-4, "{diff}");
    assert!(s
        .outputs
        .metrics
        .with_file_name("adapters.safetensors")
        .exists());
    assert!(s.pretrained_bleu.is_some());
    let e = run(args(&["--freeze", "lora"])).expect_err("GPT-2 has no LoRA");
    assert!(
        matches!(
            e.downcast_ref::<ModelError>(),
            Some(ModelError::LoraUnsupported { .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("--model llama-tiny"), "{e}");
}

#[test]
fn bundled_sample_and_tokenizer_offline() {
    let (train, test) = load(None, 60, 5).unwrap();
    assert_eq!((train.len(), test.len()), (60, 5));
    // GPT-2's BPE from the crate's bundled vocabulary (no network).
    let tok = Tokenizer::gpt2().unwrap();
    assert_eq!(tok.encode("Hello world"), [15496, 995]);
    assert_eq!(
        tok.decode(&tok.encode(" The Eagle is a pub.")),
        " The Eagle is a pub."
    );
    let compact = Tokenizer::compact(["name[The Eagle] =", " The Eagle is a pub."]).unwrap();
    let row = burn_dp_table_to_text::Row {
        mr: "name[The Eagle]".into(),
        reference: "The Eagle is a pub.".into(),
    };
    let prompt_len = compact.encode("name[The Eagle] =").len();
    let sentence_len = compact.encode(" The Eagle is a pub.").len() + 1;
    // The length is the setting, padded with end-of-text, whatever the rows hold.
    let seq = sequences(std::slice::from_ref(&row), &compact, 64);
    assert_eq!(seq.len, 64);
    assert_eq!(seq.mask.iter().sum::<f32>() as usize, sentence_len);
    assert_eq!(seq.mask.len(), 63);
    let cut = sequences(&[row], &compact, prompt_len + 2);
    assert_eq!(cut.len, prompt_len + 2);
    assert_eq!(cut.mask.iter().sum::<f32>() as usize, 2);
    assert_eq!(
        compact.decode(&compact.encode(" The Eagle is a pub.")),
        " The Eagle is a pub."
    );
    // Tokens outside the vocabulary are unknown (decoded as nothing), not end-of-text.
    let unknown = compact.encode(" zebra");
    assert!(unknown.iter().all(|&i| i == 1), "{unknown:?}");
    assert_eq!(compact.decode(&unknown), "");
    assert!(read_csv("a,b\n1,2\n").is_err());
}

#[test]
fn cuda_without_feature_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let e = run(args(&["--backend", "cuda"]))
        .expect_err("error")
        .to_string();
    assert!(e.contains("--features cuda"), "{e}");
}

/// Published artefacts (metrics.json, generations.tsv's held-out columns, the vocabulary, the
/// sequence length and the pre-trained weights) must not depend on one private record: two
/// training sets that differ in one row give the same files apart from what the noised model
/// computes.
#[test]
fn published_artefacts_do_not_depend_on_one_record() {
    let c = corpus::generate(0, 24, 3);
    let write = |dir: &std::path::Path, rows: &[Row]| {
        std::fs::create_dir_all(dir).unwrap();
        let mut w = csv::Writer::from_path(dir.join("trainset.csv")).unwrap();
        w.write_record(["mr", "ref"]).unwrap();
        for r in rows {
            w.write_record([&r.mr, &r.reference]).unwrap();
        }
        w.flush().unwrap();
        let mut w = csv::Writer::from_path(dir.join("devset.csv")).unwrap();
        w.write_record(["mr", "ref"]).unwrap();
        for (mr, refs) in &c.test {
            w.write_record([mr, &refs[0]]).unwrap();
        }
        w.flush().unwrap();
    };
    let dir = std::env::temp_dir().join(format!("burn-dp-t2t-neighbours-{}", std::process::id()));
    write(&dir.join("d"), &c.private_train);
    // The neighbour: one private row replaced by rare words and a much longer sentence (a
    // vocabulary or length taken from the data would change).
    let mut neighbour = c.private_train.clone();
    neighbour[0].reference = "Zyzzyva quokka xylophone ".repeat(12).trim().to_string();
    write(&dir.join("d_prime"), &neighbour);
    let published = |name: &str| {
        let data = dir.join(name).to_string_lossy().into_owned();
        let out = dir
            .join(format!("out-{name}"))
            .to_string_lossy()
            .into_owned();
        let pre = dir
            .join(format!("pre-{name}.safetensors"))
            .to_string_lossy()
            .into_owned();
        let s = run(Args::parse_from([
            "table-to-text",
            "--data",
            data.as_str(),
            "--public-rows",
            "48",
            "--pretrain-epochs",
            "1",
            "--pretrained",
            pre.as_str(),
            "--max-len",
            "48",
            "--max-steps",
            "2",
            "--batch-size",
            "8",
            "--physical-batch-size",
            "8",
            "--max-eval",
            "2",
            "--max-new-tokens",
            "4",
            "--quiet",
            "--seed",
            "3",
            "--out",
            out.as_str(),
        ]))
        .expect("run");
        let mut m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&s.outputs.metrics).unwrap()).unwrap();
        // What the noised model computes (and the wall time) may differ; nothing else.
        for key in [
            "bleu",
            "seconds",
            "train_seconds",
            "step_seconds",
            "seconds_per_step",
            "seconds_per_epoch",
            "peak_rss_mib",
        ] {
            m.as_object_mut().unwrap().remove(key);
        }
        m["curves"].as_object_mut().unwrap().remove("held_out_loss");
        for e in m["examples"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("generated");
        }
        // The pre-trained weights come from the public part only: byte for byte the same.
        let path = m.as_object_mut().unwrap().remove("pretrained").unwrap();
        let weights = std::fs::read(path.as_str().unwrap()).unwrap();
        let tsv =
            std::fs::read_to_string(s.outputs.metrics.with_file_name("generations.tsv")).unwrap();
        let held_out: Vec<String> = tsv
            .lines()
            .map(|l| {
                let c: Vec<&str> = l.split('\t').collect();
                format!("{}\t{}", c[0], c[2])
            })
            .collect();
        (m, held_out, weights)
    };
    let (a, b) = (published("d"), published("d_prime"));
    assert_eq!(a, b);
    std::fs::remove_dir_all(&dir).ok();
}

/// Fixed-seed regression of a small complete run (public pre-training, 12 DP steps of the tiny
/// GPT-2, greedy generation and BLEU on 12 held-out meaning representations): the numbers were
/// recorded before the example's loop moved to `common::fine_tune` and the model became generic
/// (issue 23, issue 25), and must not change with refactoring.
#[test]
fn fixed_seed_run_gives_the_recorded_result() {
    let out = std::env::temp_dir().join(format!("burn-dp-t2t-regression-{}", std::process::id()));
    let pretrained = out.join("pretrained.safetensors");
    let s = run(Args::parse_from([
        "table-to-text",
        "--public-rows",
        "300",
        "--private-rows",
        "256",
        "--test-mrs",
        "12",
        "--pretrain-epochs",
        "2",
        "--epochs",
        "3",
        "--batch-size",
        "64",
        "--physical-batch-size",
        "32",
        "--max-new-tokens",
        "24",
        "--quiet",
        "--seed",
        "1",
        "--pretrained",
        &pretrained.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ]))
    .expect("run");
    let got = (
        s.steps,
        s.epsilon,
        s.pretrained_bleu.unwrap_or(f64::NAN),
        s.bleu,
    );
    eprintln!("recorded: {got:?}");
    assert_eq!(got.0, RECORDED.0);
    for (name, a, b) in [
        ("epsilon", got.1, RECORDED.1),
        ("pre-trained BLEU", got.2, RECORDED.2),
        ("BLEU", got.3, RECORDED.3),
    ] {
        assert!((a - b).abs() < 1e-9, "{name}: {a} (recorded {b})");
    }
    std::fs::remove_dir_all(&out).ok();
}

/// Steps, ε, BLEU of the public pre-trained model and BLEU after DP fine-tuning.
const RECORDED: (u64, f64, f64, f64) =
    (12, 2.994384113541888, 1.2868131525565527, 1.305902390123544);
