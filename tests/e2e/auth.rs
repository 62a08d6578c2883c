//! Authentication, RBAC and tenant isolation end to end (G6, G8): 12 tenants, every
//! job endpoint tried with another tenant's token and ids (404, nothing leaks); each bad
//! token → 401 problem+json; each role × route → the documented allow or 403.

use crate::support::{rt, TestNode};
use aetheris_actors::WorkerConfig;
use aetheris_api::auth::{self, AuthConfig, Claims, Permission, Role};
use serde_json::{json, Value};

const SECRET: [u8; 32] = [7u8; 32];

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(tenant: &str, roles: &[Role]) -> String {
    auth::issue_hs256(&SECRET, &Claims::new("tester", tenant, roles, now(), 3600))
}

fn node() -> TestNode {
    let cfg = AuthConfig {
        hs256_secrets: vec![SECRET.to_vec()],
        ..Default::default()
    };
    let node = TestNode::start_with_auth(|_| {}, WorkerConfig::default(), Some(cfg));
    rt().block_on(async {
        let names = (0..12).map(|i| format!("tenant-{i}"));
        for t in names.chain(["default", "rbac", "t"].map(String::from)) {
            node.store
                .create_tenant(&t, &t, json!({}), None)
                .await
                .unwrap();
        }
    });
    node
}

async fn call(
    c: &reqwest::Client,
    method: &str,
    url: &str,
    tok: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, Option<String>) {
    let mut r = match method {
        "GET" => c.get(url),
        _ => c.post(url),
    };
    if let Some(t) = tok {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.text().await.unwrap_or_default();
    (
        s,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ct,
    )
}

fn job_body() -> Value {
    json!({"plan": {"steps": [{"id": "w", "wait": {"signal": "go"}}]}})
}

#[test]
fn twelve_tenants_see_only_their_own_jobs() {
    let node = node();
    rt().block_on(async {
        let c = reqwest::Client::new();
        let u = &node.url;
        let tenants: Vec<String> = (0..12).map(|i| format!("tenant-{i}")).collect();
        let mut jobs = Vec::new();
        for t in &tenants {
            let (s, j, _) = call(
                &c,
                "POST",
                &format!("{u}/v1/jobs"),
                Some(&token(t, &[Role::Admin])),
                Some(job_body()),
            )
            .await;
            assert_eq!(s, 201, "{j}");
            jobs.push(j["job_id"].as_str().unwrap().to_string());
        }
        for (i, t) in tenants.iter().enumerate() {
            let other = token(&tenants[(i + 1) % 12], &[Role::Admin]);
            let id = &jobs[i];
            let tries: Vec<(&str, String, Option<Value>)> = vec![
                ("GET", format!("{u}/v1/jobs/{id}"), None),
                ("GET", format!("{u}/v1/jobs/{id}/events"), None),
                ("GET", format!("{u}/v1/jobs/{id}/ledger"), None),
                (
                    "POST",
                    format!("{u}/v1/jobs/{id}/cancel"),
                    Some(json!({"reason": "x"})),
                ),
                (
                    "POST",
                    format!("{u}/v1/jobs/{id}/signals/go"),
                    Some(json!({})),
                ),
                (
                    "POST",
                    format!("{u}/v1/jobs/{id}/steps/w/confirm"),
                    Some(json!({"outcome": "succeeded"})),
                ),
            ];
            for (m, url, body) in tries {
                let (s, p, ct) = call(&c, m, &url, Some(&other), body).await;
                assert_eq!(s, 404, "{m} {url} with another tenant's token: {p}");
                assert_eq!(ct.as_deref(), Some("application/problem+json"));
                assert!(
                    !p.to_string().contains(t.as_str()),
                    "the answer names the owner: {p}"
                );
            }
            let (s, list, _) = call(&c, "GET", &format!("{u}/v1/jobs"), Some(&other), None).await;
            assert_eq!(s, 200);
            let ids: Vec<&str> = list["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|j| j["job_id"].as_str())
                .collect();
            assert!(!ids.contains(&id.as_str()), "another tenant's job listed");
            // The owner still sees it, and its job is untouched by the foreign attempts.
            let (s, j, _) = call(
                &c,
                "GET",
                &format!("{u}/v1/jobs/{id}"),
                Some(&token(t, &[Role::Viewer])),
                None,
            )
            .await;
            assert_eq!(s, 200);
            assert_ne!(j["status"], "cancelled");
        }
    });
}

#[test]
fn bad_tokens_get_401_problem_json() {
    let node = node();
    rt().block_on(async {
        let c = reqwest::Client::new();
        let url = format!("{}/v1/jobs", node.url);
        let n = now();
        let wrong_key =
            auth::issue_hs256(&[9u8; 32], &Claims::new("x", "t", &[Role::Admin], n, 3600));
        let expired = auth::issue_hs256(
            &SECRET,
            &Claims::new("x", "t", &[Role::Admin], n - 7200, 60),
        );
        let mut future = Claims::new("x", "t", &[Role::Admin], n, 7200);
        future.nbf = Some(n + 3600);
        let not_yet = auth::issue_hs256(&SECRET, &future);
        let none = {
            use base64::Engine;
            let e =
                |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            format!(
                "{}.{}.",
                e(&json!({"alg": "none", "typ": "JWT"})),
                e(&json!({"sub": "x", "tenant": "t", "roles": ["admin"], "exp": n + 3600}))
            )
        };
        let ghost = auth::issue_hs256(
            &SECRET,
            &Claims::new("x", "no-such-tenant", &[Role::Admin], n, 3600),
        );
        for (name, tok) in [
            ("tenant that does not exist", Some(ghost)),
            ("no token", None),
            ("garbage", Some("not.a.jwt".to_string())),
            ("wrong key", Some(wrong_key)),
            ("expired", Some(expired)),
            ("not yet valid", Some(not_yet)),
            ("alg none", Some(none)),
        ] {
            let (s, p, ct) = call(&c, "GET", &url, tok.as_deref(), None).await;
            assert_eq!(s, 401, "{name}: {p}");
            assert_eq!(ct.as_deref(), Some("application/problem+json"), "{name}");
        }
        let (s, _, _) = call(&c, "GET", &format!("{}/healthz", node.url), None, None).await;
        assert_eq!(s, 200, "health needs no token");
    });
}

#[test]
fn every_role_gets_the_documented_answer_on_every_route() {
    let node = node();
    rt().block_on(async {
        let c = reqwest::Client::new();
        let u = &node.url;
        let admin = token("default", &[Role::Admin]);
        let (_, j, _) = call(
            &c,
            "POST",
            &format!("{u}/v1/jobs"),
            Some(&admin),
            Some(job_body()),
        )
        .await;
        let id = j["job_id"].as_str().unwrap().to_string();
        let routes: Vec<(&str, String, Option<Value>, Permission)> = vec![
            (
                "POST",
                format!("{u}/v1/jobs"),
                Some(job_body()),
                Permission::JobCreate,
            ),
            ("GET", format!("{u}/v1/jobs"), None, Permission::JobRead),
            (
                "GET",
                format!("{u}/v1/jobs/{id}"),
                None,
                Permission::JobRead,
            ),
            (
                "GET",
                format!("{u}/v1/jobs/{id}/events"),
                None,
                Permission::JobRead,
            ),
            (
                "GET",
                format!("{u}/v1/jobs/{id}/ledger"),
                None,
                Permission::JobRead,
            ),
            (
                "POST",
                format!("{u}/v1/jobs/{id}/signals/other"),
                Some(json!({})),
                Permission::JobSignal,
            ),
            (
                "POST",
                format!("{u}/v1/jobs/{id}/steps/w/confirm"),
                Some(json!({"outcome": "succeeded"})),
                Permission::JobConfirm,
            ),
            ("GET", format!("{u}/metrics"), None, Permission::SystemRead),
            ("GET", format!("{u}/v1/audit"), None, Permission::AuditRead),
            (
                "GET",
                format!("{u}/v1/users"),
                None,
                Permission::TenantAdmin,
            ),
            (
                "GET",
                format!("{u}/v1/tenants"),
                None,
                Permission::TenantAdmin,
            ),
            (
                "GET",
                format!("{u}/v1/system/actors"),
                None,
                Permission::TenantAdmin,
            ),
            (
                "POST",
                format!("{u}/v1/jobs/{id}/cancel"),
                Some(json!({})),
                Permission::JobCancel,
            ),
        ];
        for role in Role::ALL {
            let tok = token("default", &[role]);
            for (m, url, body, perm) in &routes {
                let (s, p, _) = call(&c, m, url, Some(&tok), body.clone()).await;
                let allowed = auth::permissions(role).contains(perm);
                if allowed {
                    assert_ne!(s, 403, "{role} may {m} {url}: {p}");
                    assert!(s < 500, "{role} {m} {url}: {p}");
                } else {
                    assert_eq!(s, 403, "{role} may not {m} {url}: {p}");
                }
            }
        }
    });
}

#[test]
fn tenant_admin_creates_tenants_and_limits_apply_without_restart() {
    let node = node();
    rt().block_on(async {
        let c = reqwest::Client::new();
        let u = &node.url;
        let admin = token("default", &[Role::Admin]);
        // Only the system tenant's admins manage tenants; another tenant's admin may not
        // list them (G6) nor raise its own limits.
        let rbac_admin = token("rbac", &[Role::Admin]);
        let (s, p, _) = call(
            &c,
            "GET",
            &format!("{u}/v1/tenants"),
            Some(&rbac_admin),
            None,
        )
        .await;
        assert_eq!(s, 403, "{p}");
        let (s, _, _) = call(
            &c,
            "POST",
            &format!("{u}/v1/tenants"),
            Some(&rbac_admin),
            Some(json!({"id": "x3"})),
        )
        .await;
        assert_eq!(s, 403);
        // Nor see the deployment's processes.
        let (s, p, _) = call(
            &c,
            "GET",
            &format!("{u}/v1/system/actors"),
            Some(&rbac_admin),
            None,
        )
        .await;
        assert_eq!(s, 403, "{p}");
        let (s, p, _) = call(
            &c,
            "GET",
            &format!("{u}/v1/system/actors"),
            Some(&admin),
            None,
        )
        .await;
        assert_eq!(s, 200, "{p}");
        assert!(
            p["processes"].as_array().is_some_and(|a| a.len() == 2),
            "{p}"
        );
        let (s, t, _) = call(
            &c,
            "POST",
            &format!("{u}/v1/tenants"),
            Some(&admin),
            Some(json!({"id": "acme", "name": "Acme"})),
        )
        .await;
        assert_eq!(s, 201, "{t}");
        let (s, _, _) = call(
            &c,
            "POST",
            &format!("{u}/v1/tenants"),
            Some(&admin),
            Some(json!({"id": "acme"})),
        )
        .await;
        assert_eq!(s, 409);
        let (s, _, _) = call(
            &c,
            "POST",
            &format!("{u}/v1/tenants"),
            Some(&admin),
            Some(json!({"id": "bad id!"})),
        )
        .await;
        assert_eq!(s, 400);
        let (s, _, _) = call(
            &c,
            "POST",
            &format!("{u}/v1/tenants"),
            Some(&token("default", &[Role::Operator])),
            Some(json!({"id": "x2"})),
        )
        .await;
        assert_eq!(s, 403);
        let r = c
            .put(format!("{u}/v1/tenants/acme/limits"))
            .bearer_auth(&admin)
            .json(&json!({"admissions_per_s": 0.1, "admission_burst": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = c
            .put(format!("{u}/v1/tenants/acme/limits"))
            .bearer_auth(&admin)
            .json(&json!({"admissions_per_s": -1}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            400,
            "a bad limit is refused and changes nothing"
        );
        let acme = token("acme", &[Role::Submitter]);
        let (s1, _, _) = call(
            &c,
            "POST",
            &format!("{u}/v1/jobs"),
            Some(&acme),
            Some(job_body()),
        )
        .await;
        let (s2, p, _) = call(
            &c,
            "POST",
            &format!("{u}/v1/jobs"),
            Some(&acme),
            Some(job_body()),
        )
        .await;
        assert_eq!(
            (s1, s2),
            (201, 429),
            "acme's new limit applies at once: {p}"
        );
        // Another tenant is not slowed by acme's limit.
        for _ in 0..3 {
            let (s, _, _) = call(
                &c,
                "POST",
                &format!("{u}/v1/jobs"),
                Some(&admin),
                Some(job_body()),
            )
            .await;
            assert_eq!(s, 201);
        }
        let (s, list, _) = call(&c, "GET", &format!("{u}/v1/tenants"), Some(&admin), None).await;
        assert_eq!(s, 200);
        assert!(list["tenants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == "acme" && t["limits"]["admissions_per_s"] == 0.1));
    });
}

#[test]
fn metrics_show_a_tenant_only_its_own_series() {
    let node = node();
    rt().block_on(async {
        let c = reqwest::Client::new();
        let u = &node.url;
        for t in ["tenant-1", "tenant-2"] {
            let (s, _, _) = call(
                &c,
                "POST",
                &format!("{u}/v1/jobs"),
                Some(&token(t, &[Role::Admin])),
                Some(job_body()),
            )
            .await;
            assert_eq!(s, 201);
        }
        let scrape = |t: &'static str| {
            let c = c.clone();
            let url = format!("{u}/metrics");
            async move {
                c.get(url)
                    .bearer_auth(token(t, &[Role::Admin]))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap()
            }
        };
        let one = scrape("tenant-1").await;
        assert!(one.contains("tenant=\"tenant-1\""), "{one}");
        assert!(
            !one.contains("tenant-2"),
            "another tenant's series leak: {one}"
        );
        let ops = scrape("default").await;
        assert!(
            ops.contains("tenant-1") && ops.contains("tenant-2"),
            "{ops}"
        );
    });
}

#[test]
fn user_rows_narrow_roles_and_disable_users() {
    let node = node();
    rt().block_on(async {
        let c = reqwest::Client::new();
        let u = &node.url;
        let tok = |sub: &str, tenant: &str, roles: &[Role]| {
            auth::issue_hs256(&SECRET, &Claims::new(sub, tenant, roles, now(), 3600))
        };
        let boss = tok("boss", "rbac", &[Role::Admin]);
        let alice = tok("alice", "rbac", &[Role::Admin]);
        let put = |who: String, id: &'static str, body: Value| {
            let c = c.clone();
            let url = format!("{u}/v1/users/{id}");
            async move {
                let r = c
                    .put(url)
                    .bearer_auth(who)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                (
                    r.status().as_u16(),
                    r.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
        };
        let jobs = format!("{u}/v1/jobs");
        // Without a row, alice's token acts with its own roles.
        let (s, _, _) = call(&c, "POST", &jobs, Some(&alice), Some(job_body())).await;
        assert_eq!(s, 201);
        let (s, p) = put(boss.clone(), "alice", json!({"roles": ["viewer"]})).await;
        assert_eq!(s, 200, "{p}");
        let (s, _, _) = call(&c, "GET", &jobs, Some(&alice), None).await;
        assert_eq!(s, 200, "viewer may read");
        let (s, _, _) = call(&c, "POST", &jobs, Some(&alice), Some(job_body())).await;
        assert_eq!(s, 403, "the row narrows the token's admin role to viewer");
        let (s, p) = put(
            boss.clone(),
            "alice",
            json!({"roles": ["admin"], "disabled": true}),
        )
        .await;
        assert_eq!(s, 200, "{p}");
        let (s, p, _) = call(&c, "GET", &jobs, Some(&alice), None).await;
        assert_eq!(s, 401, "a disabled user is refused: {p}");
        assert!(p.to_string().contains("disabled"), "{p}");
        let (s, _) = put(boss.clone(), "alice", json!({"roles": ["admin"]})).await;
        assert_eq!(s, 200);
        let (s, _, _) = call(&c, "POST", &jobs, Some(&alice), Some(job_body())).await;
        assert_eq!(s, 201, "re-enabled");
        // Bad input changes nothing.
        let (s, _) = put(boss.clone(), "alice", json!({"roles": ["root"]})).await;
        assert_eq!(s, 400);
        let (s, _) = put(boss.clone(), "bad id!", json!({"roles": []})).await;
        assert!(s == 400 || s == 404, "{s}");
        let (s, _) = put(
            tok("v", "rbac", &[Role::Viewer]),
            "alice",
            json!({"roles": []}),
        )
        .await;
        assert_eq!(s, 403);
        // No self-lockout: an admin may not disable itself or drop its own admin role
        // (409, nothing stored).
        for body in [
            json!({"roles": ["admin"], "disabled": true}),
            json!({"roles": ["viewer"]}),
            json!({"roles": []}),
        ] {
            let (s, p) = put(boss.clone(), "boss", body).await;
            assert_eq!(s, 409, "{p}");
        }
        let (s, list, _) = call(&c, "GET", &format!("{u}/v1/users"), Some(&boss), None).await;
        assert_eq!(s, 200);
        assert_eq!(list["users"].as_array().unwrap().len(), 1, "{list}");
        assert_eq!(list["users"][0]["roles"], json!(["admin"]));
        // Users are per tenant: another tenant's admin sees none, and its own `alice` is
        // another user.
        let other_admin = tok("root", "tenant-3", &[Role::Admin]);
        let (_, theirs, _) = call(
            &c,
            "GET",
            &format!("{u}/v1/users"),
            Some(&other_admin),
            None,
        )
        .await;
        assert_eq!(theirs["users"], json!([]));
        let (s, _, _) = call(
            &c,
            "GET",
            &jobs,
            Some(&tok("alice", "tenant-3", &[Role::Viewer])),
            None,
        )
        .await;
        assert_eq!(s, 200, "rbac's row for alice does not apply in tenant-3");
        let rows = node
            .store
            .list_audit(
                aetheris_store::Scope::Tenant("rbac"),
                aetheris_store::AuditFilter {
                    after_id: 0,
                    limit: 100,
                    action: Some("user.put".into()),
                },
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 3, "three accepted puts: {rows:?}");
    });
}
