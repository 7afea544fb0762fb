//! `burn-dp audit`: an empirical lower bound on ε from the real pipeline (`burn_dp_audit`).
//!
//! The white-box audit fans its runs out to `--jobs` worker processes (this binary with the hidden
//! `--worker-runs`): burn-autodiff 0.21 can drop another thread's graph during a concurrent
//! backward pass (tracel-ai/burn#5573), so the trials run in processes, never in threads. Every
//! trial trains on `DpAutodiff<Flex>`; a worker's Flex uses one thread (`RAYON_NUM_THREADS=1`:
//! the workers already fill the cores).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use burn_dp::accounting::{AccountantKind, Schedule};
use burn_dp::{ClippingFn, DpError, PrivacyState};
use burn_dp_audit::{
    analyse_scores, one_run_bound, BlackBoxConfig, EvaluatedTest, GradientCanaryConfig, Scores,
    Side, TradeOff, WhiteBoxReport, World,
};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{ArgGroup, Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Map, Value};

use crate::plot;

/// The backend of the trials: burn's fast CPU backend.
type Inner = burn_dp::Flex;

/// `burn-dp audit` options.
#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("noise").required(true).args(["target_epsilon", "noise_multiplier"])))]
pub struct AuditArgs {
    /// What the observer sees and how membership is tested.
    #[arg(long, value_enum, default_value_t = AuditMode::WhiteBox)]
    mode: AuditMode,
    /// Clipping function.
    #[arg(long, value_enum)]
    clipping: ClippingKind,
    /// Abadi clipping threshold C (with --clipping abadi).
    #[arg(long, default_value_t = 1.0)]
    max_norm: f64,
    /// Automatic clipping's stability constant gamma.
    #[arg(long, default_value_t = 0.01)]
    gamma: f64,
    /// Calibrate sigma so that the audited run claims this epsilon.
    #[arg(long)]
    target_epsilon: Option<f64>,
    /// Use this noise multiplier sigma (the claimed epsilon follows from it).
    #[arg(long)]
    noise_multiplier: Option<f64>,
    /// Delta of the claim and of the bound.
    #[arg(long)]
    delta: f64,
    /// Accountant of the claimed epsilon.
    #[arg(long, default_value_t = AccountantKind::Prv, value_parser = claim_accountant())]
    accountant: AccountantKind,
    /// DP steps per audited run (default: 1, or 300 for black box; in the gradient-canary modes
    /// the observer sees every update).
    #[arg(long)]
    steps: Option<u64>,
    /// Poisson sampling rate q (default: 1, every example in every step; 0.1 for black box).
    #[arg(long)]
    sample_rate: Option<f64>,
    /// White box: runs of the pipeline (each observes --canaries canaries).
    #[arg(long, default_value_t = 20_000)]
    runs: usize,
    /// Canaries per run (default: 64 for white box, 1000 for one run, 500 for black box).
    #[arg(long)]
    canaries: Option<usize>,
    /// One run and black box: guesses on each side (default: a tenth of the canaries).
    #[arg(long)]
    guesses: Option<usize>,
    /// Background (ordinary) examples in the training set.
    #[arg(long)]
    background: Option<usize>,
    /// Confidence of each bound.
    #[arg(long, default_value_t = 0.95)]
    confidence: f64,
    /// Worker processes for the white-box runs (default: the available cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Where to write the SVG plot of the score distributions and the ROC curve.
    #[arg(long, default_value = "audit.svg")]
    plot: PathBuf,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Internal: run this many white-box runs and print their scores (worker process).
    #[arg(long, hide = true)]
    worker_runs: Option<usize>,
}

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuditMode {
    /// Many runs with gradient canaries; the observer sees every update (Nasr et al. 2023).
    WhiteBox,
    /// One run with many gradient canaries (Steinke, Nasr and Jagielski 2023).
    OneRun,
    /// One training run of a small classifier; canaries scored by their loss (Steinke et al.).
    BlackBox,
}

/// `--clipping`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ClippingKind {
    /// Automatic clipping (Bu et al. 2023).
    Automatic,
    /// Abadi et al. 2016 with threshold --max-norm.
    Abadi,
}

/// `--accountant` of the claim: the library's accountants whose ε is an upper bound (GDP is an
/// approximation, not a claim to audit).
fn claim_accountant() -> impl TypedValueParser<Value = AccountantKind> {
    PossibleValuesParser::new(
        AccountantKind::ALL
            .into_iter()
            .filter(|k| k.is_upper_bound())
            .filter_map(|k| k.to_possible_value()),
    )
    .try_map(|name| name.parse::<AccountantKind>())
}

/// Why the audit failed, and its exit status.
pub enum Failure {
    /// Invalid input: status 2.
    Invalid(String),
    /// Anything else: status 1.
    Failed(String),
}

impl Failure {
    /// Prints the reason and returns the exit status.
    pub fn report(self) -> ExitCode {
        match self {
            Failure::Invalid(m) => {
                eprintln!("burn-dp: error: {m}");
                ExitCode::from(2)
            }
            Failure::Failed(m) => {
                eprintln!("burn-dp: error: {m}");
                ExitCode::FAILURE
            }
        }
    }
}

impl From<DpError> for Failure {
    fn from(e: DpError) -> Self {
        match e {
            DpError::Accounting(burn_dp::accounting::AccountantError::Numerical(_)) => {
                Failure::Failed(e.to_string())
            }
            _ => Failure::Invalid(e.to_string()),
        }
    }
}

impl AuditArgs {
    fn clipping(&self) -> ClippingFn {
        match self.clipping {
            ClippingKind::Automatic => ClippingFn::Automatic { gamma: self.gamma },
            ClippingKind::Abadi => ClippingFn::Abadi {
                max_norm: self.max_norm,
            },
        }
    }

    /// σ given, or calibrated for the target over the audited steps.
    fn noise_multiplier(&self) -> Result<f64, Failure> {
        match (self.noise_multiplier, self.target_epsilon) {
            (Some(s), None) => Ok(s),
            (None, Some(eps)) => {
                let schedule =
                    Schedule::new(self.sample_rate(), self.steps()).map_err(DpError::from)?;
                Ok(
                    PrivacyState::for_target_epsilon(eps, self.delta, schedule, self.accountant)?
                        .noise_multiplier,
                )
            }
            _ => Err(Failure::Invalid(
                "give exactly one of --target-epsilon and --noise-multiplier".into(),
            )),
        }
    }

    fn steps(&self) -> u64 {
        self.steps.unwrap_or(match self.mode {
            AuditMode::BlackBox => 300,
            _ => 1,
        })
    }

    fn sample_rate(&self) -> f64 {
        self.sample_rate.unwrap_or(match self.mode {
            AuditMode::BlackBox => 0.1,
            _ => 1.0,
        })
    }

    fn canaries(&self) -> usize {
        self.canaries.unwrap_or(match self.mode {
            AuditMode::WhiteBox => 64,
            AuditMode::OneRun => 1000,
            AuditMode::BlackBox => 500,
        })
    }

    fn gradient_config(&self, sigma: f64) -> GradientCanaryConfig {
        GradientCanaryConfig {
            clipping: self.clipping(),
            noise_multiplier: sigma,
            sample_rate: self.sample_rate(),
            steps: self.steps(),
            delta: self.delta,
            accountant: self.accountant,
            canaries: self.canaries(),
            background: self.background.unwrap_or(32),
            physical_batch_size: 64,
        }
    }

    /// The arguments of a worker process running `runs` white-box runs with σ fixed.
    fn worker_args(&self, sigma: f64, runs: usize) -> Vec<String> {
        let mut a: Vec<String> = vec!["audit".into(), "--mode".into(), "white-box".into()];
        let mut push = |k: &str, v: String| {
            a.push(k.into());
            a.push(v);
        };
        let clipping = match self.clipping {
            ClippingKind::Automatic => "automatic",
            ClippingKind::Abadi => "abadi",
        };
        push("--clipping", clipping.into());
        push("--max-norm", self.max_norm.to_string());
        push("--gamma", self.gamma.to_string());
        push("--noise-multiplier", sigma.to_string());
        push("--delta", self.delta.to_string());
        push("--accountant", self.accountant.as_str().into());
        push("--steps", self.steps().to_string());
        push("--sample-rate", self.sample_rate().to_string());
        push("--canaries", self.canaries().to_string());
        push("--background", self.background.unwrap_or(32).to_string());
        push("--worker-runs", runs.to_string());
        a
    }
}

/// The command-line spelling of an enum value.
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

fn bar(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let template = format!("{label} {{bar:40}} {{pos}}/{{len}} {{elapsed}} (eta {{eta}})");
    bar.set_style(ProgressStyle::with_template(&template).expect("progress template"));
    bar
}

/// A worker process: runs, printing `progress` lines, then the scores as one JSON line.
fn worker(args: &AuditArgs, runs: usize) -> Result<String, Failure> {
    let sigma = args.noise_multiplier()?;
    let config = args.gradient_config(sigma);
    let device = Default::default();
    let scores = burn_dp_audit::collect_scores::<Inner>(&config, runs, &device, |_| {
        println!("progress");
    })?;
    serde_json::to_string(&scores).map_err(|e| Failure::Failed(e.to_string()))
}

/// Runs `runs` white-box runs in `jobs` worker processes and merges their scores.
fn fan_out(args: &AuditArgs, sigma: f64, runs: usize, jobs: usize) -> Result<Scores, Failure> {
    let exe = std::env::current_exe().map_err(|e| Failure::Failed(e.to_string()))?;
    let progress = bar(runs as u64, "audit runs");
    let (tx, rx) = mpsc::channel::<()>();
    let mut handles = Vec::new();
    for j in 0..jobs {
        let share = runs / jobs + usize::from(j < runs % jobs);
        if share == 0 {
            continue;
        }
        let mut child = Command::new(&exe)
            .args(args.worker_args(sigma, share))
            // One thread per worker: `jobs` workers already fill the cores.
            .env("RAYON_NUM_THREADS", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Failure::Failed(format!("starting a worker: {e}")))?;
        let stdout = child.stdout.take().expect("piped");
        let tx = tx.clone();
        handles.push(std::thread::spawn(move || -> Result<Scores, String> {
            let mut last = String::new();
            for line in BufReader::new(stdout).lines() {
                let line = line.map_err(|e| e.to_string())?;
                if line == "progress" {
                    let _ = tx.send(());
                } else {
                    last = line;
                }
            }
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!(
                    "a worker failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            serde_json::from_str(&last).map_err(|e| format!("worker output: {e}"))
        }));
    }
    drop(tx);
    for () in rx {
        progress.inc(1);
    }
    progress.finish();
    let mut scores = Scores::default();
    for h in handles {
        let part = h
            .join()
            .map_err(|_| Failure::Failed("a worker thread panicked".into()))?
            .map_err(Failure::Failed)?;
        scores.extend(part);
    }
    Ok(scores)
}

/// `burn-dp audit`: returns what to print.
pub fn run(args: AuditArgs) -> Result<String, Failure> {
    if let Some(runs) = args.worker_runs {
        return worker(&args, runs);
    }
    if !(args.confidence > 0.0 && args.confidence < 1.0) {
        return Err(Failure::Invalid(format!(
            "--confidence must be in (0, 1), got {}",
            args.confidence
        )));
    }
    let start = Instant::now();
    let sigma = args.noise_multiplier()?;
    let mut out = Map::new();
    out.insert("mode".into(), json!(value_name(args.mode)));
    out.insert("clipping".into(), json!(value_name(args.clipping)));
    match args.clipping() {
        ClippingFn::Automatic { gamma } => out.insert("gamma".into(), json!(gamma)),
        ClippingFn::Abadi { max_norm } => out.insert("max_norm".into(), json!(max_norm)),
    };
    out.insert("noise_multiplier".into(), json!(sigma));
    out.insert("sample_rate".into(), json!(args.sample_rate()));
    out.insert("steps".into(), json!(args.steps()));
    out.insert("delta".into(), json!(args.delta));
    out.insert("accountant".into(), json!(args.accountant));
    out.insert("confidence".into(), json!(args.confidence));
    let (text, scores, marks) = match args.mode {
        AuditMode::WhiteBox => {
            let config = args.gradient_config(sigma);
            config.validate()?;
            if args.runs == 0 {
                return Err(Failure::Invalid("--runs must be positive".into()));
            }
            let jobs = args
                .jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .clamp(1, args.runs);
            let scores = fan_out(&args, sigma, args.runs, jobs)?;
            let report = WhiteBoxReport::from_scores(&config, args.runs, &scores, args.confidence)?;
            let a = &report.analysis;
            let cp = &a.clopper_pearson;
            out.insert("epsilon".into(), json!(report.claimed.epsilon));
            out.insert("epsilon_lower_bound".into(), json!(cp.epsilon_lower_bound));
            out.insert(
                "epsilon_lower_bound_gdp".into(),
                json!(a.epsilon_lower_bound_gdp),
            );
            out.insert("gdp_mu_lower_bound".into(), json!(a.gdp.gdp_mu_lower_bound));
            out.insert("gdp_mu_estimate".into(), json!(a.gdp_mu_estimate));
            out.insert("gdp_mu_expected".into(), json!(report.gdp_mu_expected));
            // The μ → ε step assumes a Gaussian trade-off curve: true without subsampling.
            let gaussian = args.sample_rate() >= 1.0;
            out.insert("gdp_bound_assumption_holds".into(), json!(gaussian));
            out.insert("runs".into(), json!(args.runs));
            out.insert("jobs".into(), json!(jobs));
            out.insert("canaries_per_run".into(), json!(config.canaries));
            out.insert("observations".into(), json!(scores.len()));
            out.insert("tpr_lower".into(), json!(cp.hit_rate.lower));
            out.insert("fpr_upper".into(), json!(cp.false_rate.upper));
            out.insert("threshold".into(), json!(cp.test.threshold));
            let text = format!(
                "claimed epsilon = {:.4} at delta = {:e} ({}, sigma = {sigma:.4}, {} step(s), q = {})\n\
                 epsilon lower bound = {:.4} (Clopper-Pearson, {:.0} % confidence, distribution-free)\n\
                 epsilon lower bound = {} from Gaussian-DP mu >= {:.4} ({})\n\
                 mu estimate = {:.4}{}; {} runs x {} canaries = {} observations, {jobs} processes",
                report.claimed.epsilon,
                args.delta,
                report.claimed.accountant,
                args.steps(),
                args.sample_rate(),
                cp.epsilon_lower_bound,
                args.confidence * 100.0,
                a.epsilon_lower_bound_gdp
                    .map_or("none".to_string(), |e| format!("{e:.4}")),
                a.gdp.gdp_mu_lower_bound,
                if gaussian {
                    "assumes a Gaussian trade-off, as one unsubsampled Gaussian step has"
                } else {
                    "NOT a bound under Poisson subsampling: the trade-off is not Gaussian"
                },
                a.gdp_mu_estimate,
                report
                    .gdp_mu_expected
                    .map(|m| format!(" (the Gaussian mechanism's: {m:.4})"))
                    .unwrap_or_default(),
                args.runs,
                config.canaries,
                scores.len()
            );
            let marks = plot::Marks {
                claimed_epsilon: report.claimed.epsilon,
                bound_epsilon: cp.epsilon_lower_bound,
                delta: args.delta,
                point: Some(roc_corner(cp)),
                threshold: Some(cp.test.threshold),
            };
            (text, scores, marks)
        }
        AuditMode::OneRun => {
            let config = args.gradient_config(sigma);
            config.validate()?;
            let k = args.guesses.unwrap_or(config.canaries / 10);
            let claimed = config.claimed_epsilon()?;
            let progress = bar(1, "one run");
            let run = config.run::<Inner>(&config.draw_membership(), &Default::default())?;
            progress.finish();
            let b = one_run_bound(
                &run.scores,
                &run.membership,
                k,
                k,
                args.delta,
                args.confidence,
            )?;
            let text = one_run_text(&b, claimed.epsilon, &args, sigma);
            insert_one_run(&mut out, &b, claimed.epsilon);
            let marks = plot::Marks {
                claimed_epsilon: claimed.epsilon,
                bound_epsilon: b.epsilon_lower_bound,
                delta: args.delta,
                point: None,
                threshold: None,
            };
            (text, run.into_scores(), marks)
        }
        AuditMode::BlackBox => {
            let canaries = args.canaries();
            let config = BlackBoxConfig {
                clipping: args.clipping(),
                noise_multiplier: sigma,
                sample_rate: args.sample_rate(),
                steps: args.steps(),
                delta: args.delta,
                accountant: args.accountant,
                learning_rate: 0.5,
                examples: args.background.unwrap_or(1000),
                canaries,
                guesses_in: args.guesses.unwrap_or(canaries / 10),
                guesses_out: args.guesses.unwrap_or(canaries / 10),
                physical_batch_size: 256,
            };
            let progress = bar(args.steps(), "training");
            let o =
                config.run::<Inner>(&Default::default(), args.confidence, |_| progress.inc(1))?;
            progress.finish();
            let text = one_run_text(&o.bound, o.claimed.epsilon, &args, sigma);
            insert_one_run(&mut out, &o.bound, o.claimed.epsilon);
            let marks = plot::Marks {
                claimed_epsilon: o.claimed.epsilon,
                bound_epsilon: o.bound.epsilon_lower_bound,
                delta: args.delta,
                point: None,
                threshold: None,
            };
            let mut scores = Scores::default();
            for (m, s) in o.membership.iter().zip(&o.scores) {
                if *m {
                    scores.with.push(*s);
                } else {
                    scores.without.push(*s);
                }
            }
            (text, scores, marks)
        }
    };
    // A check of the statistics on the plotted scores (not reported as a bound for one-run modes).
    if args.mode != AuditMode::WhiteBox && scores.without.len() >= 4 && scores.with.len() >= 4 {
        if let Ok(a) = analyse_scores(&scores, args.delta, args.confidence, TradeOff::Unknown) {
            out.insert("gdp_mu_estimate".into(), json!(a.gdp_mu_estimate));
        }
    }
    let svg = plot::audit_svg(
        &scores,
        &marks,
        &format!(
            "burn-dp audit --mode {} --clipping {}",
            value_name(args.mode),
            value_name(args.clipping)
        ),
    )
    .map_err(Failure::Failed)?;
    std::fs::write(&args.plot, svg)
        .map_err(|e| Failure::Failed(format!("{}: {e}", args.plot.display())))?;
    out.insert("plot".into(), json!(args.plot.display().to_string()));
    out.insert("seconds".into(), json!(start.elapsed().as_secs_f64()));
    if args.json {
        Ok(Value::Object(out).to_string())
    } else {
        Ok(format!("{text}\nplot: {}", args.plot.display()))
    }
}

/// The conservative corner of a test's confidence box in the ROC's coordinates
/// (FPR = P₀(score ≥ t), TPR = P₁(score ≥ t)).
fn roc_corner(t: &EvaluatedTest) -> (f64, f64) {
    let (hit, false_) = (t.hit_rate, t.false_rate);
    match (t.test.side, t.test.points_to) {
        (Side::AtOrAbove, World::WithCanary) => (false_.upper, hit.lower),
        (Side::Below, World::WithoutCanary) => (1.0 - hit.lower, 1.0 - false_.upper),
        (Side::AtOrAbove, World::WithoutCanary) => (hit.lower, false_.upper),
        (Side::Below, World::WithCanary) => (1.0 - false_.upper, 1.0 - hit.lower),
    }
}

fn one_run_text(
    b: &burn_dp_audit::OneRunBound,
    claimed: f64,
    args: &AuditArgs,
    sigma: f64,
) -> String {
    format!(
        "claimed epsilon = {claimed:.4} at delta = {:e} (sigma = {sigma:.4}, {} step(s), q = {})\n\
         epsilon lower bound = {:.4} ({:.0} % confidence; {} of {} guesses correct, {} canaries)",
        args.delta,
        args.steps(),
        args.sample_rate(),
        b.epsilon_lower_bound,
        args.confidence * 100.0,
        b.correct,
        b.guesses,
        b.canaries
    )
}

fn insert_one_run(out: &mut Map<String, Value>, b: &burn_dp_audit::OneRunBound, claimed: f64) {
    out.insert("epsilon".into(), json!(claimed));
    out.insert("epsilon_lower_bound".into(), json!(b.epsilon_lower_bound));
    out.insert("canaries".into(), json!(b.canaries));
    out.insert("guesses".into(), json!(b.guesses));
    out.insert("correct_guesses".into(), json!(b.correct));
}
