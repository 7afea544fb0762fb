//! `image-classification`: public pre-training, then DP fine-tuning of an image classifier
//! (see README.md).

use clap::Parser;

fn main() {
    let args = burn_dp_image_classification::Args::parse();
    if let Err(e) = args.distributed.check(args.results.sweep, args.non_private) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    // Only rank 0 of a data-parallel run prints the result line.
    let leader = args.distributed.is_leader();
    if args.results.sweep {
        match burn_dp_image_classification::sweep(&args) {
            Ok(rows) => println!("{{\"sweep_rows\":{}}}", rows.len()),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    match burn_dp_image_classification::run(args) {
        Ok(summary) if leader => println!("{}", summary.metrics),
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
