//! Corpus BLEU-4 as sacreBLEU computes it (Post 2018, "A Call for Clarity in Reporting BLEU
//! Scores"; defaults `13a` tokenisation, case-sensitive, `exp` smoothing), so the example's score is
//! comparable with published E2E numbers.
//!
//! The `bleuscore` crate does the 13a tokenisation and the clipped n-gram statistics with the
//! reference length closest to each hypothesis (sacreBLEU's choice). Its corpus score gives 0 when
//! some n-gram order has no match; sacreBLEU instead smooths such an order (`exp`: the k-th order
//! without a match gets precision 1 / (2^k · total)), which this module adds.

use bleuscore::tokenizer::{Tokenizer, Tokenizer13a};
use bleuscore::{compute_score, RefLenMethod};

/// Maximum n-gram order (BLEU-4).
const ORDER: usize = 4;

// ANCHOR: bleu
/// Corpus BLEU-4 in 0..100 of `hypotheses` against their `references` (one or more each), as
/// sacreBLEU's `corpus_bleu` with default settings.
pub fn corpus_bleu(hypotheses: &[String], references: &[Vec<String>]) -> f64 {
    let pairs: Vec<(String, Vec<String>)> = hypotheses
        .iter()
        .zip(references)
        .filter(|(_, r)| !r.is_empty())
        .map(|(h, r)| (h.clone(), r.clone()))
        .collect();
    if pairs.is_empty() {
        return 0.0;
    }
    let (hyps, refs): (Vec<String>, Vec<Vec<String>>) = pairs.into_iter().unzip();
    let score = compute_score(&refs, &hyps, ORDER, false, RefLenMethod::Closest);
    if score.translation_length == 0 {
        return 0.0;
    }
    // n-grams of each order in the hypotheses (sacreBLEU's `totals`).
    let tokenizer = Tokenizer13a::new();
    let mut totals = [0usize; ORDER];
    for h in &hyps {
        let len = tokenizer.tokenize(h).len();
        for (n, total) in totals.iter_mut().enumerate() {
            *total += len.saturating_sub(n);
        }
    }
    let mut smooth = 1.0;
    let mut log_sum = 0.0;
    for (n, &p) in score.precisions.iter().enumerate() {
        if totals[n] == 0 {
            return 0.0;
        }
        let p = if p > 0.0 {
            p
        } else {
            smooth *= 2.0;
            1.0 / (smooth * totals[n] as f64)
        };
        log_sum += p.ln();
    }
    100.0 * score.brevity_penalty * (log_sum / ORDER as f64).exp()
}
// ANCHOR_END: bleu

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn identical_is_100() {
        let h = s(&["The Eagle is a French coffee shop by the riverside."]);
        let r = vec![vec![h[0].clone()]];
        assert!((corpus_bleu(&h, &r) - 100.0).abs() < 1e-9);
    }

    /// Reference values from sacreBLEU 2.6.0 (`sacrebleu.corpus_bleu(hyps, [refs1, refs2])`,
    /// default settings), computed with Python 3.11 on 2026-11-30.
    #[test]
    fn matches_sacrebleu() {
        let hyps = s(&[
            "The Eagle is a French coffee shop by the riverside.",
            "Aromi is a pub in the city centre with cheap prices.",
            "There is a cheap Italian restaurant called Zizzi.",
        ]);
        let refs1 = s(&[
            "The Eagle is a coffee shop serving French food by the riverside.",
            "Aromi is a cheap pub in the city centre.",
            "Zizzi is a cheap Italian restaurant.",
        ]);
        let refs2 = s(&[
            "By the riverside, The Eagle is a French coffee shop.",
            "In the city centre, Aromi is a pub with cheap prices.",
            "There is an Italian restaurant called Zizzi with cheap prices.",
        ]);
        let refs: Vec<Vec<String>> = (0..3)
            .map(|i| vec![refs1[i].clone(), refs2[i].clone()])
            .collect();
        // sacreBLEU: 76.4631619524232 (counts [32, 26, 19, 12], totals [32, 29, 26, 23]).
        assert!((corpus_bleu(&hyps, &refs) - 76.4631619524232).abs() < 1e-9);
        // An order without a match: sacreBLEU's exp smoothing gives 31.21900910291815
        // (counts [7, 4, 1, 0], totals [9, 7, 5, 3]), not 0.
        let hyps = s(&["the cat sat on the mat", "a dog ran"]);
        let refs = vec![s(&["the cat is on the mat"]), s(&["the dog ran away"])];
        assert!((corpus_bleu(&hyps, &refs) - 31.21900910291815).abs() < 1e-9);
    }

    #[test]
    fn empty_input_is_zero() {
        assert_eq!(corpus_bleu(&[], &[]), 0.0);
        assert_eq!(corpus_bleu(&s(&[""]), &[s(&["a b c d"])]), 0.0);
    }
}
