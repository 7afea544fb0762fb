//! A star all-reduce over TCP between peer processes (peer 0 sums, in rank order, and sends the
//! sum back): the zero-install fallback for the peers of one machine (`--peers N` in a build
//! without the feature `mpi`); across machines, use MPI (`MpiGroup`).
//!
//! Every socket has the group's timeout: a peer that dies is seen as a closed connection
//! ([`DistributedError::Collective`]) or a silent one ([`DistributedError::Timeout`]), never as a
//! hang.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::all_reduce::AllReduce;
use crate::error::DistributedError;

/// Magic number of the handshake ("bdp1").
const MAGIC: u32 = 0x6264_7031;

/// The TCP group of one peer process.
#[derive(Debug)]
pub struct TcpGroup {
    rank: u32,
    world: u32,
    timeout: Duration,
    /// Peer 0: the streams of peers 1..world, by rank. Others: the stream to peer 0.
    streams: Vec<TcpStream>,
}

fn io_error(
    rank: u32,
    op: &'static str,
    step: u64,
    timeout: Duration,
    e: std::io::Error,
) -> DistributedError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => DistributedError::Timeout {
            op,
            rank,
            seconds: timeout.as_secs_f64(),
            step,
        },
        ErrorKind::InvalidData => DistributedError::Collective {
            op,
            rank,
            detail: format!("{e} (the peers' models do not train the same parameters)"),
        },
        _ => DistributedError::Collective {
            op,
            rank,
            detail: format!("{e} (a peer died or closed its connection)"),
        },
    }
}

impl TcpGroup {
    /// Joins as peer `rank` of `world`: peer 0 listens on `root` (`host:port`) and waits for the
    /// others (at most `timeout`), the others connect to it (retrying until `timeout`).
    pub fn join(
        rank: u32,
        world: u32,
        root: &str,
        timeout: Duration,
    ) -> Result<Self, DistributedError> {
        if world == 0 || rank >= world {
            return Err(DistributedError::Config(format!(
                "rank {rank} is not a peer of a world of {world}"
            )));
        }
        if timeout.is_zero() {
            return Err(DistributedError::Config(
                "the timeout must be positive".into(),
            ));
        }
        let err = |e| io_error(rank, "join", 0, timeout, e);
        let deadline = Instant::now() + timeout;
        let mut streams = Vec::new();
        if rank == 0 {
            let listener = TcpListener::bind(root).map_err(err)?;
            listener.set_nonblocking(true).map_err(err)?;
            let mut by_rank: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
            while by_rank.iter().any(Option::is_none) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        s.set_nonblocking(false).map_err(err)?;
                        s.set_read_timeout(Some(timeout)).map_err(err)?;
                        s.set_write_timeout(Some(timeout)).map_err(err)?;
                        s.set_nodelay(true).map_err(err)?;
                        let mut hello = [0u8; 12];
                        s.read_exact(&mut hello).map_err(err)?;
                        let word = |i: usize| {
                            u32::from_le_bytes([hello[i], hello[i + 1], hello[i + 2], hello[i + 3]])
                        };
                        let (magic, r, w) = (word(0), word(4), word(8));
                        if magic != MAGIC
                            || w != world
                            || r == 0
                            || r >= world
                            || by_rank[r as usize - 1].is_some()
                        {
                            return Err(DistributedError::Config(format!(
                                "a peer introduced itself as rank {r} of {w} (this group: {world} peers)"
                            )));
                        }
                        by_rank[r as usize - 1] = Some(s);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return Err(DistributedError::Timeout {
                                op: "join",
                                rank,
                                seconds: timeout.as_secs_f64(),
                                step: 0,
                            });
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(err(e)),
                }
            }
            streams = by_rank.into_iter().flatten().collect();
        } else {
            let mut s = loop {
                match TcpStream::connect(root) {
                    Ok(s) => break s,
                    Err(e) => {
                        if Instant::now() > deadline {
                            return Err(err(std::io::Error::new(ErrorKind::TimedOut, e)));
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            };
            s.set_read_timeout(Some(timeout)).map_err(err)?;
            s.set_write_timeout(Some(timeout)).map_err(err)?;
            s.set_nodelay(true).map_err(err)?;
            let mut hello = Vec::with_capacity(12);
            for w in [MAGIC, rank, world] {
                hello.extend_from_slice(&w.to_le_bytes());
            }
            s.write_all(&hello).map_err(err)?;
            streams.push(s);
        }
        Ok(TcpGroup {
            rank,
            world,
            timeout,
            streams,
        })
    }
}

fn send(s: &mut TcpStream, values: &[f32]) -> std::io::Result<()> {
    let mut bytes = Vec::with_capacity(8 + 4 * values.len());
    bytes.extend_from_slice(&(values.len() as u64).to_le_bytes());
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    s.write_all(&bytes)
}

fn receive(s: &mut TcpStream, expected: usize) -> std::io::Result<Vec<f32>> {
    let mut len = [0u8; 8];
    s.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len) as usize;
    if len != expected {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            format!("a peer sent {len} values, expected {expected}"),
        ));
    }
    let mut bytes = vec![0u8; 4 * len];
    s.read_exact(&mut bytes)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

impl<B: Backend> AllReduce<B> for TcpGroup {
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
        let device = tensor.device();
        let mut values = crate::all_reduce::host_values(tensor, self.rank)?;
        let n = values.len();
        let (rank, timeout) = (self.rank, self.timeout);
        let err = |e| io_error(rank, "all-reduce", step, timeout, e);
        if self.rank == 0 {
            // Sum in rank order: the same sum on every run, sent unchanged to every peer.
            for s in &mut self.streams {
                let theirs = receive(s, n).map_err(err)?;
                values.iter_mut().zip(theirs).for_each(|(a, b)| *a += b);
            }
            for s in &mut self.streams {
                send(s, &values).map_err(err)?;
            }
        } else {
            let s = &mut self.streams[0];
            send(s, &values).map_err(err)?;
            values = receive(s, n).map_err(err)?;
        }
        Ok(Tensor::from_data(TensorData::new(values, [n]), &device))
    }
}
