//! The device path of the noise generator: the same ChaCha20 stream and Box–Muller transform as
//! [`super::chacha`], as one cubecl kernel, for [`CubeBackend`] (CUDA, ROCm, wgpu) and for
//! burn's [`Fusion`] over it (burn-cuda's default `Cuda`).
//!
//! Each unit computes one ChaCha20 block (block `first_block + unit`) and writes its 10 normals,
//! so a step writes `4·n` bytes and reads nothing; the key, step and offset travel as kernel
//! scalars (no buffer upload, and no recompilation per step: they are runtime arguments).
//!
//! Under `Fusion`, the draw is registered as a custom operation (`OperationIr::Custom`) whose
//! execution calls the inner backend's kernel, so burn-cuda keeps its fusion for the rest of the
//! step; fusion treats the custom op as a boundary it does not fuse across.

use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{get_client, Fusion, FusionBackend};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, CubeDim};

use super::chacha::{NORMALS_PER_BLOCK, TWO_PI_TWO_POW_M24, TWO_POW_23, TWO_POW_M24, TWO_POW_M32};
use super::{DrawNoise, NoiseDraw};

/// One ChaCha20 quarter round (RFC 8439 §2.1), rotations as two shifts (cubecl has no rotate).
#[cube]
#[allow(clippy::manual_rotate)]
fn quarter_round(a: &mut u32, b: &mut u32, c: &mut u32, d: &mut u32) {
    *a += *b;
    let x = *d ^ *a;
    *d = (x << 16u32) | (x >> 16u32);
    *c += *d;
    let x = *b ^ *c;
    *b = (x << 12u32) | (x >> 20u32);
    *a += *b;
    let x = *d ^ *a;
    *d = (x << 8u32) | (x >> 24u32);
    *c += *d;
    let x = *b ^ *c;
    *b = (x << 7u32) | (x >> 25u32);
}

/// Writes the Box–Muller pair of words `(w_a, w_b, w_t)` to `output[index]`, `output[index + 1]`
/// (when in bounds), as [`super::chacha::box_muller`] computes it.
#[cube]
fn write_pair(output: &mut Array<f32>, index: usize, w_a: u32, w_b: u32, w_t: u32, std: f32) {
    let a = f32::cast_from(w_a >> 8u32);
    let b = f32::cast_from(w_b) + 0.5f32;
    let u1 = (a + b * TWO_POW_M32) * TWO_POW_M24;
    let r = f32::sqrt(-2.0f32 * f32::ln(u1));
    let theta = (f32::cast_from(w_t >> 8u32) - TWO_POW_23) * TWO_PI_TWO_POW_M24;
    if index < output.len() {
        output[index] = r * f32::cos(theta) * std;
    }
    if index + 1 < output.len() {
        output[index + 1] = r * f32::sin(theta) * std;
    }
}

/// `output[i] = std · z(key, step, 10·first_block + i)`; one unit per ChaCha20 block.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn chacha20_gaussian_kernel(
    output: &mut Array<f32>,
    k0: u32,
    k1: u32,
    k2: u32,
    k3: u32,
    k4: u32,
    k5: u32,
    k6: u32,
    k7: u32,
    block_lo: u32,
    block_hi: u32,
    step_lo: u32,
    step_hi: u32,
    std: f32,
) {
    let unit = ABSOLUTE_POS;
    let first = unit * 10usize;
    if first >= output.len() {
        terminate!();
    }
    // 64-bit block counter from two words: block = first_block + unit (carry into the high word).
    let lo = block_lo + u32::cast_from(unit);
    let mut hi = block_hi;
    if lo < block_lo {
        hi += 1u32;
    }
    let mut x0 = 0x6170_7865u32;
    let mut x1 = 0x3320_646eu32;
    let mut x2 = 0x7962_2d32u32;
    let mut x3 = 0x6b20_6574u32;
    let mut x4 = k0;
    let mut x5 = k1;
    let mut x6 = k2;
    let mut x7 = k3;
    let mut x8 = k4;
    let mut x9 = k5;
    let mut x10 = k6;
    let mut x11 = k7;
    let mut x12 = lo;
    let mut x13 = hi;
    let mut x14 = step_lo;
    let mut x15 = step_hi;
    for _ in 0..10u32 {
        quarter_round(&mut x0, &mut x4, &mut x8, &mut x12);
        quarter_round(&mut x1, &mut x5, &mut x9, &mut x13);
        quarter_round(&mut x2, &mut x6, &mut x10, &mut x14);
        quarter_round(&mut x3, &mut x7, &mut x11, &mut x15);
        quarter_round(&mut x0, &mut x5, &mut x10, &mut x15);
        quarter_round(&mut x1, &mut x6, &mut x11, &mut x12);
        quarter_round(&mut x2, &mut x7, &mut x8, &mut x13);
        quarter_round(&mut x3, &mut x4, &mut x9, &mut x14);
    }
    // The feed-forward of the block function (word 15 is unused by the transform).
    x0 += 0x6170_7865u32;
    x1 += 0x3320_646eu32;
    x2 += 0x7962_2d32u32;
    x3 += 0x6b20_6574u32;
    x4 += k0;
    x5 += k1;
    x6 += k2;
    x7 += k3;
    x8 += k4;
    x9 += k5;
    x10 += k6;
    x11 += k7;
    x12 += lo;
    x13 += hi;
    x14 += step_lo;
    write_pair(output, first, x0, x1, x2, std);
    write_pair(output, first + 2usize, x3, x4, x5, std);
    write_pair(output, first + 4usize, x6, x7, x8, std);
    write_pair(output, first + 6usize, x9, x10, x11, std);
    write_pair(output, first + 8usize, x12, x13, x14, std);
}

/// Launches the kernel into a new `[n]` f32 tensor on `device`.
pub fn gaussian_noise_cube<R: CubeRuntime>(
    draw: &NoiseDraw,
    device: &R::Device,
) -> burn_cubecl::tensor::CubeTensor<R> {
    let NoiseDraw {
        key,
        step,
        first_block,
        n,
        std,
    } = draw;
    let (step, first_block, n, std) = (*step, *first_block, *n, *std);
    let client = R::client(device);
    let output = empty_device_dtype(client.clone(), device.clone(), Shape::new([n]), DType::F32);
    if n == 0 {
        return output;
    }
    let blocks = n.div_ceil(NORMALS_PER_BLOCK);
    let cube_dim = CubeDim::new(&client, blocks);
    let cube_count = calculate_cube_count_elemwise(&client, blocks, cube_dim);
    let k = key.words();
    chacha20_gaussian_kernel::launch::<R>(
        &client,
        cube_count,
        cube_dim,
        output.clone().into_array_arg(),
        k[0],
        k[1],
        k[2],
        k[3],
        k[4],
        k[5],
        k[6],
        k[7],
        first_block as u32,
        (first_block >> 32) as u32,
        step as u32,
        (step >> 32) as u32,
        std,
    );
    output
}

impl<R, F, I, BT> DrawNoise for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn gaussian_noise(draw: &NoiseDraw, device: &Self::Device) -> FloatTensor<Self> {
        gaussian_noise_cube::<R>(draw, device)
    }
}

/// The draw as a custom fusion operation: executes the inner backend's kernel.
#[derive(Debug)]
struct GaussianNoiseOp<B: FusionBackend> {
    out: TensorIr,
    draw: NoiseDraw,
    device: burn::tensor::Device<B>,
}

impl<B: FusionBackend + DrawNoise> Operation<B::FusionRuntime> for GaussianNoiseOp<B> {
    fn execute(&self, handles: &mut HandleContainer<B::Handle>) {
        let tensor = B::gaussian_noise(&self.draw, &self.device);
        handles.register_float_tensor::<B>(&self.out.id, tensor);
    }
}

impl<B: FusionBackend + DrawNoise> DrawNoise for Fusion<B> {
    fn gaussian_noise(draw: &NoiseDraw, device: &Self::Device) -> FloatTensor<Self> {
        let client = get_client::<B>(device);
        let out = TensorIr::uninit(
            client.create_empty_handle(),
            Shape::new([draw.n]),
            DType::F32,
        );
        let desc = CustomOpIr::new(
            "burn_dp::chacha20_gaussian",
            &[],
            std::slice::from_ref(&out),
        );
        client
            .register(
                OperationStreams::default(),
                OperationIr::Custom(desc),
                GaussianNoiseOp::<B> {
                    out,
                    draw: draw.clone(),
                    device: device.clone(),
                },
            )
            .output()
    }
}
