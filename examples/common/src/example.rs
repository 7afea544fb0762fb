//! The examples' shared `main`.

use std::path::PathBuf;

use crate::*;

/// The flags of an example that the shared [`example_main`] and [`sweep`] read and set.
pub struct SharedFlags<'a> {
    /// The private-training flags.
    pub train: &'a mut PrivateTrainingArgs,
    /// `--non-private`.
    pub non_private: &'a mut bool,
    /// The results sweep's flags.
    pub results: &'a mut SweepArgs,
    /// The data-parallel flags.
    pub distributed: &'a mut DistributedArgs,
    /// `--out`.
    pub out: &'a mut PathBuf,
}

/// What one ordinary run of an example reports.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The numbers a sweep row needs.
    pub outcome: SweepOutcome,
    /// The final JSON line (`epsilon`, `delta`, the metric, …).
    pub line: serde_json::Value,
}

/// An example binary, as the shared [`example_main`] and [`sweep`] drive it.
pub trait Example: clap::Parser + Clone {
    /// The title of the results plot.
    const SWEEP_TITLE: &'static str;
    /// The metric's name in the results table (`accuracy`, `BLEU`).
    const METRIC: &'static str;
    /// The shared flags, to read and set.
    fn shared_flags(&mut self) -> SharedFlags<'_>;
    /// One ordinary run with these arguments.
    fn run_once(self) -> Result<RunReport, Error>;
}

/// `--sweep` of an example: every configuration of [`run_sweep`] is one ordinary run of it (quiet,
/// its files under `out/runs/<name>`); writes `results.md` and `results.svg` to `--out`.
pub fn sweep<E: Example>(args: &E) -> Result<Vec<SweepRow>, Error> {
    let mut base = args.clone();
    let flags = base.shared_flags();
    let (grid, out) = (flags.results.clone(), flags.out.clone());
    run_sweep(&grid, &out, E::SWEEP_TITLE, E::METRIC, |config| {
        let mut a = args.clone();
        let flags = a.shared_flags();
        flags.results.sweep = false;
        *flags.out = out.join("runs").join(&config.name);
        *flags.non_private = config.non_private;
        config.apply(flags.train);
        Ok(a.run_once()?.outcome)
    })
}

/// The `main` of an example binary: parses the flags, then runs the sweep (`--sweep`), redraws
/// its plot (`--sweep-replot`) or makes one run; rank 0 of a data-parallel run alone prints the
/// final JSON line. Errors go to stderr with exit code 1.
pub fn example_main<E: Example>() -> std::process::ExitCode {
    let mut args = E::parse();
    let flags = args.shared_flags();
    let (sweeping, replot, out) = (flags.results.sweep, flags.results.replot, flags.out.clone());
    let leader = flags.distributed.is_leader();
    let result = flags
        .distributed
        .check(sweeping || replot, *flags.non_private)
        .and_then(|()| flags.distributed.run_mpirun())
        .and_then(|launched| {
            if launched.is_some() {
                // mpirun ran the job; its rank 0 printed the results.
                Ok(None)
            } else if replot {
                replot_sweep(&out, E::SWEEP_TITLE).map(|_| None)
            } else if sweeping {
                sweep(&args).map(|rows| Some(serde_json::json!({ "sweep_rows": rows.len() })))
            } else {
                args.run_once().map(|r| leader.then_some(r.line))
            }
        });
    match result {
        Ok(line) => {
            if let Some(line) = line {
                println!("{line}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
