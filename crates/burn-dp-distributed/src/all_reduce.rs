//! The collective operation of a data-parallel DP step, whatever carries it (`MpiGroup` with the
//! feature `mpi`, or [`TcpGroup`](crate::TcpGroup)).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::error::DistributedError;

/// The collective operation a data-parallel DP step needs: the element-wise sum of one flat
/// buffer over all peers, the same result on every peer.
pub trait AllReduce<B: Backend> {
    /// This peer's rank, `0..world`.
    fn rank(&self) -> u32;
    /// Number of peers.
    fn world(&self) -> u32;
    /// The element-wise sum of `tensor` over all peers (every peer calls it with the same shape,
    /// in the same order of operations). `step` only labels errors.
    ///
    /// # Shapes
    /// `tensor`: `[n]`; returns `[n]`.
    fn all_reduce_sum(
        &mut self,
        tensor: Tensor<B, 1>,
        step: u64,
    ) -> Result<Tensor<B, 1>, DistributedError>;
}

/// The values of a flat buffer on the host, for a transport that moves host memory (the MPI and
/// TCP groups): a device → host copy, converted to `f32`.
///
/// # Shapes
/// `tensor`: `[n]`; returns `n` values.
pub(crate) fn host_values<B: Backend>(
    tensor: Tensor<B, 1>,
    rank: u32,
) -> Result<Vec<f32>, DistributedError> {
    tensor
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| DistributedError::Collective {
            op: "all-reduce",
            rank,
            detail: format!("{e:?}"),
        })
}
