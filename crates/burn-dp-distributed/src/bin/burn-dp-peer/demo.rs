//! A tiny regression task, deterministic on every peer: what `burn-dp-peer train`, the tests and
//! the book's commands run (8 features → 4 hidden units (ReLU) → 1 output, squared error).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burn_dp::{batch, DpAutodiff};

/// Input features of the demo task.
pub const FEATURES: usize = 8;
/// Hidden units of [`DemoNet`].
pub const HIDDEN: usize = 4;

/// The demo model: `Linear(8, 4) → ReLU → Linear(4, 1)`.
#[derive(Module, Debug)]
pub struct DemoNet<B: Backend> {
    /// First layer.
    pub fc1: Linear<B>,
    /// Output layer.
    pub fc2: Linear<B>,
}

fn deterministic<B: Backend, const D: usize>(
    shape: [usize; D],
    salt: f32,
    device: &B::Device,
) -> Param<Tensor<B, D>> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| 0.4 * ((i as f32 + 1.0) * 0.731 + salt).sin())
        .collect();
    Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), device))
}

impl<B: Backend> DemoNet<B> {
    /// The same initial model on every peer (no random state involved).
    pub fn deterministic(device: &B::Device) -> Self {
        let mut fc1 = LinearConfig::new(FEATURES, HIDDEN).init(device);
        let mut fc2 = LinearConfig::new(HIDDEN, 1).init(device);
        fc1.weight = deterministic([FEATURES, HIDDEN], 0.1, device);
        fc1.bias = Some(deterministic([HIDDEN], 0.2, device));
        fc2.weight = deterministic([HIDDEN, 1], 0.3, device);
        fc2.bias = Some(deterministic([1], 0.4, device));
        DemoNet { fc1, fc2 }
    }

    /// Predictions.
    ///
    /// # Shapes
    /// `x`: `[B, 8]` → `[B]`.
    pub fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 1> {
        let b = x.dims()[0];
        let h = burn::tensor::activation::relu(self.fc1.forward(x));
        self.fc2.forward(h).reshape([b])
    }
}

/// The features of example `i`.
pub fn features(i: usize) -> [f32; FEATURES] {
    std::array::from_fn(|j| ((i * FEATURES + j) as f32 * 0.37).sin())
}

/// The target of example `i`.
pub fn target(i: usize) -> f32 {
    let x = features(i);
    x.iter()
        .enumerate()
        .map(|(j, v)| v * (j as f32 - 3.5) * 0.3)
        .sum::<f32>()
        + 0.1 * (i as f32).cos()
}

/// Per-sample squared errors of the examples `indices` (the closure a trainer's `step` takes).
///
/// # Shapes
/// Returns `[indices.len()]`.
pub fn losses<B: Backend>(
    model: &DemoNet<DpAutodiff<B>>,
    indices: &[usize],
) -> Tensor<DpAutodiff<B>, 1> {
    let device = model.fc1.weight.device();
    let b = indices.len();
    let x: Vec<f32> = indices.iter().flat_map(|&i| features(i)).collect();
    let y: Vec<f32> = indices.iter().map(|&i| target(i)).collect();
    let x = Tensor::<DpAutodiff<B>, 2>::from_data(TensorData::new(x, [b, FEATURES]), &device);
    let y = Tensor::<DpAutodiff<B>, 1>::from_data(TensorData::new(y, [b]), &device);
    (model.forward(batch(x)) - batch(y)).powf_scalar(2.0)
}

/// The model's parameters, flat, in visiting order (for comparing replicas in tests).
pub fn flat_parameters<B: Backend>(model: &DemoNet<B>) -> Vec<f32> {
    let mut out = Vec::new();
    for t in [
        model.fc1.weight.val().into_data(),
        model
            .fc1
            .bias
            .as_ref()
            .map(|b| b.val().into_data())
            .unwrap_or_else(|| TensorData::new(Vec::<f32>::new(), [0])),
        model.fc2.weight.val().into_data(),
        model
            .fc2
            .bias
            .as_ref()
            .map(|b| b.val().into_data())
            .unwrap_or_else(|| TensorData::new(Vec::<f32>::new(), [0])),
    ] {
        out.extend(t.convert::<f32>().to_vec::<f32>().unwrap_or_default());
    }
    out
}
