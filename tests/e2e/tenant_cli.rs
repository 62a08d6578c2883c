//! `aetheris tenant create|list|set-limits`, `aetheris user put|list` and `aetheris audit
//! list` end to end: the real binary against a node with authentication. Creates, lists and changes a tenant (checked through the HTTP
//! API), and checks that every failure — a duplicate id, bad local input, a non-admin
//! token, an unknown tenant, limits the server refuses — is one line on stderr, a non-zero
//! exit, and changes nothing (G8).

use crate::support::{rt, TestNode};
use aetheris_actors::WorkerConfig;
use aetheris_api::auth::{self, AuthConfig, Claims, Role};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

const SECRET: [u8; 32] = [9u8; 32];

fn token(roles: &[Role]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    auth::issue_hs256(&SECRET, &Claims::new("tester", "default", roles, now, 3600))
}

fn node() -> TestNode {
    let cfg = AuthConfig {
        hs256_secrets: vec![SECRET.to_vec()],
        ..Default::default()
    };
    let node = TestNode::start_with_auth(|_| {}, WorkerConfig::default(), Some(cfg));
    // The tokens' own tenant must exist, or they are not valid credentials.
    rt().block_on(
        node.store
            .create_tenant("default", "default", json!({}), None),
    )
    .unwrap();
    node
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `aetheris tenant ARGS…` in `cwd`, with no token or server from the environment.
fn tenant(cwd: &Path, args: &[&str]) -> Out {
    cli(cwd, "tenant", args)
}

/// Runs `aetheris COMMAND ARGS…` in `cwd`, with no token or server from the environment.
fn cli(cwd: &Path, command: &str, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_aetheris"))
        .current_dir(cwd)
        .env_remove("AETHERIS_TOKEN")
        .env_remove("AETHERIS_SERVER")
        .arg(command)
        .args(args)
        .output()
        .expect("run aetheris");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A failure: non-zero exit and exactly one line on stderr, which is returned.
fn failure(o: &Out) -> String {
    assert!(!o.ok, "expected a failure, got success: {}", o.stdout);
    assert_eq!(o.stderr.trim().lines().count(), 1, "stderr: {:?}", o.stderr);
    o.stderr.trim().to_string()
}

/// The tenants as the HTTP API lists them.
fn tenants(node: &TestNode) -> Vec<Value> {
    rt().block_on(async {
        let r = reqwest::Client::new()
            .get(format!("{}/v1/tenants", node.url))
            .bearer_auth(token(&[Role::Admin]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        v["tenants"].as_array().unwrap().clone()
    })
}

fn find<'a>(list: &'a [Value], id: &str) -> Option<&'a Value> {
    list.iter().find(|t| t["id"] == id)
}

#[test]
fn create_list_set_limits_and_every_failure_changes_nothing() {
    let node = node();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let admin = token(&[Role::Admin]);
    let conn = ["--server", node.url.as_str(), "--token", admin.as_str()];
    let with = |extra: &[&str]| -> Vec<String> {
        conn.iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let args = with(extra);
        tenant(cwd, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // create (inline JSON limits) → shown; list shows it, human and --json.
    let o = run(&[
        "create",
        "acme",
        "--name",
        "Acme Corp",
        "--limits",
        r#"{"admissions_per_s": 5}"#,
    ]);
    assert!(o.ok, "create failed: {}", o.stderr);
    assert!(
        o.stdout.contains("created tenant acme (Acme Corp)"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("admissions_per_s"), "{}", o.stdout);
    let o = run(&["list"]);
    assert!(o.ok, "{}", o.stderr);
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("acme "))
        .expect("acme listed");
    assert!(
        line.contains("Acme Corp") && line.contains("\"admissions_per_s\":5"),
        "{line}"
    );
    let o = run(&["list", "--json"]);
    assert!(o.ok, "{}", o.stderr);
    let listed: Value = serde_json::from_str(&o.stdout).unwrap();
    let acme = find(listed["tenants"].as_array().unwrap(), "acme")
        .cloned()
        .unwrap();
    assert_eq!(acme["name"], "Acme Corp");
    assert_eq!(acme["limits"]["admissions_per_s"], 5.0);

    // set-limits from @FILE replaces the limits; the API shows the change.
    let file = cwd.join("limits.json");
    std::fs::write(
        &file,
        r#"{"tool_calls_per_s": 7, "tool_calls_per_s_by_tool": {"http": 2}}"#,
    )
    .unwrap();
    let at_file = format!("@{}", file.display());
    let o = run(&["set-limits", "acme", "--limits", &at_file, "--json"]);
    assert!(o.ok, "set-limits failed: {}", o.stderr);
    let set: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(set["limits"]["tool_calls_per_s"], 7.0);
    let all = tenants(&node);
    let acme = find(&all, "acme").unwrap();
    assert_eq!(acme["limits"]["tool_calls_per_s"], 7.0);
    assert_eq!(acme["limits"]["tool_calls_per_s_by_tool"]["http"], 2.0);
    assert!(
        acme["limits"]["admissions_per_s"].is_null(),
        "set-limits replaces, it does not merge: {acme}"
    );

    // A duplicate id: 409 from the server, one line, nothing changed.
    let e = failure(&run(&["create", "acme", "--name", "Other"]));
    assert!(e.contains("409") && e.contains("Conflict"), "{e}");
    assert_eq!(find(&tenants(&node), "acme").unwrap()["name"], "Acme Corp");

    // Bad local input fails before any request: even with no server to talk to.
    let before = tenants(&node).len();
    let nowhere = ["--server", "http://127.0.0.1:1", "--token", admin.as_str()];
    for (limits, want) in [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ("@/nonexistent/limits.json", "reading --limits"),
    ] {
        for server in [&conn, &nowhere] {
            let mut args: Vec<&str> = server.to_vec();
            args.extend(["create", "bad", "--limits", limits]);
            let e = failure(&tenant(cwd, &args));
            assert!(e.contains(want), "{limits}: {e}");
            let mut args: Vec<&str> = server.to_vec();
            args.extend(["set-limits", "acme", "--limits", limits]);
            let e = failure(&tenant(cwd, &args));
            assert!(e.contains(want), "{limits}: {e}");
        }
    }
    let all = tenants(&node);
    assert_eq!(all.len(), before, "bad input created a tenant: {all:?}");
    assert_eq!(
        find(&all, "acme").unwrap()["limits"]["tool_calls_per_s"],
        7.0
    );

    // Limits the server refuses (a field it does not know, a negative rate): its problem
    // detail, nothing stored.
    let e = failure(&run(&["create", "odd", "--limits", r#"{"speed": 1}"#]));
    assert!(e.contains("400") && e.contains("speed"), "{e}");
    let e = failure(&run(&[
        "set-limits",
        "acme",
        "--limits",
        r#"{"tool_calls_per_s": -1}"#,
    ]));
    assert!(e.contains("400"), "{e}");
    let all = tenants(&node);
    assert!(find(&all, "odd").is_none());
    assert_eq!(
        find(&all, "acme").unwrap()["limits"]["tool_calls_per_s"],
        7.0
    );

    // An unknown tenant: 404.
    let e = failure(&run(&["set-limits", "ghost", "--limits", "{}"]));
    assert!(e.contains("404"), "{e}");
    assert!(find(&tenants(&node), "ghost").is_none());
}

#[test]
fn a_token_without_tenant_admin_gets_403_and_the_dev_token_file_is_used() {
    let node = node();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let viewer = token(&[Role::Viewer]);
    let operator = token(&[Role::Operator]);
    for t in [&viewer, &operator] {
        let conn = ["--server", node.url.as_str(), "--token", t.as_str()];
        let mut args = conn.to_vec();
        args.push("list");
        let e = failure(&tenant(cwd, &args));
        assert!(e.contains("403") && e.contains("Forbidden"), "{e}");
        let mut args = conn.to_vec();
        args.extend(["create", "sneaky"]);
        let e = failure(&tenant(cwd, &args));
        assert!(e.contains("403"), "{e}");
        let mut args = conn.to_vec();
        args.extend([
            "set-limits",
            "default",
            "--limits",
            r#"{"admissions_per_s": 1}"#,
        ]);
        let e = failure(&tenant(cwd, &args));
        assert!(e.contains("403"), "{e}");
    }
    let all = tenants(&node);
    assert!(find(&all, "sneaky").is_none());
    assert_eq!(
        find(&all, "default").unwrap()["limits"]["admissions_per_s"],
        Value::Null
    );

    // No --token and no AETHERIS_TOKEN: the token `aetheris dev` writes to .aetheris/token.
    let e = failure(&tenant(cwd, &["--server", &node.url, "list"]));
    assert!(e.contains("401"), "no token at all: {e}");
    std::fs::create_dir_all(cwd.join(".aetheris")).unwrap();
    std::fs::write(
        cwd.join(".aetheris/token"),
        format!("{}\n", token(&[Role::Admin])),
    )
    .unwrap();
    let o = tenant(cwd, &["--server", &node.url, "create", "from-dev-token"]);
    assert!(o.ok, "{}", o.stderr);
    assert!(find(&tenants(&node), "from-dev-token").is_some());
}

/// A token of tenant `default` for user `sub` with `roles`.
fn token_for(sub: &str, roles: &[Role]) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    auth::issue_hs256(&SECRET, &Claims::new(sub, "default", roles, now, 3600))
}

#[test]
fn users_and_the_audit_log_through_the_cli() {
    let node = node();
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let run = |command: &str, tok: &str, extra: &[&str]| {
        let mut args = vec!["--server", node.url.as_str(), "--token", tok];
        args.extend_from_slice(extra);
        cli(cwd, command, &args)
    };
    let admin = token(&[Role::Admin]);
    let status_as = |tok: &str| {
        rt().block_on(async {
            reqwest::Client::new()
                .get(format!("{}/v1/jobs", node.url))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    };

    // put → shown; list shows it (human and --json).
    let o = run("user", &admin, &["put", "ada", "--role", "operator,viewer"]);
    assert!(o.ok, "put failed: {}", o.stderr);
    assert!(
        o.stdout.contains("ada") && o.stdout.contains("operator,viewer"),
        "{}",
        o.stdout
    );
    let o = run("user", &admin, &["list"]);
    assert!(o.ok, "{}", o.stderr);
    let line = o
        .stdout
        .lines()
        .find(|l| l.starts_with("ada "))
        .expect("ada listed");
    assert!(line.contains("active"), "{line}");
    let o = run("user", &admin, &["list", "--json"]);
    let v: Value = serde_json::from_str(&o.stdout).expect("--json is JSON");
    assert_eq!(v["users"][0]["id"], "ada");
    assert_eq!(v["users"][0]["roles"], json!(["operator", "viewer"]));
    let ada = token_for("ada", &[Role::Viewer]);
    assert_eq!(status_as(&ada), 200, "ada may read jobs");

    // Failures: one line, non-zero exit, nothing changed.
    let e = failure(&run("user", &admin, &["put", "bob", "--role", "root"]));
    assert!(e.contains("unknown role \"root\""), "{e}");
    let e = failure(&run("user", &ada, &["put", "bob", "--role", "admin"]));
    assert!(e.contains("403"), "a viewer cannot manage users: {e}");
    let e = failure(&run("user", &admin, &["put", "a b", "--role", "viewer"]));
    assert!(e.contains("user id"), "{e}");
    let o = run("user", &admin, &["list", "--json"]);
    let v: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(v["users"].as_array().unwrap().len(), 1, "only ada: {v}");

    // Disabling takes effect on the next request.
    let o = run(
        "user",
        &admin,
        &["put", "ada", "--role", "viewer", "--disabled"],
    );
    assert!(
        o.ok && o.stdout.contains("disabled"),
        "{} {}",
        o.stdout,
        o.stderr
    );
    assert_eq!(status_as(&ada), 401, "a disabled user's token is refused");

    // The audit log shows both changes; an auditor reads it; pages and filters work.
    let auditor = token_for("audrey", &[Role::Auditor]);
    let o = run("audit", &auditor, &["list", "--action", "user.put"]);
    assert!(o.ok, "{}", o.stderr);
    let puts: Vec<&str> = o
        .stdout
        .lines()
        .filter(|l| l.contains("user.put"))
        .collect();
    assert_eq!(puts.len(), 2, "{}", o.stdout);
    assert!(
        puts.iter()
            .all(|l| l.contains(" ada") && l.contains("tester")),
        "{puts:?}"
    );
    let o = run("audit", &auditor, &["list", "--limit", "1", "--json"]);
    let page: Value = serde_json::from_str(&o.stdout).unwrap();
    assert_eq!(page["entries"].as_array().unwrap().len(), 1);
    let next = page["next_after"]
        .as_u64()
        .expect("a next page")
        .to_string();
    let o = run(
        "audit",
        &auditor,
        &["list", "--limit", "1", "--after", &next],
    );
    assert!(o.ok && o.stdout.contains("more: --after"), "{}", o.stdout);
    let e = failure(&run("audit", &auditor, &["list", "--action", "Bad!"]));
    assert!(e.contains("action"), "{e}");
    let e = failure(&run(
        "audit",
        &token_for("sam", &[Role::Submitter]),
        &["list"],
    ));
    assert!(
        e.contains("403"),
        "a submitter cannot read the audit log: {e}"
    );
}
