//! CI-sized runs of the example: two DP steps of the tiny GPT-2 on the bundled sample, with
//! generation and BLEU on a few held-out meaning representations.

use burn_dp_table_to_text::{load, read_csv, run, sequences, Args, Tokenizer, SAMPLE};
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

/// Published artefacts (metrics.json, generations.tsv's held-out columns, the vocabulary and the
/// sequence length) must not depend on one private record: two training sets that differ in one
/// row give the same files apart from what the noised model computes.
#[test]
fn published_artefacts_do_not_depend_on_one_record() {
    let (train, _) = load(None).unwrap();
    let target = &train[0];
    let mut changed = false;
    let mut neighbour = String::new();
    for (i, line) in SAMPLE.lines().enumerate() {
        let row = read_csv(&format!("mr,ref\n{line}\n"))
            .ok()
            .and_then(|r| r.into_iter().next());
        match row {
            Some(r)
                if i > 0 && !changed && r.mr == target.mr && r.reference == target.reference =>
            {
                // Rare words and a much longer sentence: a vocabulary or length taken from the
                // data would change.
                let long = "Zyzzyva quokka xylophone ".repeat(12);
                neighbour.push_str(&format!("\"{}\",{}\n", r.mr, long.trim()));
                changed = true;
            }
            _ => {
                neighbour.push_str(line);
                neighbour.push('\n');
            }
        }
    }
    assert!(changed);
    let dir = std::env::temp_dir().join(format!("burn-dp-t2t-neighbours-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (d, d_prime) = (dir.join("d.csv"), dir.join("d_prime.csv"));
    std::fs::write(&d, SAMPLE).unwrap();
    std::fs::write(&d_prime, &neighbour).unwrap();
    let published = |data: &std::path::Path, out: &str| {
        let data = data.to_string_lossy().into_owned();
        let out = dir.join(out).to_string_lossy().into_owned();
        let s = run(Args::parse_from([
            "table-to-text",
            "--data",
            data.as_str(),
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
        for key in ["bleu", "seconds"] {
            m.as_object_mut().unwrap().remove(key);
        }
        m["curves"].as_object_mut().unwrap().remove("held_out_loss");
        for e in m["examples"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("generated");
        }
        let tsv =
            std::fs::read_to_string(s.outputs.metrics.with_file_name("generations.tsv")).unwrap();
        let held_out: Vec<String> = tsv
            .lines()
            .map(|l| {
                let c: Vec<&str> = l.split('\t').collect();
                format!("{}\t{}", c[0], c[2])
            })
            .collect();
        (m, held_out)
    };
    let (a, b) = (published(&d, "d"), published(&d_prime, "d_prime"));
    assert_eq!(a, b);
    std::fs::remove_dir_all(&dir).ok();
}
