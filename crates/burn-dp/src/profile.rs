//! Per-phase timing of a DP step, with the device synchronised around each phase
//! (`bench train --profile`).
//!
//! Recording is off by default and then costs one thread-local flag read per phase. When it is on
//! ([`enable`]), each phase calls `B::sync(device)` before its clock starts (so work queued earlier
//! is not charged to it) and again before its clock stops (so the phase's own asynchronous kernels
//! are), and adds its wall time to a per-thread total; [`take`] returns the totals and starts new
//! ones. The synchronisations serialise the device, so a profiled step is slower than an
//! unprofiled one: compare phases with each other, and throughput from unprofiled runs.
//!
//! Phases do not nest: a phase started inside another is counted in both.
//!
//! ```text
//! forward         the per-sample losses                       (the caller's model code)
//! backward        one backward pass, including the rules      (engine::clipped_backward)
//! norms           per-sample squared norms, per parameter     (engine::clipped_backward)
//! non_finite      the non-finite mask, zeroing those samples  (engine::clipped_backward)
//! factors         per-group norms and clipping factors        (engine::clipped_backward)
//! clipped_sums    Σ_i c_i g_i per parameter                   (engine::clipped_backward)
//! noise           draw noise, add it, scale                   (DpOptimizer::step)
//! optimizer_step  register the gradients, the inner step      (DpOptimizer::step)
//! ```

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;

/// A phase of a DP step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The model's forward pass to per-sample losses.
    Forward,
    /// The backward pass (autodiff and the per-sample rules).
    Backward,
    /// Per-sample squared norms of every trainable parameter (ghost norm or instantiation).
    Norms,
    /// The mask of samples with a non-finite loss or norm, and zeroing their cached rows (on the
    /// device, every batch: nothing is read back).
    NonFinite,
    /// Per-group norms and clipping factors.
    Factors,
    /// The clipped sums `Σ_i c_i g_i`.
    ClippedSums,
    /// Drawing the Gaussian noise, adding it to the clipped sums, scaling.
    Noise,
    /// Registering the gradients and the inner optimizer's step.
    OptimizerStep,
}

impl Phase {
    /// Every phase, in the order a step runs them.
    pub const ALL: [Phase; 8] = [
        Phase::Forward,
        Phase::Backward,
        Phase::Norms,
        Phase::NonFinite,
        Phase::Factors,
        Phase::ClippedSums,
        Phase::Noise,
        Phase::OptimizerStep,
    ];

    /// The phase's name in reports (`snake_case`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Norms => "norms",
            Phase::NonFinite => "non_finite",
            Phase::Factors => "factors",
            Phase::ClippedSums => "clipped_sums",
            Phase::Noise => "noise",
            Phase::OptimizerStep => "optimizer_step",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Time spent per phase since recording started or since the last [`take`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Profile {
    time: [Duration; Phase::ALL.len()],
    calls: [u32; Phase::ALL.len()],
    /// Synchronisations that returned an error (their phases' times are then unreliable).
    pub sync_errors: u32,
}

impl Profile {
    /// Total wall time of `phase`.
    pub fn time(&self, phase: Phase) -> Duration {
        self.time[phase.index()]
    }

    /// How many times `phase` ran (e.g. once per physical batch for the backward phases).
    pub fn calls(&self, phase: Phase) -> u32 {
        self.calls[phase.index()]
    }

    /// The sum over all phases.
    pub fn total(&self) -> Duration {
        self.time.iter().sum()
    }

    /// `(phase, time, calls)` for every phase, in step order.
    pub fn iter(&self) -> impl Iterator<Item = (Phase, Duration, u32)> + '_ {
        Phase::ALL
            .into_iter()
            .map(|p| (p, self.time(p), self.calls(p)))
    }

    /// Adds another profile's times and counts to this one.
    pub fn add(&mut self, other: &Profile) {
        for i in 0..self.time.len() {
            self.time[i] += other.time[i];
            self.calls[i] += other.calls[i];
        }
        self.sync_errors += other.sync_errors;
    }
}

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static RECORDED: RefCell<Profile> = RefCell::new(Profile::default());
}

/// Starts recording on this thread, from zero.
pub fn enable() {
    RECORDED.with(|r| *r.borrow_mut() = Profile::default());
    ENABLED.with(|e| e.set(true));
}

/// Stops recording on this thread and returns what was recorded since the last [`take`].
pub fn disable() -> Profile {
    ENABLED.with(|e| e.set(false));
    take()
}

/// Whether this thread records.
pub fn is_enabled() -> bool {
    ENABLED.with(Cell::get)
}

/// Returns what was recorded since recording started or since the last `take`, and starts from
/// zero.
pub fn take() -> Profile {
    RECORDED.with(|r| std::mem::take(&mut *r.borrow_mut()))
}

fn sync<B: Backend>(device: &B::Device) {
    if B::sync(device).is_err() {
        RECORDED.with(|r| r.borrow_mut().sync_errors += 1);
    }
}

/// Runs `f` as `phase`: when recording, synchronises `device` before and after and adds the wall
/// time in between to the phase. When not recording, just runs `f`.
pub fn timed<B: Backend, R>(phase: Phase, device: &B::Device, f: impl FnOnce() -> R) -> R {
    let span = start::<B>(phase, device);
    let out = f();
    span.end();
    out
}

/// Starts `phase` (for code where a closure does not fit): the returned span ends the phase when
/// it is ended or dropped. When not recording, the span is empty and does nothing.
pub fn start<B: Backend>(phase: Phase, device: &B::Device) -> Span<B> {
    if !is_enabled() {
        return Span { running: None };
    }
    sync::<B>(device);
    Span {
        running: Some((phase, device.clone(), Instant::now())),
    }
}

/// A running phase (see [`start`]).
#[must_use = "a span measures until it is ended or dropped"]
pub struct Span<B: Backend> {
    running: Option<(Phase, B::Device, Instant)>,
}

impl<B: Backend> Span<B> {
    /// Ends the phase (the same as dropping the span).
    pub fn end(self) {}
}

impl<B: Backend> Drop for Span<B> {
    fn drop(&mut self) {
        if let Some((phase, device, started)) = self.running.take() {
            sync::<B>(&device);
            let elapsed = started.elapsed();
            RECORDED.with(|r| {
                let mut r = r.borrow_mut();
                r.time[phase.index()] += elapsed;
                r.calls[phase.index()] += 1;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn off_by_default_records_nothing() {
        let _ = disable();
        let dev = Default::default();
        let v = timed::<B, _>(Phase::Forward, &dev, || 7);
        assert_eq!(v, 7);
        start::<B>(Phase::Noise, &dev).end();
        assert_eq!(take(), Profile::default());
    }

    #[test]
    fn records_phases_and_calls_until_taken() {
        enable();
        let dev = Default::default();
        timed::<B, _>(Phase::Backward, &dev, || {
            std::thread::sleep(Duration::from_millis(2))
        });
        {
            let _span = start::<B>(Phase::Noise, &dev);
            std::thread::sleep(Duration::from_millis(1));
        }
        timed::<B, _>(Phase::Noise, &dev, || ());
        let p = take();
        assert_eq!(p.calls(Phase::Backward), 1);
        assert_eq!(p.calls(Phase::Noise), 2);
        assert_eq!(p.calls(Phase::Forward), 0);
        assert!(p.time(Phase::Backward) > Duration::ZERO);
        assert_eq!(p.time(Phase::Forward), Duration::ZERO);
        assert_eq!(p.total(), p.iter().map(|(_, t, _)| t).sum());
        assert_eq!(take().calls(Phase::Noise), 0, "take starts from zero");
        let _ = disable();
        assert!(!is_enabled());
    }

    #[test]
    fn a_dp_step_records_every_library_phase() {
        use crate::{
            batch, AccountantKind, ClippingFn, DpAutodiff, DpOptimizer, NoiseSource,
            PerSampleConfig, PoissonSampler, PrivacyState,
        };
        use burn::nn::LinearConfig;
        use burn::optim::SgdConfig;
        use burn::tensor::{Distribution, Tensor};

        type Dp = DpAutodiff<B>;
        let dev = Default::default();
        let model = LinearConfig::new(3, 2).init::<Dp>(&dev);
        let privacy =
            PrivacyState::with_noise_multiplier(1.0, 0.1, 1e-5, AccountantKind::Rdp).unwrap();
        let mut optim = DpOptimizer::new(
            SgdConfig::new().init(),
            PerSampleConfig::new(ClippingFn::AUTOMATIC),
            privacy,
            PoissonSampler::new(40, 0.1, 4, NoiseSource::FixedSeedForExperiments(1)).unwrap(),
            NoiseSource::FixedSeedForExperiments(1),
        )
        .unwrap();
        let x = Tensor::<Dp, 2>::random([4, 3], Distribution::Normal(0.0, 1.0), &dev);
        enable();
        let losses = timed::<B, _>(Phase::Forward, &dev, || {
            model
                .forward(batch(x))
                .powf_scalar(2.0)
                .sum_dim(1)
                .reshape([4])
        });
        optim.backward_unpadded(&model, losses).unwrap();
        let _model = optim.step(0.1, model).unwrap();
        let p = disable();
        for phase in Phase::ALL {
            assert_eq!(p.calls(phase), 1, "{}", phase.name());
        }
        assert_eq!(p.sync_errors, 0);
    }

    #[test]
    fn phase_names_are_distinct() {
        let mut names: Vec<_> = Phase::ALL.iter().map(|p| p.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Phase::ALL.len());
    }
}
