//! Getting a trained model off the DP backend.
//!
//! A model trained on `DpAutodiff<B>` (`PrivateTrainer::into_model`) is a module on
//! `Autodiff<PerSample<B>>`. For inference, `model.valid()` already gives the module on
//! `PerSample<B>`, which outside a per-sample backward pass runs every op on `B` (a tag check per
//! op aside). To hand the model to code written for `B` itself — an inference server, a
//! `Module<B>` API, a checkpoint format — [`into_plain_model`] moves its weights into the same
//! module built on `B`.

use burn::module::{AutodiffModule, Module};
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::Backend;

use crate::backend::PerSample;
use crate::engine::DpAutodiff;
use crate::error::DpError;

/// The weights (parameters and buffers) of `model`, trained on `DpAutodiff<B>`, loaded into
/// `empty`, the same module built on the plain backend `B` (e.g. `MyModel::<B>::new(&device)`;
/// its initial values are replaced). A record round trip in memory, by field name: `empty` must
/// have the same structure and shapes.
///
/// # Errors
/// [`DpError::Checkpoint`] when the record of `model` does not load into `empty` (another
/// module type or configuration).
pub fn into_plain_model<B, M, P>(model: M, empty: P, device: &B::Device) -> Result<P, DpError>
where
    B: Backend,
    M: AutodiffModule<DpAutodiff<B>>,
    M::InnerModule: Module<PerSample<B>>,
    P: Module<B>,
{
    let recorder = BinBytesRecorder::<FullPrecisionSettings>::default();
    let error = |e: burn::record::RecorderError| {
        DpError::Checkpoint(format!(
            "moving the trained model to the plain backend: {e}; build `empty` from the same \
             module type and configuration as the trained model"
        ))
    };
    let bytes = Recorder::<PerSample<B>>::record(&recorder, model.valid().into_record(), ())
        .map_err(error)?;
    let record = Recorder::<B>::load(&recorder, bytes, device).map_err(error)?;
    Ok(empty.load_record(record))
}
