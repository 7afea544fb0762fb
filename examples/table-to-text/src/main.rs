//! `table-to-text`: public pre-training, then DP fine-tuning of GPT-2 or a tiny Llama on
//! E2E-style data (see README.md).

fn main() -> std::process::ExitCode {
    burn_dp_examples_common::example_main::<burn_dp_table_to_text::Args>()
}
