//! `image-classification`: public pre-training, then DP fine-tuning of an image classifier
//! (see README.md).

fn main() -> std::process::ExitCode {
    burn_dp_examples_common::example_main::<burn_dp_image_classification::Args>()
}
