//! ReLU inputs within rounding of zero ("kinks") in the ResNet fixtures.
//!
//! burn's and PyTorch's float32 forwards agree to ~1e-6 relative, not bit for bit, so a ReLU
//! input closer to zero than that can sit on different sides in the two. Both are correct to
//! float32 precision, but the ReLU's mask then differs, and with it that sample's gradient by
//! far more than the 1e-4 tolerance: `resnet-basic-small` has such an input (-1.7e-6 in burn,
//! positive in PyTorch) which moves one sample's gradient norm by 1e-3 and some `layer4.0`
//! gradients by 7e-2. The comparison is ill-conditioned at that one element, not wrong.
//!
//! The per-sample tests therefore find every ReLU input within [`KINK_WINDOW`] of zero (relative
//! to the largest input of that ReLU for that sample) and pick for each the side that
//! reproduces the reference's per-sample gradient norms (all parameters and bias-only, from a
//! batch of that one sample on plain `Autodiff<NdArray>`): burn's own side, unless the sample's
//! norms are off by more than [`SETTLED`]; then its kinks are flipped one at a time, smallest
//! first, keeping a flip only where it halves the error. A flipped kink is moved to half the
//! window on the other side by adding a constant (a forward change far below the tolerance; no
//! effect on any gradient but that ReLU's mask). The per-sample comparison itself then stays
//! strict for every sample. Nothing depends on where the kinks of one fixture set happen to be.

use burn::backend::Autodiff;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::TensorData;
use burn_dp::testing::to_vec;
use burn_dp_models::{cross_entropy_per_sample, PretrainedModel, ResNet};

use crate::support::{load_resnet, rel_err, Reference, B, TOL};

/// A ReLU input within this fraction of the largest |input| of its ReLU (for that sample) of
/// zero is a kink: ten times the relative agreement of the two forwards.
const KINK_WINDOW: f32 = 1e-5;

/// A sample whose gradient norms match the reference this closely on burn's side of its kinks
/// is settled: no flip is tried (rounding alone is ~1e-7).
const SETTLED: f64 = 1e-6;

/// A ReLU input within the window of zero.
#[derive(Clone, Debug)]
pub struct Kink {
    /// Index of the ReLU in execution order (`ResNet::forward_with_relu`).
    relu: usize,
    /// Batch row.
    sample: usize,
    /// Flat index within the sample's `[C, H, W]` map.
    index: usize,
    /// burn's value.
    value: f32,
    /// Half-width of the window; a flipped kink is moved to `±margin / 2`.
    margin: f32,
}

/// A kink and its side: `true` = positive (the ReLU passes it).
pub type Pinned = (Kink, bool);

/// Every kink of the forward of `x`.
fn find_kinks(m: &ResNet<B>, x: Tensor<B, 4>) -> Vec<Kink> {
    let mut inputs = Vec::new();
    m.forward_with_relu(x, &mut |pre| {
        inputs.push(pre.clone());
        relu(pre)
    });
    let mut kinks = Vec::new();
    for (k, pre) in inputs.into_iter().enumerate() {
        let [b, c, h, w] = pre.dims();
        let per = c * h * w;
        let v: Vec<f32> = pre.into_data().to_vec().expect("f32 data");
        for s in 0..b {
            let row = &v[s * per..(s + 1) * per];
            let margin = KINK_WINDOW * row.iter().fold(0.0f32, |a, x| a.max(x.abs()));
            kinks.extend(
                row.iter()
                    .enumerate()
                    .filter(|(_, x)| x.abs() < margin)
                    .map(|(index, &value)| Kink {
                        relu: k,
                        sample: s,
                        index,
                        value,
                        margin,
                    }),
            );
        }
    }
    kinks.sort_by(|a, b| a.value.abs().total_cmp(&b.value.abs()));
    kinks
}

/// `pre` (the input of ReLU `relu` for batch rows `first..`) with the kinks of `pinned` that are
/// not on burn's side moved to theirs.
fn pin<BK: Backend>(
    pre: Tensor<BK, 4>,
    relu: usize,
    first: usize,
    pinned: &[Pinned],
) -> Tensor<BK, 4> {
    let dims = pre.dims();
    let per = dims[1] * dims[2] * dims[3];
    let rows = first..first + dims[0];
    let here: Vec<&Pinned> = pinned
        .iter()
        .filter(|(k, positive)| {
            k.relu == relu && rows.contains(&k.sample) && *positive != (k.value > 0.0)
        })
        .collect();
    if here.is_empty() {
        return pre;
    }
    let mut shift = vec![0.0f32; dims[0] * per];
    for (k, positive) in here {
        let target = if *positive { k.margin } else { -k.margin } / 2.0;
        shift[(k.sample - first) * per + k.index] = target - k.value;
    }
    let device = pre.device();
    pre + Tensor::from_data(TensorData::new(shift, dims), &device)
}

/// `ResNet::forward` of the batch rows `first..` with the kinks of `pinned` on their side.
pub fn forward_pinned<BK: Backend>(
    m: &ResNet<BK>,
    x: Tensor<BK, 4>,
    first: usize,
    pinned: &[Pinned],
) -> Tensor<BK, 2> {
    let mut k = 0;
    m.forward_with_relu(x, &mut |pre| {
        let out = relu(pin(pre, k, first, pinned));
        k += 1;
        out
    })
}

/// Relative errors of sample `s`'s gradient norms (all parameters, bias-only) against the
/// reference, with `pinned` applied, from a batch of that sample alone.
fn sample_norm_error(m: &ResNet<Autodiff<B>>, r: &Reference, s: usize, pinned: &[Pinned]) -> f64 {
    type A = Autodiff<B>;
    let dev = Default::default();
    let x = Tensor::<A, 4>::from_inner(r.float::<4>("input").slice(s..s + 1));
    let y = Tensor::<A, 1, Int>::from_data(r.int::<1>("target").slice(s..s + 1).into_data(), &dev);
    let logits = forward_pinned(m, x, s, pinned);
    let grads = cross_entropy_per_sample(logits, y).sum().backward();
    let grads = GradientsParams::from_grads(grads, m);
    let (mut all, mut bias) = (0.0f64, 0.0f64);
    for p in m.torch_params() {
        let g: Tensor<B, 1> = match p.burn_shape.len() {
            1 => grads.get::<B, 1>(p.id).expect("gradient"),
            2 => grads.get::<B, 2>(p.id).expect("gradient").flatten(0, 1),
            _ => grads.get::<B, 4>(p.id).expect("gradient").flatten(0, 3),
        };
        let sq: f64 = to_vec(g).iter().map(|a| (*a as f64).powi(2)).sum();
        all += sq;
        if p.name.ends_with(".bias") {
            bias += sq;
        }
    }
    let rel = |ours: f64, reference: f32| (ours.sqrt() - reference as f64).abs() / reference as f64;
    rel(all, r.raw("grad_norm")[s]).max(rel(bias, r.raw("bitfit.grad_norm")[s]))
}

/// The kinks of fixture `model`'s forward, each on the side that reproduces the reference's
/// per-sample gradient norms (burn's own side unless flipping it halves the error of a sample
/// that is not [`SETTLED`]).
pub fn follow_reference(model: &str, r: &Reference) -> Vec<Pinned> {
    let plain = load_resnet::<B>(model, r);
    let x = r.float::<4>("input");
    let kinks = find_kinks(&plain, x.clone());
    let mut pinned: Vec<Pinned> = kinks
        .into_iter()
        .map(|k| (k.clone(), k.value > 0.0))
        .collect();
    println!(
        "{model}: {} ReLU input(s) within {KINK_WINDOW:e} (relative) of zero",
        pinned.len()
    );
    if pinned.is_empty() {
        return pinned;
    }
    let ad = load_resnet::<Autodiff<B>>(model, r);
    let mut samples: Vec<usize> = pinned.iter().map(|(k, _)| k.sample).collect();
    samples.sort();
    samples.dedup();
    for s in samples {
        let burn_side = sample_norm_error(&ad, r, s, &pinned);
        let mut best = burn_side;
        for i in 0..pinned.len() {
            if pinned[i].0.sample != s || best < SETTLED {
                continue;
            }
            pinned[i].1 = !pinned[i].1;
            let e = sample_norm_error(&ad, r, s, &pinned);
            let k = &pinned[i].0;
            let flip = e < best / 2.0;
            println!(
                "  sample {s}: ReLU {} element {} = {:.3e} (window {:.1e}): norm rel err \
                 {best:.2e} -> {e:.2e} flipped: {}",
                k.relu,
                k.index,
                k.value,
                k.margin,
                if flip { "flip" } else { "keep burn's side" }
            );
            if flip {
                best = e;
            } else {
                pinned[i].1 = !pinned[i].1;
            }
        }
        let n = pinned.iter().filter(|(k, _)| k.sample == s).count();
        let flipped = pinned
            .iter()
            .filter(|(k, positive)| k.sample == s && *positive != (k.value > 0.0))
            .count();
        println!(
            "  sample {s}: {n} kink(s), {flipped} flipped: norm rel err {burn_side:.2e} on burn's \
             side, {best:.2e} chosen"
        );
    }
    // Pinning changes the forward by at most the windows: the logits still match.
    let logits = forward_pinned(&plain, x, 0, &pinned);
    let e = rel_err(logits, r.float::<2>("logits"));
    assert!(e < TOL, "{model}: pinned logits rel err {e:e}");
    pinned
}

#[test]
fn pinning_moves_only_the_flipped_kinks() {
    for model in ["resnet-basic-small", "resnet-bottleneck-small"] {
        let r = Reference::open(model);
        let m = load_resnet::<B>(model, &r);
        let x = r.float::<4>("input");
        let plain = m.forward(x.clone());
        let kinks = find_kinks(&m, x.clone());
        // On burn's side everywhere: the forward itself, bit for bit.
        let kept: Vec<Pinned> = kinks.iter().map(|k| (k.clone(), k.value > 0.0)).collect();
        let same = forward_pinned(&m, x.clone(), 0, &kept);
        let d: f32 = (same - plain.clone()).abs().max().into_scalar();
        assert_eq!(d, 0.0, "{model}");
        // Every kink flipped: within the tolerance of the forward, and the flipped ReLU inputs
        // are on their new side.
        let flipped: Vec<Pinned> = kinks.iter().map(|k| (k.clone(), k.value <= 0.0)).collect();
        let e = rel_err(forward_pinned(&m, x.clone(), 0, &flipped), plain);
        assert!(e < TOL, "{model}: {e:e}");
        let mut k = 0;
        m.forward_with_relu(x, &mut |pre| {
            let pre = pin(pre, k, 0, &flipped);
            let [_, c, h, w] = pre.dims();
            let v: Vec<f32> = pre.clone().into_data().to_vec().unwrap();
            for (kink, positive) in flipped.iter().filter(|(kink, _)| kink.relu == k) {
                let moved = v[kink.sample * c * h * w + kink.index];
                assert_eq!(moved > 0.0, *positive, "{model}: {kink:?} -> {moved:e}");
            }
            k += 1;
            relu(pre)
        });
        println!(
            "{model}: {} kink(s), flipped forward rel err {e:.2e}",
            kinks.len()
        );
    }
}
