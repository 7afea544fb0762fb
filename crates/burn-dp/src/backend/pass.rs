//! The physical batch a DP pass is working on, per thread: its identity, its size, and what
//! happened to its data on the way (a host read poisons the pass).
//!
//! ```text
//! open (trainer: PhysicalBatch::open, or the first mark_batch)   → BatchId, P rows
//!     host data of P rows uploaded now is the batch (Tag::host)
//!     mark_batch / embedding lookups tag their rows with this id (Tag::batch)
//!     a read to the host of batch data poisons the pass            (host_read)
//! clipped_backward: the losses must carry this id; a poisoned pass is DpError::HostRead;
//!                   the batch is closed
//! ```
//!
//! Rows of two batches never meet ([`Tag::join`](super::Tag::join) gives `Mixed`), so an
//! activation kept from an earlier batch or step cannot enter this one.

use std::cell::Cell;
use std::num::NonZeroU32;

use super::primitive::Tag;

/// The identity of one physical batch. Each [`PhysicalBatch::open`](crate::PhysicalBatch::open)
/// (or implicit open by the first [`mark_batch`](crate::mark_batch) outside one) draws a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BatchId(NonZeroU32);

/// The batch open on this thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Open {
    pub(crate) id: BatchId,
    pub(crate) rows: usize,
    /// Opened by the training loop before the forward: host data of `rows` rows uploaded while it
    /// is open is taken to be the batch. An implicit open (the first `mark_batch` of a forward
    /// outside a loop) only gives the marks an identity.
    pub(crate) inferred: bool,
}

thread_local! {
    static OPEN: Cell<Option<Open>> = const { Cell::new(None) };
    static NEXT: Cell<u32> = const { Cell::new(1) };
    /// The first read of batch data to the host while the batch was open.
    static POISON: Cell<Option<&'static str>> = const { Cell::new(None) };
    /// Nesting depth of [`read_without_privacy`].
    static ALLOWED: Cell<u32> = const { Cell::new(0) };
}

fn next_id() -> BatchId {
    NEXT.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1).max(1));
        BatchId(NonZeroU32::new(id).expect("ids start at 1"))
    })
}

/// The batch open on this thread, if any.
pub(crate) fn open_batch() -> Option<Open> {
    OPEN.with(|o| o.get())
}

/// Opens a new physical batch of `rows` rows whose host data is recognised as the batch; any
/// batch open before is closed, and the poison flag cleared.
pub(crate) fn open(rows: usize) -> Open {
    let open = Open {
        id: next_id(),
        rows,
        inferred: true,
    };
    OPEN.with(|o| o.set(Some(open)));
    POISON.with(|p| p.set(None));
    open
}

/// Closes the batch open on this thread (after its backward pass, or when a loop drops it).
pub(crate) fn close() {
    OPEN.with(|o| o.set(None));
    POISON.with(|p| p.set(None));
}

/// The tag of batch data of `rows` rows being marked (`mark_batch`, an embedding lookup): rows
/// of the open batch, or of a batch opened now if none is open. `None`: the rows do not fit the
/// open batch (a different size), which mixes samples.
pub(crate) fn mark(rows: usize) -> Option<Tag> {
    let open = open_batch().unwrap_or_else(|| {
        let open = Open {
            id: next_id(),
            rows,
            inferred: false,
        };
        OPEN.with(|o| o.set(Some(open)));
        open
    });
    (open.rows == rows).then_some(Tag::batch(rows, open.id))
}

/// Records a read of a tensor with tag `tag` to the host (`*_into_data`): while a batch opened by
/// the training loop ([`open`]) is open, reading batch data back poisons the pass, because whatever is computed from the
/// values on the host and uploaded again is outside every tag.
pub(crate) fn host_read(tag: Tag, op: &'static str) {
    // Only a batch the training loop opened (its lifetime is the step's); a batch opened
    // implicitly by a mark outside a loop has no known end.
    if tag.is_constant()
        || ALLOWED.with(|a| a.get()) > 0
        || !open_batch().is_some_and(|open| open.inferred)
    {
        return;
    }
    POISON.with(|p| {
        if p.get().is_none() {
            p.set(Some(op));
        }
    });
}

/// The first host read of batch data since the batch was opened, if any.
pub(crate) fn poisoned() -> Option<&'static str> {
    POISON.with(|p| p.get())
}

/// Runs `f`, in which reads of batch data to the host (`into_data`, `into_scalar`, printing a
/// tensor) do **not** poison the open DP pass.
///
/// For diagnostics that the caller accepts as **not private**: a value read here is the batch's
/// data outside the clipped, noised sum, and must neither be published nor fed back into the
/// computation (uploading it again would escape every check). Nothing else is relaxed.
///
/// ```
/// # use burn_dp::{read_without_privacy, DpAutodiff};
/// # use burn::backend::NdArray;
/// # use burn::tensor::Tensor;
/// # let losses = Tensor::<DpAutodiff<NdArray>, 1>::zeros([4], &Default::default());
/// // NOT PRIVATE: a per-batch loss for a local progress bar, never logged or reused.
/// let mean_loss: f32 = read_without_privacy(|| losses.clone().mean().into_scalar());
/// # let _ = mean_loss;
/// ```
pub fn read_without_privacy<R>(f: impl FnOnce() -> R) -> R {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            ALLOWED.with(|a| a.set(a.get() - 1));
        }
    }
    ALLOWED.with(|a| a.set(a.get() + 1));
    let _reset = Reset;
    f()
}
