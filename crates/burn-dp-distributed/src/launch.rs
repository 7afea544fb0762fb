//! Starting the peer processes of a run on this machine: what `--peers N` of `burn-dp-peer train`,
//! the bench (`bench train --peers N`) and the examples share ([`crate::launch_peers`]: one
//! `mpirun` process, or one process per TCP peer).
//!
//! A launcher starts one process per rank with [`LocalPeers::spawn`] (the program, usually this
//! executable, and each rank's arguments) and collects them with [`LocalPeers::wait`]; peers that
//! are still running when the [`LocalPeers`] is dropped (the launcher failed) are killed, so an
//! error never leaves orphans. The peers meet at a port of 127.0.0.1 ([`free_local_port`]).

use std::io::Read;
use std::net::TcpListener;
use std::ops::Range;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::error::DistributedError;

/// What happens to the standard output and error of launched peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerOutput {
    /// They write to the launcher's terminal.
    Inherit,
    /// Their standard output is discarded (their standard error goes to the launcher's).
    DiscardStdout,
    /// Both are collected and returned by [`LocalPeers::wait`].
    Capture,
}

/// A peer process that ended.
#[derive(Debug, Clone)]
pub struct PeerExit {
    /// Its rank.
    pub rank: u32,
    /// Its standard output ([`PeerOutput::Capture`]; empty otherwise).
    pub stdout: String,
    /// Its standard error ([`PeerOutput::Capture`]; empty otherwise).
    pub stderr: String,
}

/// Peer processes started on this machine; dropping it kills those still running.
#[derive(Debug)]
pub struct LocalPeers {
    children: Vec<(u32, Option<Child>)>,
}

/// A TCP port of 127.0.0.1 that nobody listens on now (the OS picks it), for a group's root.
pub fn free_local_port() -> Result<u16, DistributedError> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| DistributedError::Launch(format!("no free port on 127.0.0.1: {e}")))
}

impl LocalPeers {
    /// Starts `program` once for every rank of `ranks`, with the arguments `args(rank)`, its
    /// output as `output` says. If one cannot be started, those already started are killed.
    pub fn spawn(
        program: &Path,
        ranks: Range<u32>,
        args: impl Fn(u32) -> Vec<String>,
        output: PeerOutput,
    ) -> Result<Self, DistributedError> {
        let mut peers = LocalPeers {
            children: Vec::new(),
        };
        for rank in ranks {
            let mut command = Command::new(program);
            command.args(args(rank));
            peers.push(rank, command, output)?;
        }
        Ok(peers)
    }

    /// Starts one process, `command` (e.g. `mpirun`, which starts every rank itself), labelled
    /// `rank` in errors and exits, its output as `output` says.
    pub fn spawn_command(
        rank: u32,
        command: Command,
        output: PeerOutput,
    ) -> Result<Self, DistributedError> {
        let mut peers = LocalPeers {
            children: Vec::new(),
        };
        peers.push(rank, command, output)?;
        Ok(peers)
    }

    fn push(
        &mut self,
        rank: u32,
        mut command: Command,
        output: PeerOutput,
    ) -> Result<(), DistributedError> {
        match output {
            PeerOutput::Inherit => {}
            PeerOutput::DiscardStdout => {
                command.stdout(Stdio::null());
            }
            PeerOutput::Capture => {
                command.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
        }
        let child = command.spawn().map_err(|e| {
            DistributedError::Launch(format!(
                "peer {rank} ({}): {e}",
                command.get_program().to_string_lossy()
            ))
        })?;
        self.children.push((rank, Some(child)));
        Ok(())
    }

    /// The ranks started.
    pub fn ranks(&self) -> Vec<u32> {
        self.children.iter().map(|(r, _)| *r).collect()
    }

    /// Waits for every peer (each stops by itself: a lost peer is a timeout of its group) and
    /// returns their exits in rank order; [`DistributedError::Launch`] names every peer that
    /// failed, with the last line of its standard error when captured.
    pub fn wait(mut self) -> Result<Vec<PeerExit>, DistributedError> {
        // Captured pipes are drained on their own threads, so a peer never blocks on a full pipe
        // while the launcher waits for another one.
        let mut waiting = Vec::new();
        for (rank, child) in &mut self.children {
            let Some(mut child) = child.take() else {
                continue;
            };
            let rank = *rank;
            let drain = |pipe: Option<Box<dyn Read + Send>>| {
                std::thread::spawn(move || {
                    let mut text = String::new();
                    if let Some(mut p) = pipe {
                        let mut bytes = Vec::new();
                        let _ = p.read_to_end(&mut bytes);
                        text = String::from_utf8_lossy(&bytes).into_owned();
                    }
                    text
                })
            };
            let out = drain(
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            );
            let err = drain(
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
            );
            waiting.push((rank, child, out, err));
        }
        let mut exits = Vec::new();
        let mut failed = Vec::new();
        for (rank, mut child, out, err) in waiting {
            let status = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            match status {
                Ok(s) if s.success() => {}
                // The first `error:` line (mpirun's own messages follow a rank's), else the last.
                Ok(s) => failed.push(
                    match stderr
                        .lines()
                        .find(|l| l.starts_with("error:") || l.contains(": error:"))
                        .or_else(|| stderr.lines().last())
                    {
                        Some(line) => format!("peer {rank}: {s}: {line}"),
                        None => format!("peer {rank}: {s}"),
                    },
                ),
                Err(e) => failed.push(format!("peer {rank}: {e}")),
            }
            exits.push(PeerExit {
                rank,
                stdout,
                stderr,
            });
        }
        if failed.is_empty() {
            Ok(exits)
        } else {
            Err(DistributedError::Launch(failed.join("; ")))
        }
    }
}

impl Drop for LocalPeers {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The arguments a launched peer gets after its own: `--rank r --world K <root_flag> host:port`
/// (`root_flag` is the program's flag for the root address, e.g. `--root`).
pub fn rank_args(rank: u32, world: u32, root_flag: &str, root: &str) -> Vec<String> {
    vec![
        "--rank".into(),
        rank.to_string(),
        "--world".into(),
        world.to_string(),
        root_flag.into(),
        root.into(),
    ]
}

/// The command line of this process without the flag `flag` and its value (both `--flag v` and
/// `--flag=v`), without the program name: what a process that re-launches itself as peers passes
/// on (e.g. without `--devices`).
pub fn args_without(args: impl IntoIterator<Item = String>, flag: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    let prefix = format!("{flag}=");
    for a in args {
        if skip_value {
            skip_value = false;
        } else if a == flag {
            skip_value = true;
        } else if !a.starts_with(&prefix) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_without_drops_the_flag_in_both_forms() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            args_without(s(&["--a", "1", "--devices", "2", "--b"]), "--devices"),
            s(&["--a", "1", "--b"])
        );
        assert_eq!(
            args_without(s(&["--devices=3", "--devices-x", "1"]), "--devices"),
            s(&["--devices-x", "1"])
        );
    }
}
