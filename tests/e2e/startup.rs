//! Start-up failures of every command, as a user meets them: each case runs the real
//! binary as a process and requires a non-zero exit, exactly one line on stderr starting
//! with `error:` that names the problem, and no panic (`RUST_BACKTRACE=1` is set, so a
//! panic could not hide behind one line). Cases: `dev` and `server` with their port in
//! use or a malformed address, and `worker` with its admin port so; `server`, `worker` and `migrate` with an unreachable,
//! malformed or unknown database; bad, missing and too-short key files; a bad or missing
//! limits file; a `--data-dir` that cannot be created or is held by another `dev`; bad
//! `token issue` lifetimes; client commands with a malformed or unreachable server; and
//! a missing required argument.

use crate::readme::free_port;
use crate::support::rt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One failure: the arguments and a text the error line must contain.
struct Case {
    args: Vec<String>,
    expect: &'static str,
}

fn case(args: &[&str], expect: &'static str) -> Case {
    Case {
        args: args.iter().map(|a| a.to_string()).collect(),
        expect,
    }
}

/// Runs the binary in `cwd`; kills it if it has not exited after 60 s (a case that
/// starts instead of failing).
fn run(cwd: &Path, args: &[String]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aetheris"));
    cmd.args(args)
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "1")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("AETHERIS_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd.spawn().expect("run aetheris");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        match child.try_wait().expect("wait") {
            Some(s) => break s,
            None if Instant::now() > deadline => {
                let _ = child.kill();
                break child.wait().expect("wait after kill");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    (status.code(), stderr)
}

fn check(cwd: &Path, c: &Case) -> Result<(), String> {
    let (code, stderr) = run(cwd, &c.args);
    let shown = format!("aetheris {}", c.args.join(" "));
    if code.is_none_or(|c| c == 0) {
        return Err(format!("{shown}: exit {code:?}, stderr {stderr:?}"));
    }
    let lines: Vec<&str> = stderr.lines().collect();
    if lines.len() != 1 || !lines[0].starts_with("error: ") || stderr.contains("panicked") {
        return Err(format!("{shown}: stderr is not one error line: {stderr:?}"));
    }
    if !lines[0].contains(c.expect) {
        return Err(format!(
            "{shown}: {:?} does not say {:?}",
            lines[0], c.expect
        ));
    }
    Ok(())
}

#[test]
fn every_start_up_failure_is_one_error_line_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let db = rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url());
    let cluster = aetheris_store::testing::pg_cluster::cluster();
    let unknown_db = cluster.url("no_such_database");
    let closed = format!("postgres://postgres@127.0.0.1:{}/x", free_port());
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = held.local_addr().unwrap().to_string();

    let write = |name: &str, text: &str| {
        std::fs::write(cwd.join(name), text).unwrap();
        name.to_string()
    };
    let good_key = write(
        "good.key",
        "hex:0101010101010101010101010101010101010101010101010101010101010101\n",
    );
    let bad_key = write("bad.key", "not a key at all!\n");
    let short_key = write("short.key", "hex:0102\n");
    let bad_limits = write("bad-limits.json", "{nope");
    let wrong_limits = write(
        "wrong-limits.json",
        r#"{"defaults": {"admissions_per_s": -1}}"#,
    );
    write("a-file", "");

    let dev = |extra: &[&str]| {
        let mut a = vec!["dev", "--bind", "127.0.0.1:0", "--data-dir", "data"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let server = |url: &str, extra: &[&str]| {
        let mut a = vec!["server", "--database-url", url, "--bind", "127.0.0.1:0"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let with = |args: Vec<String>, expect| Case { args, expect };
    let key = ["--auth-hs256-secret-file", good_key.as_str()];

    let cases = vec![
        // Port in use, malformed address.
        case(
            &["dev", "--bind", &busy, "--data-dir", "d-busy"],
            "cannot listen on",
        ),
        case(
            &["dev", "--bind", "not-an-address", "--data-dir", "d-bad"],
            "cannot listen on not-an-address",
        ),
        case(
            &[
                "server",
                "--database-url",
                &db,
                "--bind",
                &busy,
                "--auth-hs256-secret-file",
                &good_key,
            ],
            "cannot listen on",
        ),
        // Databases: unreachable, malformed, unknown.
        with(
            server(&closed, &key),
            "cannot connect to PostgreSQL at 127.0.0.1:",
        ),
        with(
            server("not a url", &key),
            "--database-url is not a PostgreSQL URL",
        ),
        case(
            &[
                "worker",
                "--database-url",
                &closed,
                "--admin-bind",
                "127.0.0.1:0",
            ],
            "cannot connect to PostgreSQL",
        ),
        case(
            &[
                "worker",
                "--database-url",
                "postgres://[bad",
                "--admin-bind",
                "127.0.0.1:0",
            ],
            "--database-url is not a PostgreSQL URL",
        ),
        // The worker's admin listener: port in use, malformed address.
        case(
            &["worker", "--database-url", &db, "--admin-bind", &busy],
            "cannot listen on",
        ),
        case(
            &[
                "worker",
                "--database-url",
                &db,
                "--admin-bind",
                "not-an-address",
            ],
            "cannot listen on not-an-address",
        ),
        case(
            &["migrate", "--database-url", &closed],
            "Connection refused",
        ),
        case(
            &["migrate", "--database-url", "not a url"],
            "--database-url is not a PostgreSQL URL",
        ),
        case(
            &["migrate", "--database-url", &unknown_db],
            "database \"no_such_database\" does not exist",
        ),
        with(
            dev(&["--database-url", &closed]),
            "cannot connect to PostgreSQL",
        ),
        // Key files.
        with(
            server(&db, &["--auth-hs256-secret-file", &bad_key]),
            "bad.key: key is neither hex nor base64",
        ),
        with(
            server(&db, &["--auth-hs256-secret-file", "missing.key"]),
            "reading missing.key",
        ),
        with(
            server(&db, &["--auth-hs256-secret-file", &short_key]),
            "short.key",
        ),
        with(
            server(&db, &["--auth-ed25519-public-key-file", &bad_key]),
            "bad.key",
        ),
        with(server(&db, &[]), "no authentication configured"),
        case(
            &[
                "token",
                "issue",
                "--secret-file",
                &bad_key,
                "--tenant",
                "default",
                "--role",
                "admin",
            ],
            "bad.key",
        ),
        case(
            &[
                "token",
                "issue",
                "--ed25519-signing-key-file",
                "missing.key",
                "--tenant",
                "t",
                "--role",
                "admin",
            ],
            "reading missing.key",
        ),
        case(
            &[
                "token",
                "issue",
                "--secret-file",
                &good_key,
                "--tenant",
                "default",
                "--role",
                "admin",
                "--ttl",
                "0s",
            ],
            "--ttl \"0s\"",
        ),
        case(
            &[
                "token",
                "issue",
                "--secret-file",
                &good_key,
                "--tenant",
                "default",
                "--role",
                "admin",
                "--ttl",
                "400d",
            ],
            "365d",
        ),
        case(
            &["token", "keygen", "--hs256", "--out", "good"],
            "good.key exists",
        ),
        // Limits files.
        with(dev(&["--limits", &bad_limits]), "bad-limits.json"),
        with(dev(&["--limits", &wrong_limits]), "wrong-limits.json"),
        with(dev(&["--limits", "missing.json"]), "reading missing.json"),
        with(
            server(
                &db,
                &[
                    "--auth-hs256-secret-file",
                    &good_key,
                    "--limits",
                    &bad_limits,
                ],
            ),
            "bad-limits.json",
        ),
        case(
            &[
                "worker",
                "--database-url",
                &db,
                "--admin-bind",
                "127.0.0.1:0",
                "--limits",
                &bad_limits,
            ],
            "bad-limits.json",
        ),
        // Gateway protection flags.
        with(dev(&["--max-connections", "0"]), "--max-connections"),
        with(dev(&["--body-timeout-ms", "0"]), "--body-timeout-ms"),
        with(
            server(
                &db,
                &[
                    "--auth-hs256-secret-file",
                    &good_key,
                    "--body-timeout-ms",
                    "999999",
                ],
            ),
            "--body-timeout-ms",
        ),
        // Data dirs.
        case(
            &["dev", "--bind", "127.0.0.1:0", "--data-dir", "a-file/sub"],
            "--data-dir a-file/sub",
        ),
        case(
            &["dev", "--bind", "127.0.0.1:0", "--data-dir", "a-file"],
            "--data-dir a-file",
        ),
        // Client commands.
        case(
            &["job", "list", "--server", "ftp://example"],
            "--server \"ftp://example\"",
        ),
        case(
            &[
                "job",
                "list",
                "--server",
                &format!("127.0.0.1:{}", free_port()),
            ],
            "cannot reach server http://127.0.0.1:",
        ),
        // Arguments.
        case(&["server"], "--database-url"),
        case(&["job", "list", "--state", "done"], "invalid value 'done'"),
    ];
    let failures: Vec<String> = cases.iter().filter_map(|c| check(cwd, c).err()).collect();
    drop(held);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn a_data_dir_held_by_another_dev_node_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = Command::new(env!("CARGO_BIN_EXE_aetheris"))
        .args([
            "dev",
            "--insecure-no-auth",
            "--bind",
            "127.0.0.1:0",
            "--data-dir",
            "held",
        ])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the first dev node");
    // It holds the store once its file exists and it listens; wait for the file.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("held/aetheris.redb").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let result = check(
        dir.path(),
        &case(
            &[
                "dev",
                "--insecure-no-auth",
                "--bind",
                "127.0.0.1:0",
                "--data-dir",
                "held",
            ],
            "--data-dir held",
        ),
    );
    let _ = first.kill();
    let _ = first.wait();
    result.unwrap();
}
