//! `burn-dp`: privacy accounting and noise calibration for DP-SGD from the command line.
//!
//! ```text
//! burn-dp epsilon --sample-rate 0.01 --noise-multiplier 1.0 --steps 1000 --delta 1e-5 --accountant prv
//! burn-dp noise --target-epsilon 3 --delta 1e-5 --dataset-size 60000 --batch-size 256 --epochs 10
//! burn-dp audit --clipping automatic --target-epsilon 2 --delta 1e-5 --json
//! ```
//!
//! Invalid input (or an unreachable target ε) exits with status 2 and a one-line reason on
//! stderr; a computation that hits numerical limits exits with status 1.
//!
//! `--accountant gdp` only reports ε (an approximation, marked `"upper_bound": false` in JSON):
//! `noise` refuses it with status 2, because a σ calibrated on an approximation that can
//! under-report ε (q = 0.001, 100 steps, ε = 1: σ ≈ 0.39, where RDP bounds ε by 7.0) would not
//! reach the target; the library refuses it the same way.

use std::process::ExitCode;

mod audit;
mod plot;

use burn_dp_accountant::{
    calibrate_noise_multiplier, Accountant, AccountantError, AccountantKind, CalibrationOptions,
    Epsilon, History, HistoryEntry, PrivacyAccountant, PrvAccountant, PrvOptions, Schedule,
};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

#[derive(Parser, Debug)]
#[command(
    name = "burn-dp",
    version,
    about = "Differential privacy accounting for DP-SGD"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The epsilon spent by a run with a given noise multiplier.
    #[command(allow_negative_numbers = true)]
    Epsilon {
        /// Noise multiplier sigma (noise std / clipping norm).
        #[arg(long)]
        noise_multiplier: f64,
        #[command(flatten)]
        common: Common,
    },
    /// The noise multiplier that reaches a target epsilon.
    #[command(allow_negative_numbers = true)]
    Noise {
        /// Target epsilon.
        #[arg(long)]
        target_epsilon: f64,
        /// Bisection stops once epsilon is within this distance below the target.
        #[arg(long, default_value_t = 0.01)]
        epsilon_tolerance: f64,
        #[command(flatten)]
        common: Common,
    },
    /// An empirical lower bound on epsilon, measured by auditing the real DP pipeline.
    Audit(audit::AuditArgs),
}

/// Options shared by both commands.
#[derive(Args, Debug)]
struct Common {
    /// Target delta.
    #[arg(long)]
    delta: f64,
    /// Accounting method.
    #[arg(long, value_enum, default_value_t = AccountantKind::Rdp)]
    accountant: AccountantKind,
    /// Poisson sampling rate q (with --steps).
    #[arg(long, requires = "steps", conflicts_with_all = ["dataset_size", "batch_size", "epochs"])]
    sample_rate: Option<f64>,
    /// Number of steps (with --sample-rate).
    #[arg(long, requires = "sample_rate")]
    steps: Option<u64>,
    /// Dataset size N (with --batch-size and --epochs: q = B/N, steps = ceil(E N / B)).
    #[arg(long, requires_all = ["batch_size", "epochs"])]
    dataset_size: Option<usize>,
    /// Expected batch size B.
    #[arg(long, requires_all = ["dataset_size", "epochs"])]
    batch_size: Option<usize>,
    /// Number of epochs E.
    #[arg(long, requires_all = ["dataset_size", "batch_size"])]
    epochs: Option<u64>,
    /// PRV only: half-width of the guaranteed epsilon interval.
    #[arg(long, default_value_t = burn_dp_accountant::prv::DEFAULT_EPS_ERROR)]
    eps_error: f64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

impl Common {
    fn schedule(&self) -> Result<Schedule, AccountantError> {
        match (
            self.sample_rate,
            self.steps,
            self.dataset_size,
            self.batch_size,
            self.epochs,
        ) {
            (Some(q), Some(t), None, None, None) => Schedule::new(q, t),
            (None, None, Some(n), Some(b), Some(e)) => Schedule::from_epochs(n, b, e),
            _ => Err(AccountantError::InvalidSchedule(
                "give either --sample-rate and --steps, or --dataset-size, --batch-size and \
                 --epochs"
                    .into(),
            )),
        }
    }

    fn accountant(&self) -> PrivacyAccountant {
        match self.accountant {
            AccountantKind::Prv => PrivacyAccountant::Prv(PrvAccountant {
                history: History::new(),
                options: PrvOptions {
                    eps_error: self.eps_error,
                    ..PrvOptions::default()
                },
            }),
            kind => PrivacyAccountant::new(kind),
        }
    }

    /// The inputs, as JSON fields.
    fn inputs(&self, schedule: &Schedule) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("accountant".into(), json!(self.accountant));
        m.insert("delta".into(), json!(self.delta));
        m.insert("sample_rate".into(), json!(schedule.sample_rate));
        m.insert("steps".into(), json!(schedule.steps));
        if let (Some(n), Some(b), Some(e)) = (self.dataset_size, self.batch_size, self.epochs) {
            m.insert("dataset_size".into(), json!(n));
            m.insert("batch_size".into(), json!(b));
            m.insert("epochs".into(), json!(e));
        }
        if self.accountant == AccountantKind::Prv {
            m.insert("eps_error".into(), json!(self.eps_error));
        }
        m
    }
}

/// Adds the epsilon fields (`epsilon`, and PRV bounds / RDP order) to a JSON object.
fn epsilon_fields(m: &mut Map<String, Value>, eps: &Epsilon, key: &str) {
    m.insert(key.into(), json!(eps.epsilon));
    m.insert("upper_bound".into(), json!(eps.accountant.is_upper_bound()));
    if let Some(b) = eps.bounds {
        m.insert("epsilon_estimate".into(), json!(eps.estimate));
        m.insert("epsilon_lower".into(), json!(b.lower));
        m.insert("epsilon_upper".into(), json!(b.upper));
    }
    if let Some(order) = eps.optimal_order {
        m.insert("optimal_order".into(), json!(order));
    }
}

/// Human-readable epsilon line.
fn describe(eps: &Epsilon) -> String {
    let mut s = format!(
        "epsilon = {:.6} at delta = {:e} ({})",
        eps.epsilon, eps.delta, eps.accountant
    );
    if let Some(b) = eps.bounds {
        s += &format!(
            "; estimate {:.6}, bounds [{:.6}, {:.6}]",
            eps.estimate, b.lower, b.upper
        );
    }
    if let Some(order) = eps.optimal_order {
        s += &format!("; optimal RDP order {order}");
    }
    if eps.accountant == AccountantKind::Gdp {
        s += "; GDP is a CLT approximation, not a guarantee";
    }
    s
}

fn run(command: Command) -> Result<String, AccountantError> {
    match command {
        Command::Epsilon {
            noise_multiplier,
            common,
        } => {
            let schedule = common.schedule()?;
            let mut acc = common.accountant();
            acc.history_mut().push(HistoryEntry::new(
                noise_multiplier,
                schedule.sample_rate,
                schedule.steps,
            )?)?;
            let eps = acc.epsilon(common.delta)?;
            if common.json {
                let mut m = common.inputs(&schedule);
                m.insert("noise_multiplier".into(), json!(noise_multiplier));
                epsilon_fields(&mut m, &eps, "epsilon");
                Ok(Value::Object(m).to_string())
            } else {
                Ok(format!(
                    "{}\n  noise multiplier {noise_multiplier}, sample rate {}, {} steps",
                    describe(&eps),
                    schedule.sample_rate,
                    schedule.steps
                ))
            }
        }
        Command::Noise {
            target_epsilon,
            epsilon_tolerance,
            common,
        } => {
            let schedule = common.schedule()?;
            let options = CalibrationOptions {
                epsilon_tolerance,
                ..CalibrationOptions::default()
            };
            let cal = calibrate_noise_multiplier(
                &common.accountant(),
                target_epsilon,
                common.delta,
                schedule,
                &options,
            )?;
            if common.json {
                let mut m = common.inputs(&schedule);
                m.insert("target_epsilon".into(), json!(target_epsilon));
                m.insert("noise_multiplier".into(), json!(cal.noise_multiplier));
                epsilon_fields(&mut m, &cal.epsilon, "epsilon");
                Ok(Value::Object(m).to_string())
            } else {
                Ok(format!(
                    "noise multiplier = {} for target epsilon {target_epsilon}\n  achieves {}\n  \
                     sample rate {}, {} steps",
                    cal.noise_multiplier,
                    describe(&cal.epsilon),
                    schedule.sample_rate,
                    schedule.steps
                ))
            }
        }
        Command::Audit(_) => Err(AccountantError::InvalidOption(
            "the audit command is dispatched by main".into(),
        )),
    }
}

fn main() -> ExitCode {
    // Clap reports its own usage errors with status 2.
    let cli = Cli::parse();
    if let Command::Audit(args) = cli.command {
        return match audit::run(args) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(failure) => failure.report(),
        };
    }
    match run(cli.command) {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("burn-dp: error: {e}");
            match e {
                AccountantError::Numerical(_) => ExitCode::FAILURE,
                _ => ExitCode::from(2),
            }
        }
    }
}
