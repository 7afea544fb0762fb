//! `table-to-text`: DP fine-tuning of GPT-2 on E2E-style data (see README.md).

use clap::Parser;

fn main() {
    let args = burn_dp_table_to_text::Args::parse();
    match burn_dp_table_to_text::run(args) {
        Ok(summary) => println!("{}", summary.metrics),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
