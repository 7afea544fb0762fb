//! Sweeps: one row per configuration, a Markdown table and an SVG plot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::*;

/// One configuration of a sweep and what it reached.
#[derive(Debug, Clone)]
pub struct SweepRow {
    /// `public only`, `non-private`, `DP full`, `DP-BiTFiT`, `DP last layers`.
    pub method: String,
    /// `automatic`, `Abadi C=1`, or `-`.
    pub clipping: String,
    /// Target ε (`None`: no privacy).
    pub target_epsilon: Option<f64>,
    /// ε spent.
    pub epsilon: Option<f64>,
    /// Accuracy or BLEU.
    pub metric: f64,
    /// Trainable parameters.
    pub trainable: u64,
    /// Steps.
    pub steps: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The sweep as a Markdown table (`metric_name`: `accuracy` or `BLEU`).
pub fn sweep_markdown(rows: &[SweepRow], metric_name: &str) -> String {
    let mut s = format!(
        "| method | clipping | target ε | ε spent | {metric_name} | trainable | steps | seconds |\n\
         |---|---|---|---|---|---|---|---|\n"
    );
    let opt = |v: Option<f64>| v.map_or("∞".to_string(), |v| format!("{v:.2}"));
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} | {} | {} | {:.0} |",
            r.method,
            r.clipping,
            opt(r.target_epsilon),
            opt(r.epsilon),
            r.metric,
            r.trainable,
            r.steps,
            r.seconds
        );
    }
    s
}

/// One configuration of a results sweep, for the example to run as an ordinary run.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// A folder-safe name (`runs/<name>` under the sweep's output folder).
    pub name: String,
    /// Fine-tune without privacy (the baseline); the privacy fields below are then unused.
    pub non_private: bool,
    /// Target ε of a private run (unused by the non-private one).
    pub target_epsilon: f64,
    /// What trains.
    pub freeze: FreezeKind,
    /// The clipping function.
    pub clipping: ClippingKind,
    /// Abadi's threshold C (unused by automatic clipping).
    pub max_norm: f64,
    /// A learning rate for this configuration, or the example's default.
    pub lr: Option<f64>,
}

impl SweepConfig {
    /// Applies the configuration to the shared training flags (quiet: the sweep prints rows).
    pub fn apply(&self, train: &mut PrivateTrainingArgs) {
        train.quiet = true;
        train.freeze = self.freeze;
        if !self.non_private {
            train.target_epsilon = self.target_epsilon;
            train.clipping = self.clipping;
            train.max_norm = self.max_norm;
        }
        if self.lr.is_some() {
            train.lr = self.lr;
        }
    }
}

/// What one run of a sweep reports.
#[derive(Clone, Debug)]
pub struct SweepOutcome {
    /// ε spent (ignored for the non-private run).
    pub epsilon: f64,
    /// Test accuracy or BLEU.
    pub metric: f64,
    /// The metric of the public pre-trained model alone, where the run measured it.
    pub pretrained_metric: Option<f64>,
    /// Trainable parameters.
    pub trainable: u64,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// The results sweep's flags, shared by the examples (`#[command(flatten)]`).
#[derive(clap::Args, Clone, Debug)]
pub struct SweepArgs {
    /// Run the results sweep (public only, non-private, DP full / DP-BiTFiT / DP last layers at
    /// each `--sweep-epsilons`, automatic clipping and Abadi at each `--sweep-max-norms`) and
    /// write `results.md` and `results.svg` to `--out`.
    #[arg(long)]
    pub sweep: bool,
    /// Target ε of the sweep.
    #[arg(long = "sweep-epsilons", value_delimiter = ',', default_values_t = [1.0, 3.0, 8.0])]
    pub epsilons: Vec<f64>,
    /// The target ε at which the sweep also runs Abadi clipping (default: every
    /// `--sweep-epsilons`).
    #[arg(long = "sweep-abadi-epsilons", value_delimiter = ',')]
    pub abadi_epsilons: Option<Vec<f64>>,
    /// Abadi clipping thresholds of the sweep (each at every freezing; empty: none).
    #[arg(long = "sweep-max-norms", value_delimiter = ',', default_values_t = [0.1, 1.0, 10.0])]
    pub max_norms: Vec<f64>,
    /// Learning rate of DP-BiTFiT in the sweep (default: the example's default for
    /// `--freeze bias`).
    #[arg(long = "sweep-bitfit-lr")]
    pub bitfit_lr: Option<f64>,
    /// Redraw `results.svg` from the `results.md` in `--out` (after merging or editing sweeps)
    /// instead of running anything.
    #[arg(long = "sweep-replot", conflicts_with = "sweep")]
    pub replot: bool,
}

/// A results sweep: non-private fine-tuning (and the public pre-trained model alone), then DP
/// full, DP-BiTFiT and DP last layers at each target ε, with automatic clipping and Abadi
/// clipping at each threshold. `run` runs one configuration as an ordinary run of the example.
/// `results.md` and `results.svg` are written to `out` after every configuration, so an
/// interrupted sweep keeps its rows.
pub fn run_sweep(
    grid: &SweepArgs,
    out: &Path,
    title: &str,
    metric_name: &str,
    mut run: impl FnMut(&SweepConfig) -> Result<SweepOutcome, Error>,
) -> Result<Vec<SweepRow>, Error> {
    let command = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let mut rows = Vec::new();
    let record = |rows: &mut Vec<SweepRow>, row: SweepRow| -> Result<(), Error> {
        rows.push(row);
        write_sweep(out, rows, &command, title, metric_name)?;
        eprintln!("{}", sweep_markdown(&rows[rows.len() - 1..], metric_name));
        Ok(())
    };
    let plain = SweepConfig {
        name: "non-private".into(),
        non_private: true,
        target_epsilon: f64::INFINITY,
        freeze: FreezeKind::None,
        clipping: ClippingKind::Automatic,
        max_norm: 0.0,
        lr: None,
    };
    let s = run(&plain)?;
    if let Some(metric) = s.pretrained_metric {
        let row = SweepRow {
            method: "public pre-training only".into(),
            clipping: "-".into(),
            target_epsilon: None,
            epsilon: Some(0.0),
            metric,
            trainable: 0,
            steps: 0,
            seconds: 0.0,
        };
        record(&mut rows, row)?;
    }
    let row = |method: &str, clipping: String, c: &SweepConfig, s: &SweepOutcome| SweepRow {
        method: method.into(),
        clipping,
        target_epsilon: (!c.non_private).then_some(c.target_epsilon),
        epsilon: (!c.non_private).then_some(s.epsilon),
        metric: s.metric,
        trainable: s.trainable,
        steps: s.steps,
        seconds: s.seconds,
    };
    record(&mut rows, row("non-private full", "-".into(), &plain, &s))?;
    let mut clippings = vec![(ClippingKind::Automatic, 0.0)];
    clippings.extend(grid.max_norms.iter().map(|&c| (ClippingKind::Abadi, c)));
    for &eps in &grid.epsilons {
        for (freeze, method) in [
            (FreezeKind::None, "DP full"),
            (FreezeKind::Bias, "DP-BiTFiT"),
            (FreezeKind::Head, "DP last layer"),
        ] {
            for &(clipping, max_norm) in &clippings {
                let abadi_here = grid
                    .abadi_epsilons
                    .as_ref()
                    .is_none_or(|at| at.contains(&eps));
                if clipping == ClippingKind::Abadi && !abadi_here {
                    continue;
                }
                let label = match clipping {
                    ClippingKind::Automatic => "automatic".to_string(),
                    ClippingKind::Abadi => format!("Abadi C={max_norm}"),
                };
                let config = SweepConfig {
                    name: format!("{method}-{label}-eps{eps}").replace([' ', '='], "_"),
                    non_private: false,
                    target_epsilon: eps,
                    freeze,
                    clipping,
                    max_norm,
                    lr: grid.bitfit_lr.filter(|_| freeze == FreezeKind::Bias),
                };
                let s = run(&config)?;
                record(&mut rows, row(method, label, &config, &s))?;
            }
        }
    }
    Ok(rows)
}

/// Reads a table written by [`sweep_markdown`] (inside `results.md`) back into rows; lines that
/// are not table rows are skipped. The metric's name comes from the header.
pub fn parse_sweep_markdown(text: &str) -> Result<(Vec<SweepRow>, String), Error> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("| method |"));
    let header = lines
        .next()
        .ok_or("no sweep table (a line starting with `| method |`)")?;
    let metric_name = header
        .split('|')
        .map(str::trim)
        .nth(5)
        .ok_or_else(|| format!("sweep table header without a metric column: {header}"))?
        .to_string();
    let epsilon = |cell: &str| -> Result<Option<f64>, Error> {
        match cell {
            "∞" => Ok(None),
            v => Ok(Some(v.parse()?)),
        }
    };
    let mut rows = Vec::new();
    for line in lines.filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, method, clipping, target, spent, metric, trainable, steps, seconds, _] = cells[..]
        else {
            return Err(format!("a sweep row has not 8 columns: {line}").into());
        };
        let row = (|| -> Result<SweepRow, Error> {
            Ok(SweepRow {
                method: method.into(),
                clipping: clipping.into(),
                target_epsilon: epsilon(target)?,
                epsilon: epsilon(spent)?,
                metric: metric.parse()?,
                trainable: trainable.parse()?,
                steps: steps.parse()?,
                seconds: seconds.parse()?,
            })
        })()
        .map_err(|e| format!("cannot read the sweep row `{line}`: {e}"))?;
        rows.push(row);
    }
    Ok((rows, metric_name))
}

/// `--sweep-replot`: redraws `out/results.svg` from `out/results.md`.
pub fn replot_sweep(out: &Path, title: &str) -> Result<PathBuf, Error> {
    let md = out.join("results.md");
    let text =
        std::fs::read_to_string(&md).map_err(|e| format!("cannot read {}: {e}", md.display()))?;
    let (rows, metric_name) = parse_sweep_markdown(&text)?;
    let svg_path = out.join("results.svg");
    std::fs::write(&svg_path, sweep_svg(&rows, title, &metric_name)?)?;
    eprintln!("sweep plot:   {}", svg_path.display());
    Ok(svg_path)
}

/// Write `results.md` (the table, with the command that produced it) and `results.svg` to `out`.
pub fn write_sweep(
    out: &Path,
    rows: &[SweepRow],
    command: &str,
    title: &str,
    metric_name: &str,
) -> Result<(PathBuf, PathBuf), Error> {
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let md = out.join("results.md");
    let svg_path = out.join("results.svg");
    std::fs::write(
        &md,
        format!(
            "Produced by `{command}`.\n\n{}",
            sweep_markdown(rows, metric_name)
        ),
    )?;
    std::fs::write(&svg_path, sweep_svg(rows, title, metric_name)?)?;
    eprintln!("sweep table:  {}", md.display());
    eprintln!("sweep plot:   {}", svg_path.display());
    Ok((md, svg_path))
}
