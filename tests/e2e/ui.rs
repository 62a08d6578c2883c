//! The trace UI end to end in a real headless Chromium (Debian's `chromium`), driven by
//! Playwright (`ui/driver.py`): sign in, the jobs list and its filters, a 10,000-event job
//! (first paint measured in the browser), a running job followed live to completion, a
//! signal to a waiting job, the confirmation of an outcome_unknown step, a cancel, agent
//! steps against the fake LLM server (`fake_llm`): their turns and tool calls, a proposed
//! call approved with edited arguments and one rejected from the UI, the supervision tree
//! (`/ui/system`) for the system tenant's admin and refused to a tenant's operator, the
//! evidence checklist and download, refusals across tenants and roles, CSRF, and hostile
//! HTML in inputs, outputs, model answers, signal payloads and tenant names that never
//! runs.
//!
//! The test FAILS, never skips, when python3, Playwright or Chromium is missing (.ci/run
//! installs them). `AETHERIS_UI_SCREENSHOTS=DIR` keeps the screenshots (docs/ui/ holds
//! the README's); `AETHERIS_CHROMIUM` names another browser binary.
//!
//! Evidence: the UI shows whatever package the node's `EvidenceExport` gives it. Until the
//! gateway's own export (`GET /v1/jobs/{id}/evidence`) is wired in, this test gives the
//! node one that builds a real package from the store's events and ledger with
//! `aetheris_proof::build` and a fresh key, so what the browser checks and downloads is a
//! real, signed package verified by `aetheris_proof::verify`.

use crate::fake_llm::{call, FakeLlm, Reply};
use aetheris_actors::llm::LlmSettings;
use aetheris_actors::{Invocation, Tool, ToolError, ToolRegistry, WorkerConfig};
use aetheris_api::auth::{self, AuthConfig, Principal, Role};
use aetheris_api::routes::AppState;
use aetheris_api::ui::{EvidenceExport, UiConfig};
use aetheris_api::{start_node, ApiError, NodeConfig};
use aetheris_proof::{EvidenceInput, LedgerRecord, SigningKey};
use aetheris_runtime::codec::{encode_versioned, SNAPSHOT_FORMAT};
use aetheris_runtime::{invocation_key, EffectClass, EventBody, JobId, Plan};
use aetheris_store::{Append, AuditFilter, DynStore, NewJob, RedbStore, Scope};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// side_effect; panics on the first call of each key, so its outcome is unknown.
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
            panic!("lost the connection mid-call");
        }
        Ok(json!({"charged": true}))
    }
}

/// `lookup` (pure): an order's total, for the agent steps.
struct Lookup;

#[async_trait::async_trait]
impl Tool for Lookup {
    fn effect(&self) -> EffectClass {
        EffectClass::Pure
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]})
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        Ok(json!({"order": call.args["order"], "total": 42}))
    }
}

/// `refund` (side_effect): records the amount of every call it ran, so the test can see
/// that a rejected call never ran and an edited one ran with the edit.
struct Refund(Arc<Mutex<Vec<Value>>>);

#[async_trait::async_trait]
impl Tool for Refund {
    fn effect(&self) -> EffectClass {
        EffectClass::SideEffect
    }
    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {"amount": {"type": "number", "maximum": 100}}, "required": ["amount"]})
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        self.0.lock().unwrap().push(call.args.clone());
        Ok(json!({"refunded": call.args["amount"]}))
    }
}

/// What the fake model answers in its first turn: hostile HTML, then two tool calls (the
/// refund needs an approval).
const MODEL_HOSTILE: &str =
    "<script>window.__pwned='model'</script><img src=x onerror=\"window.__pwned='model-img'\">Looking up A-17.";

/// The fake provider `fake`: turn 0 proposes `lookup` and `refund`, later turns answer.
fn fake_model() -> FakeLlm {
    FakeLlm::start(|seen| {
        if seen.turn == 0 {
            Reply::Answer {
                text: MODEL_HOSTILE.into(),
                calls: vec![
                    call("lookup", json!({"order": "A-17"})),
                    call(
                        "refund",
                        json!({"amount": 30, "note": "<script>window.__pwned='args'</script>"}),
                    ),
                ],
                input_tokens: 1200,
                output_tokens: 45,
            }
        } else {
            Reply::Answer {
                text: "Handled: <b>not bold</b>.".into(),
                calls: Vec::new(),
                input_tokens: 1400,
                output_tokens: 30,
            }
        }
    })
}

/// A real package of a finished job, built from what the store holds (see the module doc).
struct StoreEvidence(SigningKey);

impl EvidenceExport for StoreEvidence {
    fn export<'a>(
        &'a self,
        st: &'a AppState,
        caller: &'a Principal,
        id: JobId,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, ApiError>> + 'a>> {
        Box::pin(async move {
            let scope = Scope::Tenant(&caller.tenant);
            let job = st
                .store
                .get_job(scope, id)
                .await?
                .ok_or_else(|| ApiError::NotFound(format!("job {id} not found")))?;
            if !job.status.is_terminal() {
                return Err(ApiError::Conflict("the job has not finished".into()));
            }
            let events = st.store.read_events(scope, id, 0, 1_000_000).await?;
            let ledger: Vec<LedgerRecord> = st
                .store
                .ledger(scope, id)
                .await?
                .into_iter()
                .map(|r| LedgerRecord {
                    step: r.step,
                    invocation_key: r.invocation_key,
                    attempt: r.attempt,
                    effect: r.effect,
                    status: r.status,
                    updated_at_ms: r.updated_at_ms,
                })
                .collect();
            aetheris_proof::build(
                &EvidenceInput {
                    job_id: id,
                    tenant: &caller.tenant,
                    events: &events,
                    ledger: &ledger,
                    exporter: "aetheris ui-test",
                    redactions: &[],
                    transparency: None,
                },
                &self.0,
            )
            .map_err(|e| ApiError::Internal(e.to_string()))
        })
    }

    fn public_keys(&self) -> Vec<[u8; 32]> {
        vec![self.0.public_key()]
    }
}

/// A node on a prepared store, with auth, the `charge`, `lookup` and `refund` tools, the
/// LLM provider `fake` and the evidence export.
struct UiNode {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UiNode {
    fn start(
        store: DynStore,
        auth: AuthConfig,
        evidence: Arc<StoreEvidence>,
        llm: LlmSettings,
        refunds: Arc<Mutex<Vec<Value>>>,
    ) -> UiNode {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let mut tools = ToolRegistry::with_builtins();
                tools.register("charge", PanicOnce(Arc::default()));
                tools.register("lookup", Lookup);
                tools.register("refund", Refund(refunds));
                let cfg = NodeConfig {
                    bind: "127.0.0.1:0".into(),
                    worker: WorkerConfig {
                        llm,
                        ..WorkerConfig::default()
                    },
                    auth: Some(auth),
                    ui: UiConfig {
                        evidence: Some(evidence),
                    },
                    ..NodeConfig::default()
                };
                let (node, server) = start_node(store, tools, cfg).await.expect("start node");
                addr_tx.send(node.addr).expect("send addr");
                let server = actix_rt::spawn(server);
                let _ = stop_rx.await;
                node.shutdown(Duration::from_secs(2)).await;
                let _ = server.await;
            })
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("node started");
        UiNode {
            url: format!("http://{addr}"),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for UiNode {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Steps of the big job, and failed attempts per step: 100 × (49 × 2 + 2) events, plus
/// the submission and the job's end: 10,002 events.
const BIG_STEPS: usize = 100;
const FAILED_ATTEMPTS: u32 = 49;

/// A finished job of `tenant` with 10,002 events (100 steps in ten chains, each retried
/// 49 times before it succeeded), appended as a worker would, with the snapshot a worker
/// writes; no worker is running yet, so nothing else touches it.
async fn big_job(store: &DynStore, tenant: &str) -> JobId {
    let steps: Vec<Value> = (0..BIG_STEPS)
        .map(|i| {
            let mut s = json!({"id": format!("s{i:03}"), "tool": "echo", "args": {"i": i}});
            if i % 10 != 0 {
                s["needs"] = json!([format!("s{:03}", i - 1)]);
            }
            s
        })
        .collect();
    let plan: Plan = serde_json::from_value(json!({ "steps": steps })).expect("plan");
    let (job, _) = store
        .submit(
            NewJob {
                tenant: tenant.into(),
                idempotency_key: Some("big-10k".into()),
                plan,
                input: json!({"order": "BIG"}),
            },
            None,
        )
        .await
        .expect("submit");
    let id = job.job_id;
    let lease = store.claim("ui-test", 600_000, 1).await.expect("claim");
    let token = lease.first().expect("claimed").token;
    let mut seq = 1;
    for i in 0..BIG_STEPS {
        let step = format!("s{i:03}");
        let key = invocation_key(tenant, id, &step, 0);
        let mut batch = Vec::new();
        for attempt in 1..=FAILED_ATTEMPTS + 1 {
            batch.push(EventBody::StepStarted {
                step: step.clone(),
                attempt,
                invocation_key: key.clone(),
                tool: "echo".into(),
                effect: EffectClass::Pure,
                fencing_token: token,
            });
            batch.push(if attempt <= FAILED_ATTEMPTS {
                EventBody::StepFailed {
                    step: step.clone(),
                    attempt,
                    error: format!("upstream 503 on attempt {attempt}"),
                    retryable: true,
                    retry_after_ms: Some(1),
                }
            } else {
                EventBody::StepSucceeded {
                    step: step.clone(),
                    attempt,
                    output: json!({"i": i}),
                }
            });
        }
        let n = batch.len() as u64;
        store
            .append(Append {
                job_id: id,
                token,
                expected_last_seq: seq,
                events: batch,
            })
            .await
            .expect("append");
        seq += n;
    }
    store
        .append(Append {
            job_id: id,
            token,
            expected_last_seq: seq,
            events: vec![EventBody::JobSucceeded {
                output: json!({"steps": BIG_STEPS}),
            }],
        })
        .await
        .expect("finish");
    let state = aetheris_store::load_job_state(store, id)
        .await
        .expect("load")
        .expect("job")
        .state;
    assert_eq!(state.last_seq, 10_002);
    let blob = encode_versioned(SNAPSHOT_FORMAT, &state).expect("encode");
    store
        .put_snapshot(id, token, state.last_seq, blob)
        .await
        .expect("snapshot");
    store
        .release("ui-test", &[(id, token)])
        .await
        .expect("release");
    id
}

fn chromium() -> PathBuf {
    let path = PathBuf::from(
        std::env::var("AETHERIS_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    assert!(
        path.exists(),
        "the browser test needs Chromium at {} (Debian: apt-get install chromium; .ci/run \
         installs it)",
        path.display()
    );
    let probe = std::process::Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "the browser test needs python3 with Playwright (pip install playwright; .ci/run \
         installs it): {probe:?}"
    );
    path
}

#[test]
fn trace_ui_in_headless_chromium() {
    let browser = chromium();
    let dir = tempfile::tempdir().expect("tempdir");
    let store: DynStore =
        Arc::new(RedbStore::open(&dir.path().join("aetheris.redb")).expect("open store"));
    let secret = auth::generate_hs256_secret().expect("secret");
    let rt = crate::support::rt();
    let big = rt.block_on(async {
        for (id, name) in [
            ("default", "default"),
            ("acme", "Acme <script>window.__pwned='tenant'</script>"),
            ("globex", "Globex"),
        ] {
            let limits = match id {
                "acme" => json!({"llm_tokens_per_day": 1_000_000}),
                _ => json!({}),
            };
            store
                .create_tenant(id, name, limits, None)
                .await
                .expect("tenant");
        }
        big_job(&store, "acme").await
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let token = |sub: &str, tenant: &str, role: Role| {
        auth::issue_hs256(&secret, &auth::Claims::new(sub, tenant, &[role], now, 3600))
    };
    let tokens = json!({
        "operator": token("ops-alice", "acme", Role::Operator),
        "auditor": token("audit-bob", "acme", Role::Auditor),
        "other_tenant": token("globex-admin", "globex", Role::Admin),
        "system_admin": token("root", "default", Role::Admin),
    });
    let key = SigningKey::generate().expect("key");
    let evidence = Arc::new(StoreEvidence(key));
    let fake = fake_model();
    let key_file = dir.path().join("fake.key");
    std::fs::write(&key_file, "sk-ui-test\n").expect("key file");
    let llm = LlmSettings::default()
        .with_flags(
            &[format!("fake=openai:{}", fake.url)],
            &[format!("fake={}", key_file.display())],
        )
        .expect("llm settings");
    let refunds: Arc<Mutex<Vec<Value>>> = Arc::default();
    let node = UiNode::start(
        store.clone(),
        AuthConfig {
            hs256_secrets: vec![secret.clone()],
            ..Default::default()
        },
        evidence.clone(),
        llm,
        refunds.clone(),
    );
    let shots = match std::env::var("AETHERIS_UI_SCREENSHOTS") {
        Ok(d) => PathBuf::from(d),
        Err(_) => dir.path().join("shots"),
    };
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let config = dir.path().join("ui-test.json");
    std::fs::write(
        &config,
        json!({
            "url": node.url,
            "tokens": tokens,
            "big_job": big.to_string(),
            "screenshots": shots,
            "chromium": browser,
        })
        .to_string(),
    )
    .expect("config");
    let driver = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/ui/driver.py");
    let out = std::process::Command::new("python3")
        .arg(&driver)
        .arg(&config)
        .output()
        .expect("run the browser driver");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser driver failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    let report: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no report from the driver:\n{stdout}\n{stderr}"));
    let checks = report["checks"].as_array().map_or(0, Vec::len);
    println!(
        "trace UI in Chromium: {checks} checks passed; first paint of the 10,000-event job: \
         {} (ms, medians of 5: first contentful paint, response end, server time)",
        report["first_paint_10k"]
    );

    // What the browser did is in the store, by the signed-in identity, with audit rows.
    rt.block_on(async {
        let jobs = &report["jobs"];
        let events = |id: &Value| {
            let id: JobId = id.as_str().expect("id").parse().expect("job id");
            let store = store.clone();
            async move {
                store
                    .read_events(Scope::System, id, 0, 1000)
                    .await
                    .expect("events")
            }
        };
        let by_of = |evs: &[aetheris_runtime::RecordedEvent], kind: &str| {
            evs.iter()
                .find(|e| e.body.kind() == kind)
                .map(|e| serde_json::to_value(&e.body).expect("json")["by"].clone())
        };
        assert_eq!(
            by_of(&events(&jobs["waiting"]).await, "signal_received"),
            Some(json!("ops-alice"))
        );
        let confirmed = events(&jobs["unknown"]).await;
        assert_eq!(
            by_of(&confirmed, "step_confirmed"),
            Some(json!("ops-alice"))
        );
        assert_eq!(
            by_of(&events(&jobs["cancelled"]).await, "job_cancelled"),
            Some(json!("ops-alice"))
        );
        // The agent decisions taken in the browser: by the signed-in identity; the
        // rejected call and the one never decided never ran, the edited one ran once with
        // the edit.
        let approved = events(&jobs["agent_approved"]).await;
        assert_eq!(
            by_of(&approved, "agent_tool_approved"),
            Some(json!("ops-alice"))
        );
        let rejected = events(&jobs["agent_rejected"]).await;
        assert_eq!(
            by_of(&rejected, "agent_tool_refused"),
            Some(json!("ops-alice"))
        );
        let raised = events(&jobs["agent_budget"]).await;
        assert_eq!(
            by_of(&raised, "agent_budget_decided"),
            Some(json!("ops-alice"))
        );
        let undecided = events(&jobs["agent_pending"]).await;
        assert!(
            !undecided
                .iter()
                .any(|e| e.body.kind().starts_with("agent_tool_approved")
                    || e.body.kind() == "agent_tool_refused"),
            "the auditor's refused decision changed nothing"
        );
        let ran = refunds.lock().unwrap().clone();
        assert_eq!(
            ran,
            vec![json!({"amount": 25, "note": "edited in the UI"})],
            "only the approved refund ran, with the edited arguments"
        );
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
        let audit = store
            .list_audit(
                Scope::Tenant("acme"),
                AuditFilter {
                    after_id: 0,
                    limit: 1000,
                    action: None,
                },
            )
            .await
            .expect("audit");
        for action in ["job.signal", "job.confirm", "job.cancel"] {
            assert!(
                audit.iter().any(|r| r.entry.action == action
                    && r.entry.actor == "ops-alice"
                    && r.entry.result == "ok"),
                "an audit row for {action} by ops-alice: {audit:?}"
            );
        }
        assert!(
            audit
                .iter()
                .any(|r| r.entry.actor == "audit-bob" && r.entry.result == "denied"),
            "the auditor's refused cancel is audited as denied"
        );
    });

    // The package the browser downloaded is a real one, and it verifies.
    let zip = std::fs::read(report["evidence_zip"].as_str().expect("zip path")).expect("zip");
    let verified = aetheris_proof::verify(&zip, &evidence.public_keys()).expect("verifies");
    assert_eq!(
        verified.job_id,
        report["jobs"]["hostile"].as_str().unwrap_or_default()
    );
    let _ = std::fs::remove_file(report["evidence_zip"].as_str().unwrap_or_default());
}
