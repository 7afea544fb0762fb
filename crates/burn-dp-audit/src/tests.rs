//! Audits of the real pipeline (correct: bound ≤ ε) and of pipelines broken on purpose, built
//! here only (bound > ε). Sized to separate on 2 cores in a few seconds, not to be tight.

use burn::backend::NdArray;
use burn::optim::SgdConfig;
use burn::tensor::{Tensor, TensorData};
use burn_dp_accountant::AccountantKind;

use super::*;
use burn_dp::{
    clipped_backward_masked, ClippingFn, DpAutodiff, DpOptimizer, NoiseSource, PerSampleConfig,
    PhysicalBatch, PoissonSampler,
};

type Inner = NdArray<f32>;
type Dp = DpAutodiff<Inner>;

/// σ = 2 for one full-batch step: the RDP accountant claims ε ≈ 2.17 at δ = 1e-5 (the Gaussian
/// mechanism's exact ε is 1.99, μ = 0.5).
const SIGMA: f64 = 2.0;
/// Runs of a broken pipeline (150 × 64 = 9,600 observations): enough to separate.
const RUNS: usize = 150;
/// Runs of the correct pipeline (38,400 observations): the bound then sits a few standard errors
/// below the true ε (1.99), well clear of the claim (2.17).
const RUNS_CORRECT: usize = 600;

// ANCHOR: audit_config
fn config(clipping: ClippingFn, canaries: usize) -> GradientCanaryConfig {
    GradientCanaryConfig {
        clipping,
        noise_multiplier: SIGMA,
        sample_rate: 1.0,
        steps: 1,
        delta: 1e-5,
        accountant: AccountantKind::Rdp,
        canaries,
        background: 32,
        physical_batch_size: 64,
    }
}
// ANCHOR_END: audit_config

const CLIPPINGS: [ClippingFn; 2] = [ClippingFn::AUTOMATIC, ClippingFn::Abadi { max_norm: 0.5 }];

/// How a test pipeline is broken.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Breakage {
    /// The optimizer adds noise with σ/2 while ε is claimed for σ.
    NoiseHalved,
    /// The canaries' gradients are added to the sum without clipping.
    CanaryNotClipped,
    /// The canaries' rows go through two physical batches of the same logical batch.
    CanaryCountedTwice,
}

/// One run of a broken pipeline (q = 1): the background in one physical batch, the canaries that
/// are in handled as `breakage` says, then the DP step; scored like the real one.
fn broken_run(c: &GradientCanaryConfig, membership: &[bool], breakage: Breakage) -> CanaryRun {
    let dev = Default::default();
    if breakage == Breakage::NoiseHalved {
        let mut quieter = c.clone();
        quieter.noise_multiplier /= 2.0; // silently: the claim below stays the one for σ
        return quieter.run::<Inner>(membership, &dev).unwrap();
    }
    let data = c.dataset(membership);
    let background: Vec<usize> = (0..c.background).collect();
    let canaries: Vec<usize> = (c.background..data.len()).collect();
    let per_sample = PerSampleConfig::new(c.clipping);
    let mut optim = DpOptimizer::new(
        SgdConfig::new().init::<Dp, LinearProbe<Dp>>(),
        per_sample.clone(),
        c.privacy_state().unwrap(),
        // The divisor q·N over every canary, as the real run has.
        PoissonSampler::new(
            c.background + c.canaries,
            c.sample_rate,
            c.physical_batch_size,
            NoiseSource::Os,
        )
        .unwrap(),
        NoiseSource::Os,
    )
    .unwrap();
    let mut model = LinearProbe::<Dp>::new(c.dim(), &dev);
    let mut scores = vec![0.0; c.canaries];
    for _ in 0..c.steps {
        let before = model.weights();
        let x = c.inputs::<Inner>(&data, &background, &dev);
        backward_unpadded(&mut optim, &model, model.losses(x));
        if !canaries.is_empty() {
            match breakage {
                Breakage::CanaryCountedTwice => {
                    for _ in 0..2 {
                        let x = c.inputs::<Inner>(&data, &canaries, &dev);
                        backward_unpadded(&mut optim, &model, model.losses(x));
                    }
                }
                // ANCHOR: broken_unclipped
                Breakage::CanaryNotClipped => {
                    let x = c.inputs::<Inner>(&data, &canaries, &dev);
                    let losses = model.losses(x);
                    let rows = PhysicalBatch::unpadded((0..losses.dims()[0]).collect());
                    let mut clipped =
                        clipped_backward_masked(&per_sample, &model, losses, &rows).unwrap();
                    // Replace the clipped sum by the raw one: each gradient is its input.
                    let raw: Vec<f32> = (0..c.dim())
                        .map(|k| canaries.iter().map(|&i| data[i][k]).sum())
                        .collect();
                    clipped.sums.insert(
                        model.linear.weight.id,
                        Tensor::from_data(TensorData::new(raw, [c.dim()]), &dev),
                    );
                    optim.accumulate(clipped).unwrap();
                }
                // ANCHOR_END: broken_unclipped
                Breakage::NoiseHalved => unreachable!(),
            }
        }
        model = optim.step(AUDIT_LR, model).unwrap();
        for (s, d) in scores
            .iter_mut()
            .zip(c.score_step(&before, &model.weights()))
        {
            *s += d;
        }
    }
    CanaryRun {
        membership: membership.to_vec(),
        scores,
    }
}

fn broken_scores(c: &GradientCanaryConfig, runs: usize, breakage: Breakage) -> Scores {
    let mut scores = Scores::default();
    for _ in 0..runs {
        scores.extend(broken_run(c, &c.draw_membership(), breakage).into_scores());
    }
    scores
}

#[test]
fn white_box_bounds_of_the_real_pipeline_stay_below_epsilon() {
    for clipping in CLIPPINGS {
        // ANCHOR: white_box_audit
        let c = config(clipping, 64);
        let (report, scores) =
            white_box_audit::<Inner>(&c, RUNS_CORRECT, 0.95, &Default::default(), |_| {}).unwrap();
        let eps = report.claimed.epsilon;
        let a = &report.analysis;
        // ANCHOR_END: white_box_audit
        eprintln!(
            "{clipping:?}: claimed {eps:.3}, CP bound {:.3}, GDP bound {:.3}, mu estimate {:.3} \
             (expected 0.5), {} observations",
            a.clopper_pearson.epsilon_lower_bound,
            a.epsilon_lower_bound_gdp.unwrap_or(f64::NAN),
            a.gdp_mu_estimate,
            scores.len()
        );
        assert!((eps - 2.1657).abs() < 1e-3, "{eps}");
        assert!(a.clopper_pearson.epsilon_lower_bound <= eps, "{a:?}");
        assert!(a.epsilon_lower_bound_gdp.expect("q = 1") <= eps, "{a:?}");
        // The scores are those of the Gaussian mechanism with μ = 1/σ.
        assert!((a.gdp_mu_estimate - 0.5).abs() < 0.1, "{a:?}");
    }
}

#[test]
fn white_box_bounds_of_broken_pipelines_exceed_epsilon() {
    for clipping in CLIPPINGS {
        let c = config(clipping, 64);
        let eps = c.claimed_epsilon().unwrap().epsilon;
        for breakage in [
            Breakage::NoiseHalved,
            Breakage::CanaryNotClipped,
            Breakage::CanaryCountedTwice,
        ] {
            let scores = broken_scores(&c, RUNS, breakage);
            let a = analyse_scores(&scores, c.delta, 0.95, c.trade_off()).unwrap();
            eprintln!(
                "{clipping:?} {breakage:?}: claimed {eps:.3}, CP bound {:.3}, GDP bound {:.3}, \
                 mu estimate {:.3}",
                a.clopper_pearson.epsilon_lower_bound,
                a.epsilon_lower_bound_gdp.unwrap_or(f64::NAN),
                a.gdp_mu_estimate
            );
            // μ doubles (σ halved, or the canary counted twice): the Gaussian-DP bound, which
            // these scores (Gaussian by construction) make valid, separates.
            assert!(
                a.epsilon_lower_bound_gdp.expect("q = 1") > eps,
                "{breakage:?}: {a:?}"
            );
            if breakage == Breakage::CanaryNotClipped {
                // Ten times the sensitivity: even the distribution-free bound separates.
                assert!(a.clopper_pearson.epsilon_lower_bound > eps, "{a:?}");
            }
        }
    }
}

#[test]
fn one_run_gradient_canaries_separate_correct_from_unclipped() {
    let c = config(ClippingFn::AUTOMATIC, 1000);
    let eps = c.claimed_epsilon().unwrap().epsilon;
    let correct = c
        .run::<Inner>(&c.draw_membership(), &Default::default())
        .unwrap();
    let b = one_run_bound(
        &correct.scores,
        &correct.membership,
        100,
        100,
        c.delta,
        0.95,
    )
    .unwrap();
    eprintln!("one run, correct: {b:?} (claimed {eps:.3})");
    assert!(b.epsilon_lower_bound <= eps, "{b:?}");
    let broken = broken_run(&c, &c.draw_membership(), Breakage::CanaryNotClipped);
    let b = one_run_bound(&broken.scores, &broken.membership, 100, 100, c.delta, 0.95).unwrap();
    eprintln!("one run, unclipped: {b:?}");
    assert!(b.epsilon_lower_bound > eps, "{b:?}");
}

#[test]
fn black_box_one_run_stays_below_epsilon() {
    let c = BlackBoxConfig {
        clipping: ClippingFn::AUTOMATIC,
        noise_multiplier: 1.0,
        sample_rate: 0.25,
        steps: 8,
        delta: 1e-5,
        accountant: AccountantKind::Rdp,
        learning_rate: 0.5,
        examples: 64,
        canaries: 64,
        guesses_in: 8,
        guesses_out: 8,
        physical_batch_size: 32,
    };
    let out = c.run::<Inner>(&Default::default(), 0.95, |_| {}).unwrap();
    eprintln!(
        "black box: {:?}, claimed {:.3}",
        out.bound, out.claimed.epsilon
    );
    assert_eq!(out.scores.len(), 64);
    assert!(out.bound.epsilon_lower_bound <= out.claimed.epsilon);
}

#[test]
fn bad_input_is_a_typed_error() {
    let mut c = config(ClippingFn::AUTOMATIC, 4);
    assert!(c.run::<Inner>(&[true], &Default::default()).is_err());
    c.background = 0;
    assert!(c.validate().is_err());
    let few = Scores {
        without: vec![0.0; 3],
        with: vec![1.0; 10],
    };
    assert!(analyse_scores(&few, 1e-5, 0.95, TradeOff::Unknown).is_err());
    let nan = Scores {
        without: vec![0.0, 1.0, 2.0, f64::NAN],
        with: vec![1.0; 10],
    };
    assert!(analyse_scores(&nan, 1e-5, 0.95, TradeOff::Unknown).is_err());
    assert!(one_run_bound(&[1.0, 2.0], &[true, false], 2, 1, 1e-5, 0.95).is_err());
}

/// `DpOptimizer::backward` on a physical batch whose rows are all real.
fn backward_unpadded<O>(
    optim: &mut DpOptimizer<O, Inner>,
    model: &LinearProbe<Dp>,
    losses: Tensor<Dp, 1>,
) {
    let rows = PhysicalBatch::unpadded((0..losses.dims()[0]).collect());
    optim.backward(model, losses, &rows).unwrap();
}
