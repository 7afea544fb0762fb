//! `table-to-text`: public pre-training, then DP fine-tuning of GPT-2 on E2E-style data
//! (see README.md).

use clap::Parser;

fn main() {
    let args = burn_dp_table_to_text::Args::parse();
    if let Err(e) = args.distributed.check(args.results.sweep, args.non_private) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    // Only rank 0 of a data-parallel run prints the result line.
    let leader = args.distributed.is_leader();
    if args.results.sweep {
        match burn_dp_table_to_text::sweep(&args) {
            Ok(rows) => println!("{{\"sweep_rows\":{}}}", rows.len()),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    match burn_dp_table_to_text::run(args) {
        Ok(summary) if leader => println!("{}", summary.metrics),
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
