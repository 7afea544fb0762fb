//! The device path on a cubecl backend: the noise kernel against the host stream (known answers
//! and statistics), and whole DP steps on `DpAutodiff<cubecl backend>` against NdArray.
//!
//! The same generic tests run on two runtimes:
//! - wgpu (feature `wgpu`), on any Vulkan, Metal or DX12 device, including Mesa's lavapipe, a CPU
//!   Vulkan driver: `.ci/run` installs it and runs
//!   `cargo test -p burn-dp --features wgpu --lib cube_tests`, so the kernel and the DP step on a
//!   cubecl backend are tested in CI without a GPU;
//! - CUDA (feature `cuda`), `#[ignore]`d, where a GPU is at hand:
//!   `cargo test -p burn-dp --features cuda --lib cube_tests -- --ignored`.
//!
//! Test statistics are computed on the host: a cubecl reduction over millions of elements on
//! lavapipe was seen to be wrong (`var` 0.08 instead of 1.0).

use burn::backend::NdArray;
use burn::module::Param;
use burn::nn::Linear;
use burn::optim::SgdConfig;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData, TensorPrimitive};

use crate::noise::chacha::gaussian_vec;
use crate::noise::{NoiseBackend, NoiseDraw, NoiseKey};
use crate::tests_on_ndarray::noise_tests::{beyond, fraction_close, moments, params, Net};
use crate::*;

/// The kernel's output for `draw`, read back to the host.
fn device_noise<C: NoiseBackend>(draw: &NoiseDraw) -> Vec<f32> {
    let t = C::gaussian_noise(draw, &Default::default());
    let t = Tensor::<C, 1>::from_primitive(TensorPrimitive::Float(t));
    t.into_data().convert::<f32>().to_vec::<f32>().unwrap()
}

/// The kernel against the host stream on edge cases (a counter carry into the high word, the
/// last steps of the 64-bit step counter, lengths that are not a multiple of a block) and, on a
/// million draws, the moments and the 3σ tail.
fn kernel_matches_the_host_stream<C: NoiseBackend>() {
    let key = NoiseKey::from_fixed_seed(81);
    let cases = [
        (0u64, 0u64, 1_000_003usize),
        (7, (1 << 32) - 3, 1000),
        (u64::MAX - 1, 5, 17),
        (3, 0, 1),
    ];
    for (step, first_block, n) in cases {
        for std in [1.0f32, 0.25] {
            let draw = NoiseDraw {
                key: key.clone(),
                step,
                first_block,
                n,
                std,
            };
            let device = device_noise::<C>(&draw);
            let host = gaussian_vec(key.words(), step, first_block, n, std);
            assert_eq!(device.len(), n);
            // Same words, same transform: only sin/cos/ln's last bits differ between platforms.
            // The radius is at most 8.9, so an absolute error of 1e-5 in cos or sin (lavapipe's
            // was about 1e-6) stays under 1e-4·std; a wrong word, counter or key is off by O(std).
            let (worst, at) = device
                .iter()
                .zip(&host)
                .map(|(d, h)| (d - h).abs() - 1e-5 * h.abs())
                .enumerate()
                .fold((0f32, 0), |m, (i, e)| if e > m.0 { (e, i) } else { m });
            assert!(
                worst <= 1e-4 * std,
                "step {step} block {first_block}: element {at} is off by {worst} (device {}, \
                 host {})",
                device[at],
                host[at]
            );
            if n > 100_000 && std == 1.0 {
                let (mean, var) = moments(&device);
                let se = 1.0 / (n as f64).sqrt();
                assert!(mean.abs() < 5.0 * se, "mean {mean}");
                assert!((var - 1.0).abs() < 5.0 * 2f64.sqrt() * se, "variance {var}");
                assert!(fraction_close(beyond(&device, 3.0), 2.699_796e-3, n, 5.0));
            }
        }
    }
}

/// A linear layer with the given row-major `[d_in, d_out]` weight and bias.
fn linear<B: Backend>(weight: &[f32], bias: &[f32], d_in: usize, d_out: usize) -> Linear<B> {
    let dev = Default::default();
    Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(weight.to_vec(), [d_in, d_out]),
            &dev,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias.to_vec(), [d_out]),
            &dev,
        ))),
    }
}

fn values(n: usize, phase: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as f32 + phase) * 0.713).sin() * 0.4)
        .collect()
}

/// The same 6-16-3 network on any backend.
fn net<B: Backend>() -> Net<B> {
    Net {
        fc1: linear(&values(96, 0.0), &values(16, 1.0), 6, 16),
        fc2: linear(&values(48, 2.0), &values(3, 3.0), 16, 3),
    }
}

/// Runs `steps` DP steps (fixed-seed noise, σ = 0.7, flat automatic clipping, ghost norms and
/// instantiation per layer as `mode` says) on `DpAutodiff<C>` and returns the parameters after
/// each step. Batches of 5 rows with a squared-error loss per sample; every 3rd step is empty.
fn dp_steps<C: NoiseBackend>(mode: NormMode, steps: usize) -> Vec<Vec<f32>> {
    type Sgd<C> = burn::optim::adaptor::OptimizerAdaptor<
        burn::optim::Sgd<<DpAutodiff<C> as burn::tensor::backend::AutodiffBackend>::InnerBackend>,
        Net<DpAutodiff<C>>,
        DpAutodiff<C>,
    >;
    let dev = Default::default();
    let source = NoiseSource::FixedSeedForExperiments(5);
    let privacy =
        PrivacyState::with_noise_multiplier(0.7, 0.05, 1e-5, AccountantKind::Rdp).unwrap();
    let sampler = PoissonSampler::new(100, 0.05, 5, source).unwrap();
    let mut o: DpOptimizer<Sgd<C>, C> = DpOptimizer::new(
        SgdConfig::new().init::<DpAutodiff<C>, Net<DpAutodiff<C>>>(),
        PerSampleConfig::new(ClippingFn::AUTOMATIC).with_norm_mode(mode),
        privacy,
        sampler.clone(),
        source,
    )
    .unwrap();
    let mut model = net::<DpAutodiff<C>>();
    let mut out = Vec::new();
    for step in 0..steps {
        model = if step % 3 == 2 {
            o.step_empty(0.5, model).unwrap()
        } else {
            let x = Tensor::<DpAutodiff<C>, 2>::from_data(
                TensorData::new(values(30, step as f32 * 7.0), [5, 6]),
                &dev,
            );
            let y = Tensor::<DpAutodiff<C>, 2>::from_data(
                TensorData::new(values(15, step as f32 * 3.0 + 0.5), [5, 3]),
                &dev,
            );
            let out = model.fc2.forward(model.fc1.forward(batch(x)).tanh());
            let losses = (out - y).powf_scalar(2.0).sum_dim(1).reshape([5]);
            o.backward_unpadded(&model, losses).unwrap();
            o.step(0.5, model).unwrap()
        };
        out.push(params(&model).concat());
    }
    out
}

/// A DP step on `DpAutodiff<C>` (per-sample norms, clipping, clipped sums, noise drawn by the
/// kernel, the optimizer) ends where the same step on NdArray ends: same noise stream, same
/// arithmetic up to float rounding.
fn dp_steps_match_ndarray<C: NoiseBackend>() {
    for mode in [NormMode::Ghost, NormMode::Instantiate] {
        let host = dp_steps::<NdArray<f32>>(mode, 6);
        let device = dp_steps::<C>(mode, 6);
        for (step, (h, d)) in host.iter().zip(&device).enumerate() {
            let moved = h
                .iter()
                .zip(
                    &net::<NdArray<f32>>()
                        .fc1
                        .weight
                        .val()
                        .into_data()
                        .to_vec::<f32>()
                        .unwrap(),
                )
                .any(|(a, b)| a != b);
            assert!(moved, "step {step}: the parameters did not move");
            for (i, (a, b)) in h.iter().zip(d).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * a.abs().max(1.0),
                    "{mode:?} step {step} parameter {i}: ndarray {a}, device {b}"
                );
            }
        }
    }
}

/// The allocator's statistics: after DP steps (whose model and optimizer are dropped by now) the
/// pools hold memory; a live 4 MiB tensor is counted in use.
fn memory_is_reported<C: NoiseBackend + DeviceMemory>() {
    let _ = dp_steps::<C>(NormMode::Ghost, 2);
    let device = Default::default();
    let n = 1 << 20;
    let held = Tensor::<C, 1>::from_data(TensorData::new(vec![1f32; n], [n]), &device);
    C::sync(&device).unwrap();
    let usage = C::memory_usage(&device).expect("a cubecl backend reports its memory");
    eprintln!("device memory after 2 DP steps, a [2^20] f32 tensor alive: {usage:?}");
    assert!(usage.bytes_in_use >= 4 * n as u64, "{usage:?}");
    assert!(usage.allocations > 0, "{usage:?}");
    assert!(usage.bytes_reserved >= usage.bytes_in_use, "{usage:?}");
    drop(held);
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use burn_wgpu::{CubeBackend, WgpuRuntime};

    /// burn-wgpu's default `Wgpu`: `Fusion<CubeBackend<WgpuRuntime, ..>>`, the noise as a
    /// custom fusion op.
    type Fused = burn_wgpu::Wgpu;
    /// The cubecl backend without fusion: the kernel launched directly.
    type Plain = CubeBackend<WgpuRuntime, f32, i32, u32>;

    #[test]
    fn wgpu_kernel_matches_the_host_stream() {
        super::kernel_matches_the_host_stream::<Fused>();
        super::kernel_matches_the_host_stream::<Plain>();
    }

    #[test]
    fn wgpu_dp_steps_match_ndarray() {
        super::dp_steps_match_ndarray::<Fused>();
        super::dp_steps_match_ndarray::<Plain>();
    }

    #[test]
    fn wgpu_memory_is_reported() {
        super::memory_is_reported::<Fused>();
        super::memory_is_reported::<Plain>();
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_kernel_matches_the_host_stream() {
        super::kernel_matches_the_host_stream::<burn_cuda::Cuda>();
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_dp_steps_match_ndarray() {
        super::dp_steps_match_ndarray::<burn_cuda::Cuda>();
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn cuda_memory_is_reported() {
        super::memory_is_reported::<burn_cuda::Cuda>();
    }
}
