//! Data-parallel DP on Flex with peer processes on 127.0.0.1 (the crate's `burn-dp-peer`
//! binary), against one process on the union of their batches.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use burn::optim::SgdConfig;
use burn_dp::{
    AccountantKind, ClippingFn, DpAutodiff, DpOptimizer, NoiseSource, PerSampleConfig,
    PhysicalBatch, PoissonSampler, PrivacyState,
};
use serde_json::Value;

/// The demo task of `burn-dp-peer` (the binary's own module), for the single-process references.
#[path = "../src/bin/burn-dp-peer/demo.rs"]
mod demo;

use demo::DemoNet;

type B = burn_dp::Flex;
type Dp = DpAutodiff<B>;

const PEER: &str = env!("CARGO_BIN_EXE_burn-dp-peer");

/// A port nobody listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `world` peers of `burn-dp-peer train` with `args` and waits for all of them (killing
/// them after `watchdog`, so a hang fails the test instead of blocking it).
fn run_peers(
    world: u32,
    args: &[String],
    extra: &dyn Fn(u32) -> Vec<String>,
    watchdog: Duration,
) -> Vec<Output> {
    let root = free_port();
    let children: Vec<Child> = (0..world)
        .map(|rank| {
            Command::new(PEER)
                .arg("train")
                .args(["--rank", &rank.to_string(), "--world", &world.to_string()])
                .args(["--root", &format!("127.0.0.1:{root}")])
                .args(args)
                .args(extra(rank))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn burn-dp-peer")
        })
        .collect();
    let start = Instant::now();
    let mut children: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    loop {
        let done = children.iter_mut().all(|c| {
            c.as_mut()
                .map(|c| c.try_wait().ok().flatten().is_some())
                .unwrap_or(true)
        });
        if done {
            break;
        }
        if start.elapsed() > watchdog {
            for c in children.iter_mut().flatten() {
                let _ = c.kill();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    children
        .into_iter()
        .map(|c| c.expect("child").wait_with_output().expect("output"))
        .collect()
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn report(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report")).expect("json")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn assert_ok(outputs: &[Output]) {
    for (rank, o) in outputs.iter().enumerate() {
        assert!(
            o.status.success(),
            "peer {rank}: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

const N: usize = 48;
const Q: f64 = 0.15;
const PHYSICAL: usize = 4;

fn privacy(sigma: f64) -> PrivacyState {
    PrivacyState::with_noise_multiplier(sigma, Q, 1e-5, AccountantKind::Rdp).expect("privacy")
}

/// K = 2 peers give the parameters of one process that steps on the union of their batches (the
/// same fixed seed: peer r noises the parameters k ≡ r (mod 2) with the values one process draws
/// for them, so the noise is the same, and any error in the reduce or the scaling shows).
#[test]
fn two_peers_equal_one_process_on_the_union_of_their_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("peer-{rank}.json");
    let steps = 8;
    let sigma = 0.5;
    let args = strings(&[
        "--steps",
        &steps.to_string(),
        "--noise-multiplier",
        &sigma.to_string(),
        "--sample-rate",
        &Q.to_string(),
        "--dataset-size",
        &N.to_string(),
        "--physical-batch-size",
        &PHYSICAL.to_string(),
        "--lr",
        "0.2",
        "--fixed-seed-for-experiments",
        "7",
        "--check-every",
        "1",
        "--record",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_ok(&run_peers(2, &args, &|_| vec![], Duration::from_secs(300)));
    let peers: Vec<Value> = (0..2)
        .map(|r| report(&dir.path().join(format!("peer-{r}.json"))))
        .collect();

    // One process: the same model, optimizer, clipping and noise seed; its sampler only fixes q·N.
    let device = Default::default();
    let sampler = PoissonSampler::new(N, Q, PHYSICAL, NoiseSource::FixedSeedForExperiments(7))
        .expect("sampler");
    let mut optim = DpOptimizer::new(
        SgdConfig::new().init::<Dp, DemoNet<Dp>>(),
        PerSampleConfig::new(ClippingFn::Automatic { gamma: 0.01 }),
        privacy(sigma),
        sampler,
        NoiseSource::FixedSeedForExperiments(7),
    )
    .expect("optimizer");
    let mut model = DemoNet::<Dp>::deterministic(&device);
    let mut total = 0;
    for step in 0..steps {
        let mut union: Vec<usize> = Vec::new();
        for p in &peers {
            let idx = &p["records"][step]["indices"];
            union.extend(
                idx.as_array()
                    .expect("indices")
                    .iter()
                    .map(|v| v.as_u64().expect("index") as usize),
            );
        }
        total += union.len();
        if union.is_empty() {
            model = optim.step_empty(0.2, model).expect("step_empty");
        } else {
            for chunk in union.chunks(PHYSICAL) {
                let mut indices = chunk.to_vec();
                let mut mask = vec![1f32; chunk.len()];
                indices.resize(PHYSICAL, 0);
                mask.resize(PHYSICAL, 0.0);
                let physical = PhysicalBatch { indices, mask };
                let _open = physical.open();
                optim
                    .backward(
                        &model,
                        demo::losses::<B>(&model, &physical.indices),
                        &physical,
                    )
                    .expect("backward");
            }
            model = optim.step(0.2, model).expect("step");
        }
        let expected = demo::flat_parameters(&model);
        for (rank, p) in peers.iter().enumerate() {
            let got = floats(&p["records"][step]["params"]);
            let diff = got
                .iter()
                .zip(&expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff <= 1e-5, "step {step}, peer {rank}: max |Δθ| = {diff}");
        }
        assert_eq!(
            floats(&peers[0]["records"][step]["params"]),
            floats(&peers[1]["records"][step]["params"]),
            "the replicas differ after step {step}"
        );
    }
    assert!(total > 0, "no example was drawn in {steps} steps");
    // The accountant of every peer saw the global q and T.
    let eps = optim.epsilon().expect("epsilon").epsilon;
    for p in &peers {
        assert!((p["epsilon"].as_f64().expect("epsilon") - eps).abs() < 1e-9);
    }
    // Fixed-seed regression: the replicas' final parameters, as recorded (sum, sum of squares).
    let last = floats(&peers[0]["records"][steps - 1]["params"]);
    let sum: f64 = last.iter().map(|&v| v as f64).sum();
    let squares: f64 = last.iter().map(|&v| (v as f64).powi(2)).sum();
    assert!(
        (sum - RECORDED_TWO_PEERS.0).abs() < 1e-6 && (squares - RECORDED_TWO_PEERS.1).abs() < 1e-6,
        "two-peer run: sum {sum:?}, sum of squares {squares:?} (recorded {RECORDED_TWO_PEERS:?})"
    );
}

/// The final parameters' sum and sum of squares of the fixed-seed two-peer run above, recorded
/// after the replica check became a reducer decorator (the run equals the one-process step,
/// checked above at every step).
const RECORDED_TWO_PEERS: (f64, f64) = (2.6689057257026434, 3.5400024770106135);

/// With noise on (OS keys), the update's variance is σ²R²/(qN)² (the noise was drawn once),
/// not K times that. Large σ makes the noise dominate the clipped sum (|S| ≤ |batch|·R).
#[test]
fn two_peers_draw_the_noise_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("peer-{rank}.json");
    let (steps, sigma, q, n, lr) = (40usize, 20.0f64, 0.05f64, 64usize, 1.0f64);
    let args = strings(&[
        "--steps",
        &steps.to_string(),
        "--noise-multiplier",
        &sigma.to_string(),
        "--sample-rate",
        &q.to_string(),
        "--dataset-size",
        &n.to_string(),
        "--physical-batch-size",
        "4",
        "--lr",
        &lr.to_string(),
        "--record",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_ok(&run_peers(2, &args, &|_| vec![], Duration::from_secs(300)));
    let p0 = report(&dir.path().join("peer-0.json"));
    let p1 = report(&dir.path().join("peer-1.json"));
    let mut previous = demo::flat_parameters(&DemoNet::<B>::deterministic(&Default::default()));
    let mut squares = Vec::new();
    for step in 0..steps {
        let params = floats(&p0["records"][step]["params"]);
        assert_eq!(params, floats(&p1["records"][step]["params"]));
        squares.extend(
            params
                .iter()
                .zip(&previous)
                .map(|(a, b)| ((a - b) as f64).powi(2)),
        );
        previous = params;
    }
    let measured = squares.iter().sum::<f64>() / squares.len() as f64;
    // Automatic clipping: R = 1.
    let expected = (lr * sigma / (q * n as f64)).powi(2);
    let ratio = measured / expected;
    // 1640 squared normals: the ratio's standard deviation is about 0.035; K = 2 noise draws would
    // give 2.
    assert!(
        (0.8..1.25).contains(&ratio),
        "variance ratio {ratio} (expected 1, 2 = noise drawn twice)"
    );
}

/// A peer that dies makes the other stop with a typed timeout error at the next all-reduce (not
/// a hang); resuming both from the last checkpoint continues with the same ε as an uninterrupted
/// run, from the parameters saved (bit for bit), and (a fixed seed: the same draws and noise)
/// through the same parameters as the uninterrupted run, step by step.
#[test]
fn a_dead_peer_stops_the_others_and_the_checkpoint_resumes_with_the_same_epsilon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("ckpt");
    let out = dir.path().join("peer-{rank}.json");
    let common = strings(&[
        "--noise-multiplier",
        "1.0",
        "--sample-rate",
        &Q.to_string(),
        "--dataset-size",
        &N.to_string(),
        "--physical-batch-size",
        &PHYSICAL.to_string(),
        "--timeout-s",
        "4",
        "--fixed-seed-for-experiments",
        "11",
        "--record",
        "--out",
        out.to_str().expect("utf-8"),
        "--checkpoint-dir",
        ckpt.to_str().expect("utf-8"),
    ]);
    let mut first = common.clone();
    first.extend(strings(&["--steps", "6", "--checkpoint-every", "2"]));
    let outputs = run_peers(
        2,
        &first,
        &|rank| {
            if rank == 1 {
                strings(&["--die-at-step", "3"])
            } else {
                vec![]
            }
        },
        Duration::from_secs(120),
    );
    assert_eq!(outputs[1].status.code(), Some(3), "peer 1 was to die");
    let stderr = String::from_utf8_lossy(&outputs[0].stderr);
    assert_eq!(
        outputs[0].status.code(),
        Some(2),
        "peer 0 must stop with an error: {stderr}"
    );
    assert!(stderr.contains("collective all-reduce"), "{stderr}");
    // Both saved after step 2 (steps 0, 1); resume for 3 more steps: 5 in all.
    let saved: Vec<Vec<f32>> = (0..2)
        .map(|r| {
            let text = std::fs::read_to_string(ckpt.join(format!("peer-{r}.params.json")))
                .expect("saved parameters");
            floats(&serde_json::from_str(&text).expect("json"))
        })
        .collect();
    assert_eq!(saved[0], saved[1], "the replicas saved different models");
    let mut resumed = common.clone();
    resumed.extend(strings(&["--steps", "3", "--resume"]));
    assert_ok(&run_peers(
        2,
        &resumed,
        &|_| vec![],
        Duration::from_secs(120),
    ));
    let resumed: Vec<Value> = (0..2)
        .map(|r| report(&dir.path().join(format!("peer-{r}.json"))))
        .collect();
    for (r, p) in resumed.iter().enumerate() {
        assert_eq!(
            floats(&p["initial_params"]),
            saved[r],
            "peer {r} did not resume the saved parameters"
        );
    }
    // The same 5 steps without interruption.
    let mut straight = common.clone();
    straight.truncate(straight.len() - 2); // no checkpoint directory
    straight.extend(strings(&["--steps", "5"]));
    assert_ok(&run_peers(
        2,
        &straight,
        &|_| vec![],
        Duration::from_secs(120),
    ));
    let straight: Vec<Value> = (0..2)
        .map(|r| report(&dir.path().join(format!("peer-{r}.json"))))
        .collect();
    let eps = straight[0]["epsilon"].as_f64().expect("epsilon");
    assert!(eps > 0.0);
    // What was saved is the uninterrupted run's model after 2 steps, and the resumed run's 3
    // steps are its steps 3..5: the same draws of each peer, the same parameters.
    assert_eq!(floats(&straight[0]["records"][1]["params"]), saved[0]);
    for (r, p) in resumed.iter().enumerate() {
        let e = p["epsilon"].as_f64().expect("epsilon");
        assert!(
            (e - eps).abs() < 1e-9,
            "peer {r}: ε {e} after resuming, {eps} straight"
        );
        for i in 0..3 {
            let (a, b) = (&p["records"][i], &straight[r]["records"][2 + i]);
            assert_eq!(
                a["indices"],
                b["indices"],
                "peer {r}: resumed step {} drew other examples",
                i + 3
            );
            assert_eq!(
                floats(&a["params"]),
                floats(&b["params"]),
                "peer {r}: resumed step {} differs from the uninterrupted run",
                i + 3
            );
        }
    }
}

/// 500 consecutive steps of two peer processes (the demo model, small batches).
#[test]
fn two_peer_processes_survive_500_steps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("peer-{rank}.json");
    let args = strings(&[
        "--steps",
        "500",
        "--noise-multiplier",
        "1.0",
        "--sample-rate",
        "0.05",
        "--dataset-size",
        "64",
        "--physical-batch-size",
        "4",
        "--check-every",
        "10",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    assert_ok(&run_peers(2, &args, &|_| vec![], Duration::from_secs(600)));
    let p0 = report(&dir.path().join("peer-0.json"));
    let p1 = report(&dir.path().join("peer-1.json"));
    assert_eq!(floats(&p0["params"]), floats(&p1["params"]));
    assert_eq!(p0["steps"].as_u64(), Some(500));
}

/// Replicas that start from different models are refused at the first step with a typed error on
/// every peer.
#[test]
fn diverged_replicas_are_a_typed_error() {
    let args = strings(&[
        "--steps",
        "3",
        "--noise-multiplier",
        "1.0",
        "--sample-rate",
        "0.1",
        "--dataset-size",
        "32",
    ]);
    let extra = |rank| {
        if rank == 1 {
            strings(&["--perturb-initial-model"])
        } else {
            vec![]
        }
    };
    let outputs = run_peers(2, &args, &extra, Duration::from_secs(120));
    for (rank, o) in outputs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "peer {rank}: {stderr}");
        assert!(
            stderr.contains("replicas diverged before step 0"),
            "peer {rank}: {stderr}"
        );
    }
}

/// Issue 22.8: a peer with another noise multiplier (it would noise its share of every parameter
/// less) is refused at the first step, on every peer, with a typed error.
#[test]
fn peers_with_different_privacy_settings_are_refused() {
    let args = strings(&[
        "--steps",
        "3",
        "--sample-rate",
        "0.1",
        "--dataset-size",
        "32",
    ]);
    let extra = |rank| {
        let sigma = if rank == 1 { "0.5" } else { "1.0" };
        strings(&["--noise-multiplier", sigma])
    };
    let outputs = run_peers(2, &args, &extra, Duration::from_secs(120));
    for (rank, o) in outputs.iter().enumerate() {
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "peer {rank}: {stderr}");
        assert!(
            stderr.contains("privacy settings differ"),
            "peer {rank}: {stderr}"
        );
    }
}

/// The peers' shards are disjoint and cover the data set (their union is one Poisson sample).
#[test]
fn shards_partition_the_data_set() {
    for (n, k) in [(48, 2), (49, 3), (5, 4), (0, 2)] {
        let mut seen = vec![0; n];
        for r in 0..k {
            for i in burn_dp::shard_range(n, r, k) {
                seen[i] += 1;
            }
        }
        assert!(seen.iter().all(|&c| c == 1), "{n} examples on {k} peers");
    }
}

/// A peer whose group never forms stops with a timeout, not a hang.
#[test]
fn joining_an_absent_group_times_out() {
    let port = free_port();
    let err = burn_dp_distributed::TcpGroup::join(
        1,
        2,
        &format!("127.0.0.1:{port}"),
        Duration::from_millis(300),
    )
    .expect_err("nobody listens");
    assert!(
        matches!(
            err,
            burn_dp_distributed::DistributedError::Timeout { op: "join", .. }
        ),
        "{err}"
    );
}

/// `mpirun -np 2 burn-dp-peer train <args>` (feature `mpi`), killed after `watchdog`.
#[cfg(feature = "mpi")]
fn run_mpirun(args: &[String], watchdog: Duration) -> Output {
    let mut train = strings(&["train"]);
    train.extend(args.iter().cloned());
    let mut child = burn_dp_distributed::mpirun_command(Path::new(PEER), 2, &train)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mpirun (Open MPI: apt-get install openmpi-bin libopenmpi-dev)");
    let start = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if start.elapsed() > watchdog {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// Issue 26: two ranks under `mpirun` (MPI_Allreduce, rank and world from MPI) train the same
/// parameters, bit for bit, as two TCP peers with the same seed (which equal one process on the
/// union of their batches, above), and account the same ε.
#[cfg(feature = "mpi")]
#[test]
fn two_mpi_ranks_equal_two_tcp_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let common = |out: &Path| {
        strings(&[
            "--steps",
            "6",
            "--noise-multiplier",
            "0.7",
            "--sample-rate",
            &Q.to_string(),
            "--dataset-size",
            &N.to_string(),
            "--physical-batch-size",
            &PHYSICAL.to_string(),
            "--fixed-seed-for-experiments",
            "5",
            "--check-every",
            "1",
            "--record",
            "--out",
            out.to_str().expect("utf-8"),
        ])
    };
    let mpi_out = dir.path().join("mpi-{rank}.json");
    let o = run_mpirun(&common(&mpi_out), Duration::from_secs(300));
    assert!(
        o.status.success(),
        "mpirun: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let tcp_out = dir.path().join("tcp-{rank}.json");
    assert_ok(&run_peers(
        2,
        &common(&tcp_out),
        &|_| vec![],
        Duration::from_secs(300),
    ));
    for r in 0..2 {
        let m = report(&dir.path().join(format!("mpi-{r}.json")));
        let t = report(&dir.path().join(format!("tcp-{r}.json")));
        assert_eq!(m["world"].as_u64(), Some(2), "MPI's world");
        assert_eq!(m["rank"].as_u64(), Some(r), "MPI's rank");
        assert_eq!(m["records"], t["records"], "rank {r}: MPI and TCP differ");
        assert_eq!(m["epsilon"], t["epsilon"], "rank {r}: ε differs");
    }
}

/// Issue 26: a rank that dies under `mpirun` ends the job (MPI aborts the others: no hang), and
/// the last checkpoint resumes under `mpirun` with the ε and parameters of the uninterrupted run.
#[cfg(feature = "mpi")]
#[test]
fn a_dead_mpi_rank_ends_the_job_and_the_checkpoint_resumes_with_the_same_epsilon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ckpt = dir.path().join("ckpt");
    let out = dir.path().join("peer-{rank}.json");
    let mut common = strings(&[
        "--noise-multiplier",
        "1.0",
        "--sample-rate",
        &Q.to_string(),
        "--dataset-size",
        &N.to_string(),
        "--physical-batch-size",
        &PHYSICAL.to_string(),
        "--fixed-seed-for-experiments",
        "11",
        "--record",
        "--out",
        out.to_str().expect("utf-8"),
    ]);
    let with_ckpt = |mut a: Vec<String>, extra: &[&str]| {
        a.extend(strings(&[
            "--checkpoint-dir",
            ckpt.to_str().expect("utf-8"),
        ]));
        a.extend(strings(extra));
        a
    };
    let first = with_ckpt(
        common.clone(),
        &[
            "--steps",
            "6",
            "--checkpoint-every",
            "2",
            "--die-at-step",
            "3",
            "--die-rank",
            "1",
        ],
    );
    let o = run_mpirun(&first, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the job must fail: {stderr}");
    assert!(stderr.contains("dying before step 3"), "{stderr}");
    let resumed = with_ckpt(common.clone(), &["--steps", "3", "--resume"]);
    let o = run_mpirun(&resumed, Duration::from_secs(120));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resumed: Vec<Value> = (0..2)
        .map(|r| report(&dir.path().join(format!("peer-{r}.json"))))
        .collect();
    common.extend(strings(&["--steps", "5"]));
    let o = run_mpirun(&common, Duration::from_secs(120));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (r, p) in resumed.iter().enumerate() {
        let straight = report(&dir.path().join(format!("peer-{r}.json")));
        assert_eq!(p["epsilon"], straight["epsilon"], "rank {r}: ε differs");
        assert_eq!(
            p["params"], straight["params"],
            "rank {r}: parameters differ"
        );
    }
}
