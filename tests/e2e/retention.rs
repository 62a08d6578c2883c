//! Retention end to end, through the real binary: `aetheris dev` (its worker runs the
//! collector) with a tenant whose retention is a couple of seconds. A bad retention is
//! refused with a 422 problem and changes nothing; a good one is shown on GET; finished
//! jobs then answer 404 once the collector deleted them, while a job waiting on a signal
//! stays; the deletions are counted in /metrics and the tenant's transparency log keeps a
//! leaf per deleted job.

use crate::support::{settle, submit};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `aetheris dev` child (killed when dropped).
struct Dev {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_dev(dir: &Path) -> Dev {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("pick a free port")
        .port();
    let log = dir.join("node.log");
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("clone log");
    let child = Command::new(env!("CARGO_BIN_EXE_aetheris"))
        .arg("dev")
        .arg("--insecure-no-auth")
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--bind")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--retention-interval-ms")
        .arg("200")
        .arg("--retention-batch-size")
        .arg("2")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
        .expect("spawn the aetheris binary");
    Dev {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
    }
}

async fn wait_healthy(c: &reqwest::Client, dev: &Dev) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = c.get(format!("{}/healthz", dev.url)).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "aetheris dev not healthy within 30 s:\n{}",
        std::fs::read_to_string(&dev.log).unwrap_or_default()
    );
}

async fn put_limits(c: &reqwest::Client, url: &str, limits: Value) -> (u16, String, Value) {
    let r = c
        .put(format!("{url}/v1/tenants/default/limits"))
        .json(&limits)
        .send()
        .await
        .expect("put limits");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, ctype, r.json().await.expect("json"))
}

async fn default_tenant(c: &reqwest::Client, url: &str) -> Value {
    let list: Value = c
        .get(format!("{url}/v1/tenants"))
        .send()
        .await
        .expect("list tenants")
        .json()
        .await
        .expect("json");
    list["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["id"] == "default"))
        .cloned()
        .unwrap_or_else(|| panic!("no default tenant in {list}"))
}

async fn status_of(c: &reqwest::Client, url: &str, id: &str) -> u16 {
    c.get(format!("{url}/v1/jobs/{id}"))
        .send()
        .await
        .expect("get job")
        .status()
        .as_u16()
}

#[test]
fn finished_jobs_past_a_short_retention_are_deleted_and_waiting_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let dev = start_dev(dir.path());
    let rt = crate::support::rt();
    rt.block_on(async {
        let c = reqwest::Client::new();
        let url = dev.url.clone();
        wait_healthy(&c, &dev).await;

        // A bad retention: 422 problem+json naming the forms, nothing changed.
        for bad in ["12x", "0d", "-3h", "soon"] {
            let (status, ctype, body) = put_limits(&c, &url, json!({"retention": bad})).await;
            assert_eq!(status, 422, "{bad}: {body}");
            assert!(ctype.starts_with("application/problem+json"), "{ctype}");
            assert!(
                body["detail"].as_str().unwrap_or("").contains("forever"),
                "{body}"
            );
        }
        let t = default_tenant(&c, &url).await;
        assert!(t["limits"].get("retention").is_none(), "{t}");

        // A waiting job and three one-step jobs, before the retention is set: retention
        // applies to jobs already finished as well.
        let (_, w) = submit(
            &c,
            &url,
            &json!({"plan": {"steps": [{"id": "w", "wait": {"signal": "go"}}]}}),
        )
        .await;
        let waiting = w["job_id"].as_str().unwrap().to_string();
        let mut finished = Vec::new();
        for i in 0..3 {
            let (s, j) = submit(
                &c,
                &url,
                &json!({"plan": {"steps": [{"id": "a", "tool": "echo", "args": {"i": i}}]}}),
            )
            .await;
            assert_eq!(s, 201, "{j}");
            finished.push(j["job_id"].as_str().unwrap().to_string());
        }
        for id in &finished {
            let j = settle(&c, &url, id, Duration::from_secs(30)).await;
            assert_eq!(j["status"], "succeeded", "{j}");
        }
        let j = settle(&c, &url, &waiting, Duration::from_secs(30)).await;
        assert_eq!(j["status"], "waiting", "{j}");

        let (status, _, body) = put_limits(&c, &url, json!({"retention": "2s"})).await;
        assert_eq!(status, 200, "{body}");
        let t = default_tenant(&c, &url).await;
        assert_eq!(t["limits"]["retention"], "2s", "{t}");

        // The collector (every 200 ms, batches of 2) deletes them within seconds.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut left = Vec::new();
            for id in &finished {
                if status_of(&c, &url, id).await != 404 {
                    left.push(id.clone());
                }
            }
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "finished jobs {left:?} not deleted within 60 s:\n{}",
                std::fs::read_to_string(&dev.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // The waiting job stays, whole, and still runs when signalled.
        let j: Value = c
            .get(format!("{url}/v1/jobs/{waiting}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(j["status"], "waiting", "{j}");
        let r = c
            .post(format!("{url}/v1/jobs/{waiting}/signals/go"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let j: Value = c
                .get(format!("{url}/v1/jobs/{waiting}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if j["status"] == "succeeded" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "signalled job did not finish: {j}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // Counted, and the deletions stay visible in the tenant's transparency log.
        let metrics = c
            .get(format!("{url}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let deleted = crate::support::sample(&metrics, "aetheris_retention_deleted_jobs_total")
            .unwrap_or(0.0);
        assert!(deleted >= 3.0, "deleted {deleted}:\n{metrics}");
        let cp = c
            .get(format!("{url}/v1/evidence/checkpoint"))
            .send()
            .await
            .unwrap();
        assert_eq!(cp.status().as_u16(), 200);
        let cp_text = cp.text().await.unwrap();
        assert!(
            cp_text
                .lines()
                .nth(1)
                .and_then(|l| l.trim().parse::<u64>().ok())
                >= Some(4),
            "the log keeps a leaf per finished job, deleted or not:\n{cp_text}"
        );
    });
}

/// A job that parks gets a snapshot at its park, whatever the cadence, so waking it
/// replays nothing; the cadence is the worker's `snapshot_every`.
#[test]
fn a_parked_job_is_snapshotted_at_its_park() {
    use crate::support::TestNode;
    use aetheris_actors::WorkerConfig;
    use aetheris_runtime::JobId;
    use aetheris_store::Scope;
    let node = TestNode::start(
        |_| {},
        WorkerConfig {
            snapshot_every: 1_000_000,
            ..WorkerConfig::default()
        },
    );
    crate::support::rt().block_on(async {
        let c = reqwest::Client::new();
        let (_, j) = submit(
            &c,
            &node.url,
            &json!({"plan": {"steps": [
                {"id": "a", "tool": "echo"},
                {"id": "w", "wait": {"signal": "go"}, "needs": ["a"]}
            ]}}),
        )
        .await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let j = settle(&c, &node.url, &id, Duration::from_secs(30)).await;
        assert_eq!(j["status"], "waiting", "{j}");
        let job: JobId = id.parse().unwrap();
        let last = node
            .store
            .get_job(Scope::System, job)
            .await
            .unwrap()
            .unwrap()
            .last_seq;
        // The write is asynchronous: allow it a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let snap = node.store.latest_snapshot(job, u64::MAX).await.unwrap();
            if snap.as_ref().is_some_and(|(seq, _)| *seq == last) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no snapshot at the park (seq {last}): {:?}",
                snap.map(|s| s.0)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
