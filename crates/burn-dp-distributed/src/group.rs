//! A group of peers joined by burn-collective, one process per peer.
//!
//! Every peer is a burn-collective *node* with one device; the nodes meet at a global
//! orchestrator (hosted by peer 0's process, or started separately) and all-reduce over
//! WebSocket (burn-collective's global ring/tree/centralized strategies), on one machine
//! (`127.0.0.1`) or several.
//!
//! burn-collective 0.21 waits forever for a peer that died; every collective call of a
//! [`PeerGroup`] runs on a helper thread and is abandoned after [`NodeConfig::timeout`] with
//! [`DistributedError::Timeout`].

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_collective::{AllReduceStrategy, CollectiveConfig, PeerId, ReduceOperation};

use crate::all_reduce::AllReduce;
use crate::error::DistributedError;

/// How one peer process joins the group.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// This peer's rank, `0..world`.
    pub rank: u32,
    /// Number of peers.
    pub world: u32,
    /// `host:port` of the global orchestrator.
    pub orchestrator: String,
    /// Whether this process starts the orchestrator (on the port of `orchestrator`, listening on
    /// all interfaces). Usually peer 0.
    pub host_orchestrator: bool,
    /// The host other peers reach this peer at (`127.0.0.1` on one machine).
    pub host: String,
    /// The port of this peer's tensor data service (distinct per peer on one machine).
    pub data_port: u16,
    /// The all-reduce algorithm between the peers.
    pub strategy: AllReduceStrategy,
    /// How long a collective operation may take before the peer gives up.
    pub timeout: Duration,
}

impl NodeConfig {
    /// Peer `rank` of `world` on one machine: the orchestrator on `base_port` (hosted by peer
    /// 0), peer `r`'s data service on `base_port + 1 + r`, the centralized all-reduce, and a
    /// timeout of `timeout`.
    pub fn localhost(rank: u32, world: u32, base_port: u16, timeout: Duration) -> Self {
        NodeConfig {
            rank,
            world,
            orchestrator: format!("127.0.0.1:{base_port}"),
            host_orchestrator: rank == 0,
            host: "127.0.0.1".into(),
            data_port: base_port.saturating_add(1).saturating_add(rank as u16),
            strategy: AllReduceStrategy::Centralized,
            timeout,
        }
    }

    fn validate(&self) -> Result<(), DistributedError> {
        if self.world == 0 || self.rank >= self.world {
            return Err(DistributedError::Config(format!(
                "rank {} is not a peer of a world of {}",
                self.rank, self.world
            )));
        }
        if self.timeout.is_zero() {
            return Err(DistributedError::Config(
                "the timeout must be positive".into(),
            ));
        }
        if !self.orchestrator.contains(':') {
            return Err(DistributedError::Config(format!(
                "orchestrator `{}` is not host:port",
                self.orchestrator
            )));
        }
        Ok(())
    }

    fn orchestrator_port(&self) -> Result<u16, DistributedError> {
        self.orchestrator
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| {
                DistributedError::Config(format!(
                    "orchestrator `{}` has no port",
                    self.orchestrator
                ))
            })
    }

    fn collective_config(&self) -> Result<CollectiveConfig, DistributedError> {
        let address = |s: String| {
            s.parse()
                .map_err(|e| DistributedError::Config(format!("address `{s}`: {e}")))
        };
        Ok(CollectiveConfig::default()
            .with_num_devices(1)
            .with_num_nodes(self.world)
            .with_global_address(address(format!("ws://{}", self.orchestrator))?)
            .with_node_address(address(format!("ws://{}:{}", self.host, self.data_port))?)
            .with_data_service_port(self.data_port)
            .with_global_all_reduce_strategy(self.strategy))
    }
}

/// This process's membership in the group: its rank and the collective operations.
pub struct PeerGroup<B: Backend> {
    rank: u32,
    world: u32,
    timeout: Duration,
    _device: B::Device,
}

impl<B: Backend> std::fmt::Debug for PeerGroup<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerGroup")
            .field("rank", &self.rank)
            .field("world", &self.world)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Runs `f` on a helper thread and waits at most `timeout` for it.
fn with_timeout<T: Send + 'static>(
    timeout: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RecvTimeoutError> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(timeout)
}

impl<B: Backend> PeerGroup<B> {
    /// Joins the group as peer `config.rank` with `device` (the inner backend's device, not
    /// autodiff's): starts the orchestrator if this process hosts it, then registers with
    /// burn-collective and waits (at most `config.timeout`) until all `world` peers have.
    pub fn join(config: &NodeConfig, device: B::Device) -> Result<Self, DistributedError> {
        config.validate()?;
        let collective = config.collective_config()?;
        if config.host_orchestrator {
            let port = config.orchestrator_port()?;
            std::thread::Builder::new()
                .name("burn-dp-orchestrator".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(burn_collective::start_global_orchestrator(port)),
                        Err(e) => eprintln!("burn-dp: cannot start the orchestrator: {e}"),
                    }
                })
                .map_err(|e| DistributedError::Launch(format!("orchestrator thread: {e}")))?;
        }
        let rank = config.rank;
        let dev = device.clone();
        let timeout = config.timeout;
        let registered = with_timeout(timeout, move || {
            burn_collective::register::<B>(PeerId(rank), dev, collective)
        });
        let failed = |detail: String| DistributedError::Collective {
            op: "register",
            rank,
            detail,
        };
        match registered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(failed(format!("{e:?}"))),
            Err(RecvTimeoutError::Timeout) => {
                return Err(DistributedError::Timeout {
                    op: "register",
                    rank,
                    seconds: timeout.as_secs_f64(),
                    step: 0,
                })
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(failed("the collective thread panicked".into()))
            }
        }
        Ok(PeerGroup {
            rank,
            world: config.world,
            timeout,
            _device: device,
        })
    }

    /// Leaves the group (burn-collective's `finish_collective`), waiting at most the timeout.
    pub fn finish(self) -> Result<(), DistributedError> {
        let rank = self.rank;
        match with_timeout(self.timeout, move || {
            burn_collective::finish_collective::<B>(PeerId(rank))
        }) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(DistributedError::Collective {
                op: "finish",
                rank,
                detail: format!("{e:?}"),
            }),
            Err(_) => Err(DistributedError::Timeout {
                op: "finish",
                rank,
                seconds: self.timeout.as_secs_f64(),
                step: 0,
            }),
        }
    }
}

impl<B: Backend> AllReduce<B> for PeerGroup<B> {
    fn rank(&self) -> u32 {
        self.rank
    }

    fn world(&self) -> u32 {
        self.world
    }

    fn all_reduce_sum(
        &mut self,
        tensor: Tensor<B, 1>,
        step: u64,
    ) -> Result<Tensor<B, 1>, DistributedError> {
        let rank = self.rank;
        let primitive = tensor.into_primitive().tensor();
        let reduced = with_timeout(self.timeout, move || {
            burn_collective::all_reduce::<B>(PeerId(rank), primitive, ReduceOperation::Sum)
        });
        let failed = |detail: String| DistributedError::Collective {
            op: "all-reduce",
            rank,
            detail,
        };
        match reduced {
            Ok(Ok(p)) => Ok(Tensor::from_primitive(TensorPrimitive::Float(p))),
            Ok(Err(e)) => Err(failed(format!("{e:?}"))),
            Err(RecvTimeoutError::Timeout) => Err(DistributedError::Timeout {
                op: "all-reduce",
                rank,
                seconds: self.timeout.as_secs_f64(),
                step,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(failed(
                "burn-collective's server stopped (a peer's connection was lost)".into(),
            )),
        }
    }
}
