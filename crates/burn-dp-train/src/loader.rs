//! The Learner's training data loader: one item per Poisson logical batch, and the train step
//! that clips and accumulates its fixed-shape physical batches with the padding mask applied
//! (the session's [`burn_dp::DpStep::clip_and_accumulate`], the loop body
//! [`burn_dp::PrivateTrainer`] runs too).

use std::sync::{Arc, OnceLock};

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::Dataset;
use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use burn_dp::{DpAutodiff, ModuleSnapshot, NoiseBackend, PhysicalBatch, PrivacySpent};
use burn_train::TrainOutput;

use crate::error::DpTrainError;
use crate::metric::PrivateStepOutput;
use crate::shared::Link;

/// Builds the user's batch type for a list of example indices (the data set and its batcher).
trait BuildBatch<B: NoiseBackend, T>: Send + Sync {
    fn build(&self, indices: &[usize], device: &Device<DpAutodiff<B>>) -> Result<T, DpTrainError>;
}

struct Source<B: NoiseBackend, I, T> {
    dataset: Arc<dyn Dataset<I>>,
    batcher: Arc<dyn Batcher<DpAutodiff<B>, I, T>>,
}

impl<B: NoiseBackend, I, T> BuildBatch<B, T> for Source<B, I, T> {
    fn build(&self, indices: &[usize], device: &Device<DpAutodiff<B>>) -> Result<T, DpTrainError> {
        let items = indices
            .iter()
            .map(|&index| {
                self.dataset
                    .get(index)
                    .ok_or(DpTrainError::MissingExample { index })
            })
            .collect::<Result<Vec<I>, _>>()?;
        Ok(self.batcher.batch(items, device))
    }
}

/// One Poisson logical batch: the item the Learner hands the model's `TrainStep`.
///
/// It holds the drawn examples' indices, cut into fixed-shape physical batches with a padding
/// mask, but gives the train step no access to them: the only thing to do with it is
/// [`PrivateBatch::train`], which builds each physical batch with the data set's batcher, asks for
/// the per-sample losses, applies the mask, clips and accumulates. Neither the indices nor the
/// realised batch size (private: it reveals who was drawn) leave the batch.
pub struct PrivateBatch<B: NoiseBackend, T> {
    link: Arc<dyn Link<B>>,
    source: Arc<dyn BuildBatch<B, T>>,
    step: u64,
    physical: Vec<PhysicalBatch>,
    device: Device<DpAutodiff<B>>,
}

impl<B: NoiseBackend, T> PrivateBatch<B, T> {
    /// The DP step this logical batch is for (0 for the first step of a run).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The whole train step of a private model: for each fixed-shape physical batch of this
    /// logical batch, `losses(model, batch)` returns the per-sample losses `[P]` (mark float
    /// inputs with [`burn_dp::batch`]; padding rows repeat an example of the batch and are masked
    /// here, so compute them like any other row); they are multiplied by the padding mask, clipped
    /// per sample and accumulated (the session's [`burn_dp::DpStep::clip_and_accumulate`]). The
    /// Learner's optimizer then adds the noise once and steps.
    ///
    /// `losses` runs while the session's state is locked: it must not call the session
    /// ([`crate::PrivateTraining`]'s methods would wait for the lock forever).
    ///
    /// Return the result unchanged from `TrainStep::step`: its gradients are empty on purpose
    /// (the clipped sums stay in the session, out of the Learner's reach), and its item carries
    /// only the privacy spent, for the ε and σ metrics. On any error (a forward that mixes
    /// samples, a wrong loss shape, a batch out of order) nothing of the logical batch is
    /// stepped on, the session stops and the Learner is interrupted; the error is
    /// [`crate::PrivateTraining::status`].
    ///
    /// # Shapes
    /// `losses` returns `[P]`, one loss per row of the physical batch (`P` = the physical batch
    /// size).
    pub fn train<M, F>(self, model: &M, losses: F) -> TrainOutput<PrivateStepOutput>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        F: FnMut(&M, T) -> Tensor<DpAutodiff<B>, 1>,
    {
        let link = self.link.clone();
        let item = match self.collect(model, losses) {
            Ok(report) => PrivateStepOutput { report },
            Err(e) => {
                link.fail(e);
                PrivateStepOutput::failed()
            }
        };
        TrainOutput {
            grads: GradientsParams::new(),
            item,
        }
    }

    fn collect<M, F>(
        self,
        model: &M,
        mut losses: F,
    ) -> Result<Arc<OnceLock<PrivacySpent>>, DpTrainError>
    where
        M: AutodiffModule<DpAutodiff<B>>,
        F: FnMut(&M, T) -> Tensor<DpAutodiff<B>, 1>,
    {
        // A refused forward may already have written into state shared with the model
        // (BatchNorm's running statistics): it is put back.
        let snapshot = ModuleSnapshot::take(model);
        let (source, device) = (&self.source, &self.device);
        let collected = self.link.collect(self.step, &mut |dp| {
            for physical in &self.physical {
                // The batch is opened before its data is built (see `clip_and_accumulate`).
                dp.clip_and_accumulate(model, physical, |m, indices| {
                    let data = source.build(indices, device)?;
                    Ok::<_, DpTrainError>(losses(m, data))
                })?;
            }
            Ok(())
        });
        if collected.is_err() {
            snapshot.restore(model);
        }
        collected
    }
}

/// The Learner's training data loader of a private run, as `SupervisedTraining::new` takes it.
pub type PrivateTrainLoader<B, T> = Arc<dyn DataLoader<DpAutodiff<B>, PrivateBatch<B, T>>>;

/// The training data loader of a private Learner run ([`crate::PrivateTraining::data_loader`]):
/// each item is one Poisson logical batch drawn at the session's rate q (after the budget check),
/// `steps_per_epoch` items per epoch. The budget refusing one more step ends the epoch and
/// interrupts the Learner.
pub struct PoissonDataLoader<B: NoiseBackend, I, T> {
    link: Arc<dyn Link<B>>,
    source: Arc<Source<B, I, T>>,
    device: Device<DpAutodiff<B>>,
    steps_per_epoch: usize,
    sliced: bool,
}

impl<B: NoiseBackend, I, T> Clone for PoissonDataLoader<B, I, T> {
    fn clone(&self) -> Self {
        PoissonDataLoader {
            link: self.link.clone(),
            source: self.source.clone(),
            device: self.device.clone(),
            steps_per_epoch: self.steps_per_epoch,
            sliced: self.sliced,
        }
    }
}

impl<B, I, T> PoissonDataLoader<B, I, T>
where
    B: NoiseBackend,
    I: Send + Sync + 'static,
    T: Send + 'static,
{
    pub(crate) fn new(
        link: Arc<dyn Link<B>>,
        dataset: Arc<dyn Dataset<I>>,
        batcher: Arc<dyn Batcher<DpAutodiff<B>, I, T>>,
        steps_per_epoch: usize,
        device: Device<DpAutodiff<B>>,
    ) -> Result<Self, DpTrainError> {
        if dataset.len() != link.dataset_size() {
            return Err(DpTrainError::DatasetSize {
                expected: link.dataset_size(),
                found: dataset.len(),
            });
        }
        if steps_per_epoch == 0 {
            return Err(DpTrainError::InvalidConfig(
                "steps per epoch must be at least 1".into(),
            ));
        }
        Ok(PoissonDataLoader {
            link,
            source: Arc::new(Source { dataset, batcher }),
            device,
            steps_per_epoch,
            sliced: false,
        })
    }
}

struct PoissonIter<'a, B: NoiseBackend, I, T> {
    loader: &'a PoissonDataLoader<B, I, T>,
    drawn: usize,
}

impl<B, I, T> Iterator for PoissonIter<'_, B, I, T>
where
    B: NoiseBackend,
    I: Send + Sync + 'static,
    T: Send + 'static,
{
    type Item = PrivateBatch<B, T>;

    fn next(&mut self) -> Option<PrivateBatch<B, T>> {
        let loader = self.loader;
        if loader.sliced {
            loader.link.fail(DpTrainError::MultiDevice);
            return None;
        }
        if self.drawn >= loader.steps_per_epoch {
            return None;
        }
        let (step, logical) = loader.link.draw()?;
        self.drawn += 1;
        let source: Arc<dyn BuildBatch<B, T>> = loader.source.clone();
        Some(PrivateBatch {
            link: loader.link.clone(),
            source,
            step,
            physical: logical.physical(),
            device: loader.device.clone(),
        })
    }
}

impl<B, I, T> DataLoaderIterator<PrivateBatch<B, T>> for PoissonIter<'_, B, I, T>
where
    B: NoiseBackend,
    I: Send + Sync + 'static,
    T: Send + 'static,
{
    fn progress(&self) -> Progress {
        Progress::new(self.drawn, self.loader.steps_per_epoch)
    }
}

impl<B, I, T> DataLoader<DpAutodiff<B>, PrivateBatch<B, T>> for PoissonDataLoader<B, I, T>
where
    B: NoiseBackend,
    I: Send + Sync + 'static,
    T: Send + 'static,
{
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<PrivateBatch<B, T>> + 'a> {
        Box::new(PoissonIter {
            loader: self,
            drawn: 0,
        })
    }

    /// Logical batches (DP steps) per epoch.
    fn num_items(&self) -> usize {
        self.steps_per_epoch
    }

    fn to_device(&self, device: &Device<DpAutodiff<B>>) -> PrivateTrainLoader<B, T> {
        let mut loader = self.clone();
        loader.device = device.clone();
        Arc::new(loader)
    }

    /// Splitting a logical batch across devices is not supported: the slice refuses to draw
    /// (and stops the session) when iterated.
    fn slice(&self, _start: usize, _end: usize) -> PrivateTrainLoader<B, T> {
        let mut loader = self.clone();
        loader.sliced = true;
        Arc::new(loader)
    }
}
