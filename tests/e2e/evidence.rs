//! Evidence packages end to end (G6, G7, G8), as users meet them:
//!
//! - on both stores, a real job (tool steps, a wait released by a signal, a side effect
//!   whose outcome was unknown and then confirmed) is exported over HTTP twice (the same
//!   bytes, and the same as `aetheris evidence export`), verified by the binary
//!   (`aetheris evidence verify`, exit 0 and the summary), tampered with (a flipped byte, a
//!   changed event: non-zero exit naming the file, or the seq), redacted (asked for, and by
//!   the tenant's policy); another tenant's auditor gets 404, a viewer 403 with a `denied`
//!   audit row, an auditor 200 with an `evidence.export` row; checkpoints kept before and
//!   after more jobs finish are shown consistent by the binary;
//! - without a signing key the evidence routes answer 503 and the rest works;
//! - on PostgreSQL with a server and two worker processes, jobs of one tenant finishing at
//!   once get leaf indexes 0..n; after a job's leaf is rewritten, or deleted and the log
//!   renumbered, in the database, a kept checkpoint (or package) is no longer consistent
//!   with the log, and the binary says so;
//! - every `aetheris evidence` failure is one `error:` line and a non-zero exit.

use crate::support::{rt, TestNode};
use aetheris_actors::{Invocation, Tool, ToolError, WorkerConfig};
use aetheris_api::auth::{self, AuthConfig, Claims, Role};
use aetheris_proof::evidence::{read_package, write_package, Limits};
use aetheris_proof::keys::public_key_file;
use aetheris_proof::SigningKey;
use aetheris_runtime::EffectClass;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SECRET: [u8; 32] = [11u8; 32];

fn token(sub: &str, tenant: &str, role: Role) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    auth::issue_hs256(&SECRET, &Claims::new(sub, tenant, &[role], now, 3600))
}

/// side_effect; panics on the first call of each key, so its outcome is unknown until a
/// human confirms it.
struct PanicOnce(Arc<Mutex<HashMap<String, u32>>>);

#[async_trait::async_trait]
impl Tool for PanicOnce {
    fn effect(&self) -> EffectClass {
        EffectClass::SideEffect
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        let n = {
            let mut m = self.0.lock().unwrap();
            let n = m.entry(call.invocation_key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if n == 1 {
            panic!("lost the connection mid-charge");
        }
        Ok(json!({"charged": true}))
    }
}

/// The fixed evidence key of these tests, its public key file written into `dir`.
fn evidence_key(dir: &Path) -> (Arc<SigningKey>, PathBuf) {
    let key = SigningKey::from_seed([77; 32]).unwrap();
    let pub_path = dir.join("evidence.pub");
    std::fs::write(&pub_path, public_key_file(&key.public_key())).unwrap();
    (Arc::new(key), pub_path)
}

fn node(pg: bool, key: Option<Arc<SigningKey>>) -> TestNode {
    let cfg = AuthConfig {
        hs256_secrets: vec![SECRET.to_vec()],
        ..Default::default()
    };
    let node = TestNode::start_configured(
        pg,
        |t| t.register("charge", PanicOnce(Arc::default())),
        WorkerConfig::default(),
        Some(cfg),
        move |c| c.evidence_key = key,
    );
    rt().block_on(async {
        for t in ["default", "acme", "globex"] {
            // (PostgreSQL's migrations create `default` already.)
            match node.store.create_tenant(t, t, json!({}), None).await {
                Ok(_) | Err(aetheris_store::StoreError::Conflict(_)) => {}
                Err(e) => panic!("tenant {t}: {e}"),
            }
        }
    });
    node
}

/// An answer: status, content type, content disposition and body bytes.
struct Answer {
    status: u16,
    content_type: String,
    disposition: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

async fn call(
    c: &reqwest::Client,
    method: &str,
    url: &str,
    tok: &str,
    body: Option<Value>,
) -> Answer {
    let mut r = match method {
        "GET" => c.get(url),
        "PUT" => c.put(url),
        _ => c.post(url),
    }
    .bearer_auth(tok);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let header = |h: &str| {
        resp.headers()
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (status, content_type, disposition) = (
        resp.status().as_u16(),
        header("content-type"),
        header("content-disposition"),
    );
    Answer {
        status,
        content_type,
        disposition,
        body: resp.bytes().await.unwrap().to_vec(),
    }
}

async fn until(
    c: &reqwest::Client,
    url: &str,
    tok: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let j = call(c, "GET", url, tok, None).await.json();
        if ok(&j) {
            return j;
        }
        assert!(Instant::now() < deadline, "{what}: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the binary with `args` (no `AETHERIS_*` environment): exit code, stdout, stderr.
fn cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aetheris"));
    cmd.args(args)
        .current_dir(dir)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("AETHERIS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run aetheris");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A failing command: non-zero exit and exactly one `error:` line containing `expect`.
#[track_caller]
fn fails(dir: &Path, args: &[&str], expect: &str) -> String {
    let (code, _, err) = cli(dir, args);
    assert_ne!(code, 0, "{args:?} must fail; stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: one line, got {err:?}");
    assert!(
        lines[0].starts_with("error: ") && lines[0].contains(expect),
        "{args:?}: {:?} must name {expect:?}",
        lines[0]
    );
    assert!(!err.contains("panicked"), "{err}");
    lines[0].to_string()
}

/// Drives the job of these tests to its end: a fetch, a wait released by an approval
/// signal, a charge whose outcome is unknown until confirmed, a receipt. Checks on the way
/// that an unfinished job cannot be exported (409).
async fn real_job(c: &reqwest::Client, url: &str, admin: &str, auditor: &str) -> String {
    let body = json!({"input": {"order": "A-17", "card": "tok_4242"}, "plan": {"steps": [
        {"id": "fetch", "tool": "echo", "args": {"total": 42}},
        {"id": "approve", "wait": {"signal": "approval"}, "needs": ["fetch"]},
        {"id": "pay", "tool": "charge", "needs": ["approve"]},
        {"id": "receipt", "tool": "echo", "needs": ["pay"], "args": {"paid": "${steps.pay.output}"}}
    ]}});
    let a = call(c, "POST", &format!("{url}/v1/jobs"), admin, Some(body)).await;
    assert_eq!(a.status, 201, "{}", a.json());
    let id = a.json()["job_id"].as_str().unwrap().to_string();
    let job_url = format!("{url}/v1/jobs/{id}");
    until(c, &job_url, admin, "waiting for the approval", |j| {
        j["status"] == "waiting"
    })
    .await;
    let early = call(c, "GET", &format!("{job_url}/evidence"), auditor, None).await;
    assert_eq!(early.status, 409, "an unfinished job has no package yet");
    assert!(early.content_type.starts_with("application/problem+json"));
    let s = call(
        c,
        "POST",
        &format!("{job_url}/signals/approval"),
        admin,
        Some(json!({"payload": {"approved": true}, "signal_id": "appr-1"})),
    )
    .await;
    assert_eq!(s.status, 202);
    until(c, &job_url, admin, "outcome unknown", |j| {
        j["steps"][2]["status"] == "outcome_unknown"
    })
    .await;
    let s = call(
        c,
        "POST",
        &format!("{job_url}/steps/pay/confirm"),
        admin,
        Some(json!({"outcome": "succeeded", "output": {"charge": "ch_1"}, "note": "seen in the dashboard"})),
    )
    .await;
    assert_eq!(s.status, 202, "{}", s.json());
    let j = until(c, &job_url, admin, "finished", |j| {
        matches!(
            j["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        )
    })
    .await;
    assert_eq!(j["status"], "succeeded", "{j}");
    id
}

/// Rewrites the payload of the first event line containing `from` (to `to`) inside the
/// package, keeping everything else, and returns that line's seq.
fn tamper_event(zip: &[u8], from: &str, to: &str) -> (Vec<u8>, u64) {
    let mut files = read_package(zip, &Limits::default()).unwrap();
    let text = String::from_utf8(files.events.clone()).unwrap();
    let mut seq = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            if seq == 0 && l.contains(from) {
                seq = serde_json::from_str::<Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap();
                l.replacen(from, to, 1)
            } else {
                l.to_string()
            }
        })
        .collect();
    assert!(seq > 0, "{from} is in some event");
    files.events = format!("{}\n", lines.join("\n")).into_bytes();
    (write_package(&files).unwrap(), seq)
}

fn evidence_of_a_real_job(pg: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, pub_path) = evidence_key(d);
    let pk = pub_path.to_str().unwrap();
    let node = node(pg, Some(key));
    let url = node.url.clone();
    let admin = token("ops", "acme", Role::Admin);
    let auditor = token("audrey", "acme", Role::Auditor);
    let viewer = token("vic", "acme", Role::Viewer);
    let stranger = token("eve", "globex", Role::Auditor);
    let root = token("root", "default", Role::Admin);
    let c = reqwest::Client::new();
    rt().block_on(async {
        let id = real_job(&c, &url, &admin, &auditor).await;
        let export_url = format!("{url}/v1/jobs/{id}/evidence");

        // Exported twice: the same bytes, a zip attachment named after the job.
        let first = call(&c, "GET", &export_url, &auditor, None).await;
        assert_eq!(
            first.status,
            200,
            "{}",
            String::from_utf8_lossy(&first.body)
        );
        assert_eq!(first.content_type, "application/zip");
        assert_eq!(
            first.disposition,
            format!("attachment; filename=\"{id}.evidence.zip\"")
        );
        let second = call(&c, "GET", &export_url, &auditor, None).await;
        assert!(
            first.body == second.body,
            "exports of one job are byte-identical"
        );
        let zip = d.join("job.evidence.zip");
        std::fs::write(&zip, &first.body).unwrap();

        // The CLI's export is the same package.
        let (code, out, err) = cli(
            d,
            &[
                "evidence", "export", &id, "--server", &url, "--token", &auditor, "-o", "cli.zip",
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(std::fs::read(d.join("cli.zip")).unwrap() == first.body);

        // Verified offline by the binary, with the summary.
        let zip_s = zip.to_str().unwrap();
        let (code, out, err) = cli(d, &["evidence", "verify", zip_s, "--public-key", pk]);
        assert_eq!(code, 0, "verify: {out}{err}");
        for want in [
            "VALID",
            id.as_str(),
            "tenant acme, succeeded",
            "approvals:   3",
            "redactions:  none",
            "leaf 0 of aetheris/tenant/acme at size 1",
        ] {
            assert!(out.contains(want), "{want:?} in the summary:\n{out}");
        }
        let (code, out, _) = cli(
            d,
            &["evidence", "verify", zip_s, "--public-key", pk, "--json"],
        );
        assert_eq!(code, 0);
        let report: Value = serde_json::from_str(&out).unwrap();
        let job = call(&c, "GET", &format!("{url}/v1/jobs/{id}"), &auditor, None)
            .await
            .json();
        assert_eq!(report["verdict"], "valid");
        assert_eq!(
            report["events"], job["last_seq"],
            "every event is in the package"
        );
        assert_eq!(report["job_id"], id.as_str());

        // Tampered with: a flipped byte names the file, a changed event its seq.
        let mut flipped = first.body.clone();
        flipped[42 + 8] ^= 0x01; // inside events.jsonl's compressed data (its entry is first)
        std::fs::write(d.join("flipped.zip"), &flipped).unwrap();
        fails(
            d,
            &["evidence", "verify", "flipped.zip", "--public-key", pk],
            "events.jsonl",
        );
        let (changed, seq) = tamper_event(
            &first.body,
            "seen in the dashboard",
            "seen in the dashb0ard",
        );
        std::fs::write(d.join("changed.zip"), &changed).unwrap();
        let line = fails(
            d,
            &["evidence", "verify", "changed.zip", "--public-key", pk],
            &format!("events.jsonl: seq {seq}"),
        );
        assert!(line.contains("INVALID"), "{line}");
        let (code, out, _) = cli(
            d,
            &[
                "evidence",
                "verify",
                "changed.zip",
                "--public-key",
                pk,
                "--json",
            ],
        );
        assert_ne!(code, 0);
        let r: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (r["verdict"].as_str(), r["seq"].as_u64()),
            (Some("invalid"), Some(seq))
        );

        // Redaction asked for: the package verifies and lists it.
        let red = call(
            &c,
            "GET",
            &format!("{export_url}?redact=steps.pay.output"),
            &auditor,
            None,
        )
        .await;
        assert_eq!(red.status, 200);
        std::fs::write(d.join("red.zip"), &red.body).unwrap();
        let (code, out, err) = cli(d, &["evidence", "verify", "red.zip", "--public-key", pk]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("steps.pay.output (step_confirmed): requested at export"),
            "{out}"
        );
        let files = read_package(&red.body, &Limits::default()).unwrap();
        let manifest: Value = serde_json::from_slice(&files.manifest).unwrap();
        assert_eq!(manifest["redactions"][0]["path"], "steps.pay.output");
        let events = String::from_utf8(files.events).unwrap();
        let confirmed = events
            .lines()
            .find(|l| l.contains("\"kind\":\"step_confirmed\""))
            .unwrap();
        assert!(
            confirmed.contains("\"redacted\":\"sha256:") && !confirmed.contains("ch_1"),
            "{confirmed}"
        );
        for bad in ["bogus", "steps.nope.output"] {
            let a = call(
                &c,
                "GET",
                &format!("{export_url}?redact={bad}"),
                &auditor,
                None,
            )
            .await;
            assert_eq!(a.status, 400, "redact={bad}");
        }

        // Tenants and roles.
        let other = call(&c, "GET", &export_url, &stranger, None).await;
        assert_eq!(
            other.status, 404,
            "another tenant's job does not exist for it (G6)"
        );
        let denied = call(&c, "GET", &export_url, &viewer, None).await;
        assert_eq!(denied.status, 403);
        let audit = call(
            &c,
            "GET",
            &format!("{url}/v1/audit?limit=1000"),
            &auditor,
            None,
        )
        .await
        .json();
        let rows = audit["entries"].as_array().unwrap();
        let exports: Vec<&Value> = rows
            .iter()
            .filter(|r| r["action"] == "evidence.export")
            .collect();
        assert_eq!(
            exports.len(),
            4,
            "one row per export (2 + the CLI's + redacted): {audit}"
        );
        assert!(exports
            .iter()
            .all(|r| r["actor"] == "audrey" && r["target"] == id.as_str() && r["result"] == "ok"));
        assert!(
            rows.iter().any(|r| r["action"] == "evidence:export"
                && r["actor"] == "vic"
                && r["result"] == "denied"),
            "the refused export is audited: {audit}"
        );
        let globex = call(&c, "GET", &format!("{url}/v1/audit"), &stranger, None)
            .await
            .json();
        assert!(globex["entries"].as_array().unwrap().is_empty(), "{globex}");

        // The tenant's policy (set by a system admin) applies to every export.
        let policy_url = format!("{url}/v1/tenants/acme/evidence-policy");
        let rules = json!({"redact": [{"path": "input", "reason": "PII: card token"}]});
        let a = call(&c, "PUT", &policy_url, &admin, Some(rules.clone())).await;
        assert_eq!(
            a.status, 403,
            "only the system tenant's admins set policies"
        );
        let a = call(&c, "PUT", &policy_url, &root, Some(rules.clone())).await;
        assert_eq!((a.status, a.json()), (200, rules.clone()));
        assert_eq!(
            call(&c, "GET", &policy_url, &root, None).await.json(),
            rules
        );
        let a = call(
            &c,
            "PUT",
            &policy_url,
            &root,
            Some(json!({"redact": [{"path": "inputs", "reason": "x"}]})),
        )
        .await;
        assert_eq!(a.status, 400);
        let a = call(
            &c,
            "PUT",
            &format!("{url}/v1/tenants/nobody/evidence-policy"),
            &root,
            Some(rules),
        )
        .await;
        assert_eq!(a.status, 404);
        let by_policy = call(&c, "GET", &export_url, &auditor, None).await;
        std::fs::write(d.join("policy.zip"), &by_policy.body).unwrap();
        let (code, out, err) = cli(d, &["evidence", "verify", "policy.zip", "--public-key", pk]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            out.contains("seq 1 input (job_submitted): PII: card token"),
            "{out}"
        );
        let a = call(&c, "PUT", &policy_url, &root, Some(json!({"redact": []}))).await;
        assert_eq!(a.status, 200);

        // Checkpoints: kept, then more jobs finish; the log only grew.
        let (code, out, err) = cli(
            d,
            &[
                "evidence",
                "checkpoint",
                "--server",
                &url,
                "--token",
                &auditor,
                "-o",
                "cp1",
                "--public-key",
                pk,
            ],
        );
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("tree size 1"), "{out}");
        let second = real_job(&c, &url, &admin, &auditor).await;
        let (code, _, err) = cli(
            d,
            &[
                "evidence",
                "checkpoint",
                "--server",
                &url,
                "--token",
                &auditor,
                "-o",
                "cp2",
            ],
        );
        assert_eq!(code, 0, "{err}");
        for old in ["cp1", "job.evidence.zip"] {
            let (code, out, err) = cli(
                d,
                &[
                    "evidence",
                    "checkpoint",
                    "--server",
                    &url,
                    "--token",
                    &auditor,
                    "--verify-consistency",
                    old,
                    "cp2",
                    "--public-key",
                    pk,
                ],
            );
            assert_eq!(code, 0, "{old}: {out}{err}");
            assert!(out.contains("grew from 1 to 2 leaves"), "{out}");
        }
        fails(
            d,
            &[
                "evidence",
                "checkpoint",
                "--server",
                &url,
                "--token",
                &auditor,
                "--verify-consistency",
                "cp2",
                "cp1",
                "--public-key",
                pk,
            ],
            "the log shrank",
        );
        fails(
            d,
            &[
                "evidence",
                "checkpoint",
                "--server",
                &url,
                "--token",
                &auditor,
                "-o",
                "cp2",
            ],
            "never overwritten",
        );
        // Another tenant's log is its own.
        fails(
            d,
            &[
                "evidence",
                "checkpoint",
                "--server",
                &url,
                "--token",
                &stranger,
                "--verify-consistency",
                "cp1",
                "cp2",
                "--public-key",
                pk,
            ],
            "aetheris/tenant/globex",
        );
        let consistency = call(
            &c,
            "GET",
            &format!("{url}/v1/evidence/consistency?old=1&new=2"),
            &auditor,
            None,
        )
        .await;
        assert_eq!(consistency.status, 200);
        assert_eq!(consistency.json()["origin"], "aetheris/tenant/acme");
        let too_far = call(
            &c,
            "GET",
            &format!("{url}/v1/evidence/consistency?old=1&new=3"),
            &auditor,
            None,
        )
        .await;
        assert_eq!(too_far.status, 400);
        let cp = call(
            &c,
            "GET",
            &format!("{url}/v1/evidence/checkpoint"),
            &auditor,
            None,
        )
        .await;
        assert!(cp.content_type.starts_with("text/plain"));
        assert_eq!(
            std::fs::read(d.join("cp2")).unwrap(),
            cp.body,
            "a checkpoint of the same log is the same bytes"
        );
        let second_zip = call(
            &c,
            "GET",
            &format!("{url}/v1/jobs/{second}/evidence"),
            &auditor,
            None,
        )
        .await;
        std::fs::write(d.join("second.zip"), &second_zip.body).unwrap();
        let (code, out, _) = cli(d, &["evidence", "verify", "second.zip", "--public-key", pk]);
        assert_eq!(code, 0);
        assert!(
            out.contains("leaf 1 of aetheris/tenant/acme at size 2"),
            "{out}"
        );
    });
}

#[test]
fn evidence_on_the_embedded_store() {
    evidence_of_a_real_job(false);
}

#[test]
fn evidence_on_postgres() {
    evidence_of_a_real_job(true);
}

#[test]
fn without_a_key_evidence_routes_answer_503_and_the_rest_works() {
    let node = node(false, None);
    let admin = token("ops", "acme", Role::Admin);
    let c = reqwest::Client::new();
    rt().block_on(async {
        let body = json!({"plan": {"steps": [{"id": "a", "tool": "echo"}]}});
        let a = call(
            &c,
            "POST",
            &format!("{}/v1/jobs", node.url),
            &admin,
            Some(body),
        )
        .await;
        assert_eq!(a.status, 201);
        let id = a.json()["job_id"].as_str().unwrap().to_string();
        let job_url = format!("{}/v1/jobs/{id}", node.url);
        until(&c, &job_url, &admin, "finished", |j| {
            j["status"] == "succeeded"
        })
        .await;
        for path in [
            format!("/v1/jobs/{id}/evidence"),
            "/v1/evidence/checkpoint".into(),
        ] {
            let a = call(&c, "GET", &format!("{}{path}", node.url), &admin, None).await;
            assert_eq!(a.status, 503, "{path}");
            assert!(a.content_type.starts_with("application/problem+json"));
            assert!(a.json()["detail"]
                .as_str()
                .unwrap()
                .contains("no evidence signing key configured"));
        }
        // The log is kept all the same: a key configured later proves this job too.
        let c2 = call(
            &c,
            "GET",
            &format!("{}/v1/evidence/consistency?old=0&new=1", node.url),
            &admin,
            None,
        )
        .await;
        assert_eq!(c2.status, 200, "{}", c2.json());
    });
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: a server and two worker processes.

/// A child `aetheris` process, killed when dropped; output to a log file.
struct Child(std::process::Child, PathBuf);

impl Child {
    fn spawn(dir: &Path, name: &str, args: &[String]) -> Child {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_aetheris"))
            .args(args)
            .env("AETHERIS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Child(child, log)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn sql(url: &str, statement: &str) {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute(statement).await.unwrap();
}

/// Submits `n` one-step jobs and waits until they all succeeded.
async fn finish_jobs(c: &reqwest::Client, base: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({"input": {"i": i}, "plan": {"steps": [{"id": "a", "tool": "echo", "args": {"i": "${input.i}"}}]}});
        let r = c
            .post(format!("{base}/v1/jobs"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        ids.push(
            r.json::<Value>().await.unwrap()["job_id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let j: Value = c
                .get(format!("{base}/v1/jobs/{id}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if j["status"] == "succeeded" {
                break;
            }
            assert!(Instant::now() < deadline, "job {id} did not finish: {j}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    ids
}

#[test]
fn pg_two_workers_keep_a_gap_free_log_and_a_rewritten_job_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = SigningKey::generate().unwrap();
    std::fs::write(d.join("ev.key"), key.to_key_file()).unwrap();
    std::fs::write(d.join("ev.pub"), public_key_file(&key.public_key())).unwrap();
    let db = rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url());
    let port = crate::readme::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let bind = format!("127.0.0.1:{port}");
    let key_file = d.join("ev.key");
    let server = Child::spawn(
        d,
        "server",
        &[
            "server",
            "--insecure-no-auth",
            "--database-url",
            db.as_str(),
            "--bind",
            bind.as_str(),
            "--evidence-signing-key-file",
            key_file.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let c = reqwest::Client::new();
    let r = rt();
    r.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(c.get(format!("{base}/readyz")).send().await, Ok(a) if a.status().is_success()) {
            assert!(Instant::now() < deadline, "server did not start: {}", std::fs::read_to_string(&server.1).unwrap_or_default());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let workers: Vec<Child> = (0..2)
        .map(|i| {
            Child::spawn(
                d,
                &format!("worker{i}"),
                &[
                    "worker",
                    "--database-url",
                    db.as_str(),
                    "--admin-bind",
                    "127.0.0.1:0",
                ]
                .map(String::from),
            )
        })
        .collect();
    let pk = d.join("ev.pub");
    let pk = pk.to_str().unwrap();
    let cli_server = ["--server", base.as_str()];
    let checkpoint = |out: &str| {
        let mut args = vec!["evidence", "checkpoint", "-o", out, "--public-key", pk];
        args.extend(cli_server);
        let (code, o, e) = cli(d, &args);
        assert_eq!(code, 0, "{o}{e}");
    };
    let consistent = |old: &str, new: &str| {
        let mut args = vec![
            "evidence",
            "checkpoint",
            "--verify-consistency",
            old,
            new,
            "--public-key",
            pk,
        ];
        args.extend(cli_server);
        cli(d, &args)
    };

    // Jobs of one tenant finishing at once on two workers (each with group commit).
    let first = r.block_on(finish_jobs(&c, &base, 40));
    let leaves = |url: &str| {
        r.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .query(
                    "SELECT idx FROM transparency_leaves WHERE tenant = 'default' ORDER BY idx",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|row| row.get::<_, i64>(0))
                .collect::<Vec<i64>>()
        })
    };
    assert_eq!(
        leaves(&db),
        (0..40).collect::<Vec<i64>>(),
        "gap-free, no repeats"
    );
    let ran_on: Vec<String> = workers
        .iter()
        .map(|w| std::fs::read_to_string(&w.1).unwrap_or_default())
        .collect();
    assert!(ran_on.iter().all(|l| !l.contains("panicked")), "{ran_on:?}");
    checkpoint("cp40");
    let kept_package = r.block_on(async {
        let a = c
            .get(format!("{base}/v1/jobs/{}/evidence", first[3]))
            .send()
            .await
            .unwrap();
        assert_eq!(a.status().as_u16(), 200);
        a.bytes().await.unwrap()
    });
    std::fs::write(d.join("job3.zip"), &kept_package).unwrap();

    r.block_on(finish_jobs(&c, &base, 20));
    assert_eq!(leaves(&db).len(), 60);
    checkpoint("cp60");
    let (code, out, err) = consistent("cp40", "cp60");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("grew from 40 to 60 leaves"), "{out}");

    // Job 3's history rewritten in the database, its leaf recomputed to match: the store
    // now serves and signs a log of 60 that is not the one the auditor saw.
    r.block_on(sql(
        &db,
        "UPDATE transparency_leaves SET leaf_hash = sha256(leaf_hash) WHERE tenant = 'default' AND idx = 3",
    ));
    checkpoint("cp60-rewritten");
    for old in ["cp40", "job3.zip"] {
        let (code, _, err) = consistent(old, "cp60-rewritten");
        assert_ne!(code, 0, "{old}: a rewritten job must be detected");
        assert!(
            err.starts_with("error: INCONSISTENT") && err.lines().count() == 1,
            "{err}"
        );
    }
    // The package itself still verifies: it is what was exported; the log is what changed.
    let (code, _, _) = cli(d, &["evidence", "verify", "job3.zip", "--public-key", pk]);
    assert_eq!(code, 0);

    // A job deleted: its leaf removed. The hole is refused outright …
    r.block_on(sql(
        &db,
        "DELETE FROM transparency_leaves WHERE tenant = 'default' AND idx = 5",
    ));
    let mut args = vec!["evidence", "checkpoint"];
    args.extend(cli_server);
    fails(d, &args, "no leaf 5");
    // … and covered up (later leaves renumbered, the head lowered) it is inconsistent.
    r.block_on(sql(
        &db,
        "UPDATE transparency_leaves SET idx = idx - 1 WHERE tenant = 'default' AND idx > 5; \
         UPDATE transparency_heads SET size = size - 1 WHERE tenant = 'default'",
    ));
    checkpoint("cp59");
    let (code, _, err) = consistent("cp40", "cp59");
    assert_ne!(code, 0, "a deleted job must be detected");
    assert!(err.contains("INCONSISTENT"), "{err}");
    let (code, _, err) = consistent("cp60", "cp59");
    assert_ne!(code, 0);
    assert!(err.contains("the log shrank"), "{err}");
    drop(workers);
    drop(server);
}

#[test]
fn evidence_cli_failures_are_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, pub_path) = evidence_key(d);
    let pk = pub_path.to_str().unwrap();
    // keygen: a pair with a private key file, never overwritten.
    let (code, out, err) = cli(d, &["evidence", "keygen", "--out", "k"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("k.key") && out.contains("k.pub"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("k.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    fails(
        d,
        &["evidence", "keygen", "--out", "k"],
        "not overwriting a key",
    );
    fails(
        d,
        &["evidence", "keygen", "--out", "no/such/dir/k"],
        "no/such/dir/k.key",
    );

    // A valid package to break.
    let log =
        aetheris_proof::testkit::realistic_job(aetheris_runtime::JobId::new(), "acme").unwrap();
    let zip = aetheris_proof::build(
        &aetheris_proof::EvidenceInput {
            job_id: log.job_id,
            tenant: "acme",
            events: &log.events,
            ledger: &log.ledger(),
            exporter: "test",
            redactions: &[],
            transparency: None,
        },
        &key,
    )
    .unwrap();
    std::fs::write(d.join("ok.zip"), &zip).unwrap();
    let (code, out, _) = cli(d, &["evidence", "verify", "ok.zip", "--public-key", pk]);
    assert_eq!(code, 0, "{out}");
    let (code, _, _) = cli(
        d,
        &[
            "evidence",
            "verify",
            "ok.zip",
            "--public-key",
            "k.pub",
            "--public-key",
            pk,
        ],
    );
    assert_eq!(code, 0, "any listed key may have signed it (rotation)");

    fails(
        d,
        &["evidence", "verify", "missing.zip", "--public-key", pk],
        "missing.zip",
    );
    fails(
        d,
        &["evidence", "verify", "ok.zip", "--public-key", "k.pub"],
        "envelope.json",
    );
    fails(
        d,
        &["evidence", "verify", "ok.zip", "--public-key", "nope.pub"],
        "--public-key nope.pub",
    );
    std::fs::write(d.join("short.pub"), "base64:AAAA\n").unwrap();
    fails(
        d,
        &["evidence", "verify", "ok.zip", "--public-key", "short.pub"],
        "short.pub",
    );
    // Hostile archives: not a zip, truncated, an extra entry with a path, a bomb.
    std::fs::write(d.join("text.zip"), "hello").unwrap();
    fails(
        d,
        &["evidence", "verify", "text.zip", "--public-key", pk],
        "archive",
    );
    std::fs::write(d.join("cut.zip"), &zip[..zip.len() / 2]).unwrap();
    fails(
        d,
        &["evidence", "verify", "cut.zip", "--public-key", pk],
        "archive",
    );
    // An entry named with a path (the same bytes otherwise): refused before unpacking.
    let evil = {
        let mut z = zip.clone();
        let (from, to) = (b"events.jsonl", b"../etc/pass.");
        let mut i = 0;
        while i + from.len() <= z.len() {
            if &z[i..i + from.len()] == from {
                z[i..i + from.len()].copy_from_slice(to);
            }
            i += 1;
        }
        z
    };
    std::fs::write(d.join("evil.zip"), &evil).unwrap();
    fails(
        d,
        &["evidence", "verify", "evil.zip", "--public-key", pk],
        "archive",
    );
    fails(d, &["evidence", "verify", "ok.zip"], "--public-key");
    // Export and checkpoint: bad input is refused before anything is sent.
    fails(
        d,
        &[
            "evidence",
            "export",
            "some-job",
            "--redact",
            "steps.x",
            "--server",
            "127.0.0.1:9",
        ],
        "--redact steps.x",
    );
    fails(
        d,
        &[
            "evidence",
            "export",
            "some-job",
            "--server",
            "127.0.0.1:9",
            "--token",
            "t",
        ],
        "cannot reach server",
    );
    fails(
        d,
        &[
            "evidence",
            "checkpoint",
            "--verify-consistency",
            "missing",
            "ok.zip",
            "--public-key",
            pk,
            "--server",
            "127.0.0.1:9",
        ],
        "missing",
    );
    fails(
        d,
        &[
            "evidence",
            "checkpoint",
            "--verify-consistency",
            "ok.zip",
            "ok.zip",
            "--public-key",
            pk,
            "--server",
            "127.0.0.1:9",
        ],
        "carries no checkpoint",
    );
    fails(
        d,
        &["evidence", "checkpoint", "--verify-consistency", "a", "b"],
        "--public-key",
    );
    fails(
        d,
        &[
            "server",
            "--insecure-no-auth",
            "--database-url",
            "postgres://u@127.0.0.1:9/x",
            "--evidence-signing-key-file",
            "short.pub",
        ],
        "--evidence-signing-key-file short.pub",
    );
}
