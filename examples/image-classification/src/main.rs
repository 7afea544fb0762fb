//! `image-classification`: DP training of a ResNet / ViT classifier (see README.md).

use clap::Parser;

fn main() {
    let args = burn_dp_image_classification::Args::parse();
    match burn_dp_image_classification::run(args) {
        Ok(summary) => println!("{}", summary.metrics),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
