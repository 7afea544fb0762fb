//! The all-reduce on CUDA devices with NCCL (feature `nccl`, which implies `mpi`): [`NcclGroup`].
//!
//! The flat buffer of each step is summed **in place on the device** (`ncclAllReduce`, `ncclSum`,
//! f32), with no host copy. The communicator is bootstrapped over MPI: rank 0 draws the NCCL
//! unique id and broadcasts it ([`MpiGroup::broadcast_from_root`]), every rank calls
//! `ncclCommInitRank` with its MPI rank. One GPU per rank (NCCL refuses two ranks on one GPU).
//!
//! Why not burn's own collective: burn 0.21's CUDA collective operation (cubecl-cuda 0.10,
//! `ServerCommunication::comm_init`/`all_reduce`) builds its communicators only between the
//! devices of one process (the unique id comes from a process-global map private to cubecl-cuda),
//! so it cannot join the ranks of an MPI job. This module reaches the same buffer instead:
//! `ComputeClient::get_resource` gives the device pointer of a tensor's handle.
//!
//! Ordering against cubecl's streams: the compute stream is synchronised before the call
//! (`Backend::sync`), NCCL runs on a stream of its own in cubecl's (primary) context, and that
//! stream is synchronised before the tensor is handed back.
//!
//! cudarc is loaded dynamically (the `fallback-dynamic-loading` of cubecl-cuda's cudarc): this
//! compiles without a CUDA toolkit, and `libnccl.so` is needed only when a group is joined.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use burn_cubecl::cubecl::cuda::CudaRuntime;
use burn_cubecl::CubeBackend;
use cudarc::driver::result as driver;
use cudarc::driver::sys as driver_sys;
use cudarc::nccl::result as nccl;
use cudarc::nccl::sys as nccl_sys;

use crate::all_reduce::AllReduce;
use crate::error::DistributedError;
use crate::mpi::MpiGroup;

use burn_dp::Cuda;
/// The backend under fusion, whose tensors own the device buffers.
type Cube = CubeBackend<CudaRuntime, f32, i32, u8>;

/// An MPI job whose ranks all-reduce CUDA tensors with NCCL, one GPU per rank.
pub struct NcclGroup {
    mpi: MpiGroup,
    rank: u32,
    world: u32,
    comm: nccl_sys::ncclComm_t,
    stream: driver_sys::CUstream,
    context: driver_sys::CUcontext,
}

impl std::fmt::Debug for NcclGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NcclGroup")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .finish()
    }
}

fn failed(op: &'static str, rank: u32, e: impl std::fmt::Debug) -> DistributedError {
    DistributedError::Collective {
        op,
        rank,
        detail: format!("{e:?}"),
    }
}

impl NcclGroup {
    /// Joins the NCCL communicator of the MPI job `mpi` on CUDA device `device` (this rank's GPU,
    /// e.g. its local rank on the machine): rank 0's unique id is broadcast over MPI, then every
    /// rank initialises its communicator (a collective call: every rank must join).
    pub fn join(mpi: MpiGroup, device: &burn_cuda::CudaDevice) -> Result<Self, DistributedError> {
        let rank = AllReduce::<Cuda>::rank(&mpi);
        let world = AllReduce::<Cuda>::world(&mpi);
        driver::init().map_err(|e| failed("cuda init", rank, e))?;
        let ordinal = i32::try_from(device.index)
            .map_err(|_| DistributedError::Config(format!("CUDA device {}", device.index)))?;
        let cu_device = driver::device::get(ordinal).map_err(|e| failed("cuda device", rank, e))?;
        // SAFETY: `cu_device` is a valid device; the primary context is the one cubecl-cuda
        // retains for it, so the pointers of its buffers are valid in it.
        let context = unsafe { driver::primary_ctx::retain(cu_device) }
            .map_err(|e| failed("cuda context", rank, e))?;
        // SAFETY: `context` was just retained.
        unsafe { driver::ctx::set_current(context) }
            .map_err(|e| failed("cuda context", rank, e))?;
        let mut id = if rank == 0 {
            nccl::get_uniqueid().map_err(|e| failed("nccl unique id", rank, e))?
        } else {
            nccl_sys::ncclUniqueId { internal: [0; 128] }
        };
        let mut bytes: Vec<u8> = id.internal.iter().map(|&c| c as u8).collect();
        mpi.broadcast_from_root(&mut bytes);
        for (c, b) in id.internal.iter_mut().zip(&bytes) {
            *c = *b as std::ffi::c_char;
        }
        let mut comm = MaybeUninit::uninit();
        // SAFETY: `comm` is written by NCCL on success; every rank passes the same id and world
        // and its own rank.
        let comm = unsafe {
            nccl::comm_init_rank(comm.as_mut_ptr(), world as i32, id, rank as i32)
                .map_err(|e| failed("nccl init", rank, e))?;
            comm.assume_init()
        };
        let stream = driver::stream::create(driver::stream::StreamKind::NonBlocking)
            .map_err(|e| failed("cuda stream", rank, e))?;
        Ok(NcclGroup {
            mpi,
            rank,
            world,
            comm,
            stream,
            context,
        })
    }

    /// The MPI job under the communicator.
    pub fn mpi(&self) -> &MpiGroup {
        &self.mpi
    }
}

impl AllReduce<Cuda> for NcclGroup {
    fn rank(&self) -> u32 {
        self.rank
    }

    fn world(&self) -> u32 {
        self.world
    }

    fn all_reduce_sum(
        &mut self,
        tensor: Tensor<Cuda, 1>,
        _step: u64,
    ) -> Result<Tensor<Cuda, 1>, DistributedError> {
        let rank = self.rank;
        let device = tensor.device();
        let n = tensor.dims()[0];
        // A contiguous f32 buffer of our own (the step's flat buffer is a fresh `cat`; `+ 0`
        // keeps a shared one from being written in place).
        let tensor = tensor.add_scalar(0.0);
        let fused = tensor.clone().into_primitive().tensor();
        let client = fused.client.clone();
        let cube = client.resolve_tensor_float::<Cube>(fused);
        <Cuda as Backend>::sync(&device).map_err(|e| failed("cuda sync", rank, e))?;
        let resource = cube
            .client
            .get_resource(cube.handle.clone())
            .map_err(|e| failed("device buffer", rank, e))?;
        let ptr = resource.resource().ptr;
        // SAFETY: `ptr` points at the `n` f32 of `cube`'s handle (kept alive by `resource`), the
        // compute stream is synchronised, the communicator and stream are this group's.
        unsafe {
            driver::ctx::set_current(self.context).map_err(|e| failed("cuda context", rank, e))?;
            nccl::all_reduce(
                ptr as *const c_void,
                ptr as *mut c_void,
                n,
                nccl_sys::ncclDataType_t::ncclFloat32,
                nccl_sys::ncclRedOp_t::ncclSum,
                self.comm,
                self.stream as nccl_sys::cudaStream_t,
            )
            .map_err(|e| failed("all-reduce", rank, e))?;
            driver::stream::synchronize(self.stream).map_err(|e| failed("all-reduce", rank, e))?;
        }
        drop(resource);
        drop(cube);
        Ok(tensor)
    }
}

impl Drop for NcclGroup {
    fn drop(&mut self) {
        // SAFETY: the communicator and stream are this group's and no call is in flight.
        unsafe {
            let _ = nccl::comm_destroy(self.comm);
            let _ = driver::stream::destroy(self.stream);
        }
    }
}
