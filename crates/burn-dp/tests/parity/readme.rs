//! The crate README's example, compiled and run; the README's Rust block must be a verbatim part
//! of this file.

// ANCHOR: readme
use burn::nn::{Linear, LinearConfig};
use burn::optim::SgdConfig;
use burn::tensor::{Tensor, TensorData};
use burn_dp::{
    mark_batch, AccountantKind, ClippingFn, DpAutodiff, DpError, Flex, NoiseSource,
    PerSampleConfig, PrivacyState, PrivateSetup, PrivateTrainer, Schedule,
};

type B = DpAutodiff<Flex>; // instead of Autodiff<Flex>

/// Linear regression with an (ε = 3, δ = 1e-5) guarantee for every example of the data set.
fn train(features: &[[f32; 4]], targets: &[f32]) -> Result<Linear<B>, DpError> {
    let device = Default::default();
    let n = features.len();
    // Expected batch size 64 (Poisson sampling), 10 epochs; σ calibrated to spend ε = 3.
    let schedule = Schedule::from_epochs(n, 64, 10)?;
    let privacy = PrivacyState::for_target_epsilon(3.0, 1e-5, schedule, AccountantKind::Rdp)?;
    let mut trainer = PrivateTrainer::new(
        LinearConfig::new(4, 1).init::<B>(&device),
        SgdConfig::new().init(),
        PrivateSetup {
            per_sample: PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
            privacy,
            dataset_size: n,
            physical_batch_size: 64, // rows per forward pass: memory, not privacy
            noise: NoiseSource::Os,
        },
    )?;
    for _ in 0..schedule.steps {
        // One loss per drawn example; the trainer clips, adds noise once, steps and accounts.
        trainer.step(0.5, |model, indices| {
            let b = indices.len();
            let x: Vec<f32> = indices.iter().flat_map(|&i| features[i]).collect();
            let y: Vec<f32> = indices.iter().map(|&i| targets[i]).collect();
            let x = Tensor::<B, 2>::from_data(TensorData::new(x, [b, 4]), &device);
            let y = Tensor::<B, 1>::from_data(TensorData::new(y, [b]), &device);
            (model.forward(mark_batch(x)).reshape([b]) - y).powf_scalar(2.0)
        })?;
    }
    println!("spent ε = {:.2}", trainer.epsilon()?.epsilon);
    Ok(trainer.into_model())
}
// ANCHOR_END: readme

#[test]
fn readme_example_trains_and_is_verbatim() {
    let features: Vec<[f32; 4]> = (0..256)
        .map(|i| std::array::from_fn(|j| ((i * 4 + j) as f32 * 0.37).sin()))
        .collect();
    let targets: Vec<f32> = features.iter().map(|x| x[0] - 0.5 * x[2]).collect();
    let model = train(&features, &targets).unwrap();
    assert_eq!(model.weight.dims(), [4, 1]);

    let readme = include_str!("../../README.md");
    let block = readme
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```rust block in the crate README");
    let source = include_str!("readme.rs");
    assert!(
        source.contains(block),
        "the crate README's Rust block is not a verbatim part of tests/parity/readme.rs"
    );
}
