//! The all-reduce over MPI (feature `mpi`): [`MpiGroup`], one process per rank, started the way
//! clusters start jobs (`mpirun -np K ...`, `mpirun -H a,b ...`, Slurm's `srun ...`). Rank and
//! world come from MPI, not from flags.
//!
//! Each step's flat buffer (the clipped sums, this peer's noise share and the step header) is
//! summed with MPI's own reduction (`MPI_Allreduce` with `MPI_SUM`, [`all_reduce_into`]), which
//! the MPI library carries out with its own algorithm (ring, recursive doubling, shared memory on
//! one machine) instead of a star through one peer.
//!
//! A peer that dies: MPI's default error handler (`MPI_ERRORS_ARE_FATAL`) and the launcher
//! (`mpirun`, `srun`) end every other rank of the job, which exits with an error naming the rank
//! that failed; there is no timeout to wait for. Resume the run from its last checkpoint (same ε).
//!
//! [`all_reduce_into`]: mpi::collective::CommunicatorCollectives::all_reduce_into

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::all_reduce::AllReduce;
use crate::error::DistributedError;

/// The MPI group of this process: `MPI_COMM_WORLD` of the job that started it. Dropping it
/// finalises MPI (once per process).
pub struct MpiGroup {
    world: SimpleCommunicator,
    rank: u32,
    size: u32,
    /// The buffer length every rank agreed on at the first all-reduce.
    agreed_len: Option<usize>,
    // Last: finalises MPI when the group is dropped, after the communicator.
    _universe: Universe,
}

impl std::fmt::Debug for MpiGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiGroup")
            .field("rank", &self.rank)
            .field("world", &self.size)
            .finish()
    }
}

impl MpiGroup {
    /// Initialises MPI and joins `MPI_COMM_WORLD`: rank and world are the job's. Outside a job
    /// started by an MPI launcher this is a world of one. MPI can be initialised once per process:
    /// a second call is [`DistributedError::Config`].
    pub fn join() -> Result<Self, DistributedError> {
        let (universe, _) =
            mpi::initialize_with_threading(mpi::Threading::Serialized).ok_or_else(|| {
                DistributedError::Config(
                    "MPI is already initialised in this process (one MpiGroup per process)".into(),
                )
            })?;
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        let (Ok(rank), Ok(size)) = (u32::try_from(rank), u32::try_from(size)) else {
            return Err(DistributedError::Config(format!(
                "MPI gave rank {rank} of {size}"
            )));
        };
        Ok(MpiGroup {
            world,
            rank,
            size,
            agreed_len: None,
            _universe: universe,
        })
    }

    /// Copies `bytes` of rank 0 into `bytes` of every rank (`MPI_Bcast`; every rank calls it
    /// with a buffer of the same length): how rank 0 hands a token (an NCCL unique id) to all.
    pub fn broadcast_from_root(&self, bytes: &mut [u8]) {
        self.world.process_at_rank(0).broadcast_into(bytes);
    }

    /// Waits until every rank has called it (`MPI_Barrier`).
    pub fn barrier(&self) {
        self.world.barrier();
    }

    /// Ends every process of the job with `code` (`MPI_Abort`): what a rank calls when it cannot
    /// go on, so that the others do not wait for it.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// The element-wise sum of `values` over every rank, in place (`MPI_Allreduce`, `MPI_SUM`).
    pub fn all_reduce_f32(&self, values: &mut [f32]) {
        let send = values.to_vec();
        self.world
            .all_reduce_into(&send[..], values, SystemOperation::sum());
    }
}

impl<B: Backend> AllReduce<B> for MpiGroup {
    fn rank(&self) -> u32 {
        self.rank
    }

    fn world(&self) -> u32 {
        self.size
    }

    fn all_reduce_sum(
        &mut self,
        tensor: Tensor<B, 1>,
        _step: u64,
    ) -> Result<Tensor<B, 1>, DistributedError> {
        let device = tensor.device();
        let mut values = crate::all_reduce::host_values(tensor, self.rank)?;
        let n = values.len();
        if self.agreed_len != Some(n) {
            // MPI_Allreduce of buffers of different lengths is undefined: compare them first
            // (once; the buffer of a run keeps its length).
            let own = [n as f64, -(n as f64)];
            let mut extremes = [0f64; 2];
            self.world
                .all_reduce_into(&own[..], &mut extremes[..], SystemOperation::max());
            let (longest, shortest) = (extremes[0], -extremes[1]);
            if longest != shortest {
                return Err(DistributedError::Collective {
                    op: "all-reduce",
                    rank: self.rank,
                    detail: format!(
                        "the ranks' buffers have between {shortest} and {longest} values (this \
                         rank: {n}): the peers' models do not train the same parameters"
                    ),
                });
            }
            self.agreed_len = Some(n);
        }
        self.all_reduce_f32(&mut values);
        Ok(Tensor::from_data(TensorData::new(values, [n]), &device))
    }
}
