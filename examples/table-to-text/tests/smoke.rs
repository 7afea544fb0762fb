//! CI-sized runs of the example: two DP steps of the tiny GPT-2 on the bundled sample, with
//! generation and BLEU on a few held-out meaning representations.

use burn_dp_table_to_text::{load, read_csv, run, sequences, Args, Tokenizer};
use clap::Parser;

fn args(extra: &[&str]) -> Args {
    let out = std::env::temp_dir().join(format!(
        "burn-dp-t2t-smoke-{}-{}",
        std::process::id(),
        extra.join("_").replace('-', "")
    ));
    let out = out.to_string_lossy().into_owned();
    let mut argv = vec![
        "table-to-text",
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
    }
}

#[test]
fn bundled_sample_and_tokenizer_offline() {
    let (train, test) = load(None).unwrap();
    assert!(train.len() >= 50 && !test.is_empty());
    // GPT-2's BPE from the crate's bundled vocabulary (no network).
    let tok = Tokenizer::gpt2().unwrap();
    assert_eq!(tok.encode("Hello world"), [15496, 995]);
    assert_eq!(
        tok.decode(&tok.encode(" The Eagle is a pub.")),
        " The Eagle is a pub."
    );
    let compact = Tokenizer::compact(["name[The Eagle] =", " The Eagle is a pub."]).unwrap();
    let seq = sequences(
        &[burn_dp_table_to_text::Row {
            mr: "name[The Eagle]".into(),
            reference: "The Eagle is a pub.".into(),
        }],
        &compact,
        64,
    );
    let prompt_len = compact.encode("name[The Eagle] =").len();
    let sentence_len = compact.encode(" The Eagle is a pub.").len() + 1;
    assert_eq!(seq.len, prompt_len + sentence_len);
    assert_eq!(seq.mask.iter().sum::<f32>() as usize, sentence_len);
    assert_eq!(
        compact.decode(&compact.encode(" The Eagle is a pub.")),
        " The Eagle is a pub."
    );
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
