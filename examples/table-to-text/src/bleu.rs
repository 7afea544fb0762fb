//! Corpus BLEU-4 (Papineni et al. 2002) with multiple references: clipped n-gram precisions
//! for n = 1..4 summed over the corpus, geometric mean, brevity penalty against the reference
//! length closest to each hypothesis. Text is lower-cased and punctuation split off.

use std::collections::HashMap;

/// Lower-cased words with punctuation as separate tokens.
pub fn tokenize(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_alphanumeric() || c == '\'' {
            word.push(c);
        } else {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut m = HashMap::new();
    if tokens.len() >= n {
        for g in tokens.windows(n) {
            *m.entry(g).or_insert(0) += 1;
        }
    }
    m
}

// ANCHOR: bleu
/// Corpus BLEU-4 in 0..100 of `hypotheses` against their `references` (one or more each).
pub fn corpus_bleu(hypotheses: &[String], references: &[Vec<String>]) -> f64 {
    let (mut matched, mut total) = ([0usize; 4], [0usize; 4]);
    let (mut hyp_len, mut ref_len) = (0usize, 0usize);
    for (h, refs) in hypotheses.iter().zip(references) {
        let h = tokenize(h);
        let refs: Vec<Vec<String>> = refs.iter().map(|r| tokenize(r)).collect();
        hyp_len += h.len();
        // The reference length closest to the hypothesis (the shorter one on ties).
        ref_len += refs
            .iter()
            .map(|r| r.len())
            .min_by_key(|&l| (l.abs_diff(h.len()), l))
            .unwrap_or(0);
        for n in 1..=4 {
            let mut max_ref: HashMap<&[String], usize> = HashMap::new();
            for r in &refs {
                for (g, c) in ngrams(r, n) {
                    let e = max_ref.entry(g).or_insert(0);
                    *e = (*e).max(c);
                }
            }
            for (g, c) in ngrams(&h, n) {
                matched[n - 1] += c.min(max_ref.get(g).copied().unwrap_or(0));
                total[n - 1] += c;
            }
        }
    }
    if hyp_len == 0 || matched.contains(&0) {
        return 0.0;
    }
    let log_precision: f64 = (0..4)
        .map(|i| (matched[i] as f64 / total[i] as f64).ln())
        .sum::<f64>()
        / 4.0;
    let brevity = if hyp_len >= ref_len {
        0.0
    } else {
        1.0 - ref_len as f64 / hyp_len as f64
    };
    100.0 * (log_precision + brevity).exp()
}
// ANCHOR_END: bleu

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_is_100() {
        let h = vec!["The Eagle is a French coffee shop by the riverside.".to_string()];
        let r = vec![vec![h[0].clone()]];
        assert!((corpus_bleu(&h, &r) - 100.0).abs() < 1e-9);
    }

    #[test]
    fn known_value() {
        // 6 hypothesis tokens, reference of 7: precisions 6/6, 4/5, 2/4, 1/3 (the hypothesis
        // misses "the"), brevity penalty exp(1 - 7/6).
        let h = vec!["the eagle is by riverside .".to_string()];
        let r = vec![vec!["the eagle is by the riverside .".to_string()]];
        let p: f64 = (1.0f64 * 0.8 * 0.5 * (1.0 / 3.0)).powf(0.25);
        let expect = 100.0 * p * (1.0f64 - 7.0 / 6.0).exp();
        assert!(
            (corpus_bleu(&h, &r) - expect).abs() < 1e-9,
            "{} vs {expect}",
            corpus_bleu(&h, &r)
        );
        assert_eq!(corpus_bleu(&["x y".into()], &[vec!["a b c d".into()]]), 0.0);
    }
}
