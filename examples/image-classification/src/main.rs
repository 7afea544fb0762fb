//! `image-classification`: public pre-training, then DP fine-tuning of an image classifier
//! (see README.md).

use clap::Parser;

fn main() {
    let args = burn_dp_image_classification::Args::parse();
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
        Ok(summary) => println!("{}", summary.metrics),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
