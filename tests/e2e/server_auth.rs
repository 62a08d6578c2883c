//! `aetheris server` key configuration as a user runs it: `token keygen` makes an Ed25519
//! pair, `token issue --ed25519-signing-key-file` signs with it, and a server given the
//! public key (`--auth-ed25519-public-key-file`) accepts those tokens and refuses others
//! (401); a server with no key configured refuses to start.

use crate::support::rt;
use aetheris_store::{PgStore, Tenants};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn aetheris(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_aetheris"))
        .args(args)
        .env_remove("AETHERIS_AUTH_HS256_SECRET_FILE")
        .env_remove("AETHERIS_AUTH_ED25519_PUBLIC_KEY_FILE")
        .output()
        .expect("run aetheris")
}

/// Kills the child when dropped, so a failing test leaves no server behind.
struct Killed(std::process::Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn issue(key: &str, tenant: &str) -> String {
    let out = aetheris(&[
        "token",
        "issue",
        "--ed25519-signing-key-file",
        key,
        "--tenant",
        tenant,
        "--role",
        "admin",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn server_verifies_eddsa_tokens_from_a_configured_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("issuer").display().to_string();
    let out = aetheris(&["token", "keygen", "--out", &prefix]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = aetheris(&["token", "keygen", "--out", &prefix]);
    assert!(!again.status.success(), "a key is never overwritten");
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    let other = dir.path().join("other").display().to_string();
    assert!(aetheris(&["token", "keygen", "--out", &other])
        .status
        .success());

    let url = rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url());
    let no_auth = aetheris(&["server", "--database-url", &url, "--bind", "127.0.0.1:0"]);
    assert!(!no_auth.status.success());
    assert!(
        String::from_utf8_lossy(&no_auth.stderr).contains("no authentication configured"),
        "{}",
        String::from_utf8_lossy(&no_auth.stderr)
    );
    let bad_key = dir.path().join("bad.pub");
    std::fs::write(&bad_key, "base64:AAAA").unwrap();
    let bad = aetheris(&[
        "server",
        "--database-url",
        &url,
        "--auth-ed25519-public-key-file",
        bad_key.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("bad.pub"),
        "the bad file is named"
    );

    rt().block_on(async {
        let store = PgStore::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        store
            .create_tenant("acme", "Acme", serde_json::json!({}), None)
            .await
            .unwrap();
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bind = format!("127.0.0.1:{port}");
    let public = format!("{prefix}.pub");
    let _server = Killed(
        Command::new(env!("CARGO_BIN_EXE_aetheris"))
            .args(["server", "--database-url", &url, "--bind", &bind])
            .args(["--auth-ed25519-public-key-file", &public])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start server"),
    );
    let base = format!("http://{bind}");
    let good = issue(&format!("{prefix}.key"), "acme");
    let foreign = issue(&format!("{other}.key"), "acme");
    rt().block_on(async {
        let c = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(c.get(format!("{base}/readyz")).send().await, Ok(r) if r.status().is_success())
        {
            assert!(Instant::now() < deadline, "server not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = |tok: String| {
            let c = c.clone();
            let url = format!("{base}/v1/jobs");
            async move { c.get(url).bearer_auth(tok).send().await.unwrap().status().as_u16() }
        };
        assert_eq!(status(good).await, 200, "a token signed with the configured key");
        assert_eq!(status(foreign).await, 401, "a token signed with another key");
    });
}
