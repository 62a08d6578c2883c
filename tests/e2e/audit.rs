//! The access audit log end to end, on both stores: every mutating call and every refused
//! attempt leaves one row (who, tenant, action, target, result, time); a call that changes
//! nothing because it is rejected (409 on a finished job, 409 duplicate tenant, 400 bad
//! plan, 429) leaves none; `GET /v1/audit` shows a tenant's auditors their own rows only.
//! Commands record the token's `sub` as `by`.

use crate::support::{rt, TestNode};
use aetheris_actors::ratelimit::{LimitsConfig, RateLimiters};
use aetheris_actors::WorkerConfig;
use aetheris_api::auth::{self, AuthConfig, Claims, Role};
use aetheris_runtime::JobId;
use aetheris_store::Scope;
use serde_json::{json, Value};
use std::time::Duration;

const SECRET: [u8; 32] = [5u8; 32];

fn token(sub: &str, tenant: &str, role: Role) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    auth::issue_hs256(&SECRET, &Claims::new(sub, tenant, &[role], now, 3600))
}

fn auth_cfg() -> Option<AuthConfig> {
    Some(AuthConfig {
        hs256_secrets: vec![SECRET.to_vec()],
        ..Default::default()
    })
}

fn worker() -> WorkerConfig {
    // the tenant may admit 6 jobs at once, so the 7th submission gets 429.
    let limits = json!({"tenants": {"default": {"admissions_per_s": 0.01, "admission_burst": 6}}});
    WorkerConfig {
        rate_limits: RateLimiters::new(LimitsConfig::parse(&limits.to_string()).unwrap()),
        ..WorkerConfig::default()
    }
}

async fn send(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    tok: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c.request(method, url).bearer_auth(tok);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

fn audit_trail(node: TestNode) {
    rt().block_on(async {
        // On PostgreSQL the migrations already created the system tenant `default`.
        for t in ["default", "other"] {
            match node.store.create_tenant(t, t, json!({}), None).await {
                Ok(_) => {}
                Err(aetheris_store::StoreError::Conflict(_)) if t == "default" => {}
                Err(e) => panic!("create tenant {t}: {e}"),
            }
        }
        let c = reqwest::Client::new();
        let u = node.url.clone();
        let admin = token("alice", "default", Role::Admin);
        let auditor = token("audrey", "default", Role::Auditor);
        let viewer = token("victor", "default", Role::Viewer);
        let foreign_auditor = token("oscar", "other", Role::Auditor);
        use reqwest::Method as M;
        let job = json!({"idempotency_key": "k1", "plan": {"steps": [
            {"id": "w", "wait": {"signal": "go"}},
            {"id": "w2", "wait": {"signal": "never"}, "needs": ["w"]}
        ]}});

        let (s, j) = send(
            &c,
            M::POST,
            format!("{u}/v1/jobs"),
            &admin,
            Some(job.clone()),
        )
        .await;
        assert_eq!(s, 201, "{j}");
        let id = j["job_id"].as_str().unwrap().to_string();
        let (s, _) = send(&c, M::POST, format!("{u}/v1/jobs"), &admin, Some(job)).await;
        assert_eq!(s, 200, "idempotent resubmit");
        // A bad plan is refused before anything is stored: no row.
        let bad = json!({"plan": {"steps": [{"id": "a", "tool": "no-such-tool"}]}});
        let (s, _) = send(&c, M::POST, format!("{u}/v1/jobs"), &admin, Some(bad)).await;
        assert_eq!(s, 422, "an invalid plan");
        // `by` is the caller: a different one is refused, none means the token's sub.
        let (s, p) = send(
            &c,
            M::POST,
            format!("{u}/v1/jobs/{id}/signals/go"),
            &admin,
            Some(json!({"by": "mallory"})),
        )
        .await;
        assert_eq!(s, 400, "{p}");
        let (s, p) = send(
            &c,
            M::POST,
            format!("{u}/v1/jobs/{id}/signals/go"),
            &admin,
            Some(json!({"payload": {"ok": true}})),
        )
        .await;
        assert_eq!(s, 202, "{p}");
        let (s, p) = send(
            &c,
            M::POST,
            format!("{u}/v1/jobs/{id}/cancel"),
            &admin,
            Some(json!({"reason": "done"})),
        )
        .await;
        assert_eq!(s, 202, "{p}");
        let job_id: JobId = id.parse().unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let j = node
                .store
                .get_job(Scope::System, job_id)
                .await
                .unwrap()
                .unwrap();
            if j.status.as_str() == "cancelled" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not cancelled: {j:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (s, _) = send(
            &c,
            M::POST,
            format!("{u}/v1/jobs/{id}/cancel"),
            &admin,
            Some(json!({})),
        )
        .await;
        assert_eq!(s, 409, "a finished job: rejected, no row");
        let (s, _) = send(
            &c,
            M::POST,
            format!("{u}/v1/jobs"),
            &viewer,
            Some(json!({})),
        )
        .await;
        assert_eq!(s, 403);
        let (s, _) = send(
            &c,
            M::POST,
            format!("{u}/v1/tenants"),
            &admin,
            Some(json!({"id": "newco"})),
        )
        .await;
        assert_eq!(s, 201);
        let (s, _) = send(
            &c,
            M::POST,
            format!("{u}/v1/tenants"),
            &admin,
            Some(json!({"id": "newco"})),
        )
        .await;
        assert_eq!(s, 409, "a duplicate tenant: rejected, no row");
        let (s, _) = send(
            &c,
            M::PUT,
            format!("{u}/v1/tenants/newco/limits"),
            &admin,
            Some(json!({"max_running_jobs": 4})),
        )
        .await;
        assert_eq!(s, 200);
        // Admission over the limit (burst 6, 2 used above): 429 leaves no row.
        let small = json!({"plan": {"steps": [{"id": "a", "tool": "echo"}]}});
        let mut codes = Vec::new();
        for _ in 0..5 {
            let (s, _) = send(
                &c,
                M::POST,
                format!("{u}/v1/jobs"),
                &admin,
                Some(small.clone()),
            )
            .await;
            codes.push(s);
        }
        assert_eq!(codes, [201, 201, 201, 201, 429], "{codes:?}");

        let (s, log) = send(&c, M::GET, format!("{u}/v1/audit"), &auditor, None).await;
        assert_eq!(s, 200, "{log}");
        let entries = log["entries"].as_array().unwrap();
        let got: Vec<(String, String, String, String)> = entries
            .iter()
            .map(|e| {
                assert_eq!(e["tenant"], "default");
                assert!(e["at_ms"].as_i64().unwrap() > 0);
                let f = |k: &str| e[k].as_str().unwrap().to_string();
                (f("actor"), f("action"), f("target"), f("result"))
            })
            .collect();
        let row = |a: &str, b: &str, t: &str, r: &str| {
            (a.to_string(), b.to_string(), t.to_string(), r.to_string())
        };
        let want = [
            row("alice", "job.submit", &id, "ok"),
            row("alice", "job.submit", &id, "existing"),
            row("alice", "job.signal", &format!("{id}/signals/go"), "ok"),
            row("alice", "job.cancel", &id, "ok"),
            row("victor", "job:create", "/v1/jobs", "denied"),
            row("alice", "tenant.create", "newco", "ok"),
            row("alice", "tenant.set_limits", "newco", "ok"),
        ];
        assert_eq!(got[..want.len()], want[..], "{log:#}");
        assert_eq!(
            got.len(),
            want.len() + 4,
            "four admitted echo jobs: {log:#}"
        );
        assert!(got[want.len()..]
            .iter()
            .all(|r| r.1 == "job.submit" && r.3 == "ok"));

        // The signal and cancel carry the caller as `by`.
        let evs = node
            .store
            .read_events(Scope::System, job_id, 0, 100)
            .await
            .unwrap();
        let bys: Vec<Value> = evs
            .iter()
            .filter(|e| ["signal_received", "job_cancelled"].contains(&e.body.kind()))
            .map(|e| serde_json::to_value(&e.body).unwrap()["by"].clone())
            .collect();
        assert_eq!(bys, [json!("alice"), json!("alice")], "{evs:#?}");

        // Paging and filters.
        let (_, page) = send(&c, M::GET, format!("{u}/v1/audit?limit=2"), &auditor, None).await;
        assert_eq!(page["entries"].as_array().unwrap().len(), 2);
        let next = page["next_after"].as_u64().expect("a next page");
        let (_, rest) = send(
            &c,
            M::GET,
            format!("{u}/v1/audit?after={next}&limit=2"),
            &auditor,
            None,
        )
        .await;
        assert_eq!(rest["entries"][0], entries[2]);
        let (_, cancels) = send(
            &c,
            M::GET,
            format!("{u}/v1/audit?action=job.cancel"),
            &auditor,
            None,
        )
        .await;
        assert_eq!(cancels["entries"].as_array().unwrap().len(), 1);
        let (s, p) = send(&c, M::GET, format!("{u}/v1/audit?limit=0"), &auditor, None).await;
        assert_eq!(s, 400, "{p}");

        // Another tenant's auditor sees none of it; a viewer may not read it at all.
        let (s, theirs) = send(&c, M::GET, format!("{u}/v1/audit"), &foreign_auditor, None).await;
        assert_eq!(s, 200);
        assert_eq!(theirs["entries"], json!([]), "no leak across tenants");
        let (s, _) = send(&c, M::GET, format!("{u}/v1/audit"), &viewer, None).await;
        assert_eq!(s, 403);
        let (_, after) = send(
            &c,
            M::GET,
            format!("{u}/v1/audit?action=audit:read"),
            &auditor,
            None,
        )
        .await;
        assert_eq!(
            after["entries"][0]["actor"], "victor",
            "the refused read is audited"
        );
    });
}

#[test]
fn audit_log_on_the_embedded_store() {
    audit_trail(TestNode::start_with_auth(|_| {}, worker(), auth_cfg()));
}

#[test]
fn audit_log_on_postgres() {
    audit_trail(TestNode::start_pg_with_auth(|_| {}, worker(), auth_cfg()));
}
