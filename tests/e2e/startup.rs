//! Start-up failures of every command, as a user meets them: each case runs the real
//! binary as a process and requires a non-zero exit, exactly one line on stderr starting
//! with `error:` that names the problem, and no panic (`RUST_BACKTRACE=1` is set, so a
//! panic could not hide behind one line). Cases: `dev` and `server` with their port in
//! use or a malformed address, and `worker` with its admin port so; `server`, `worker` and `migrate` with an unreachable,
//! malformed or unknown database; bad, missing and too-short key files; a bad or missing
//! limits file; a `--data-dir` that cannot be created or is held by another `dev`; bad
//! `token issue` lifetimes; client commands with a malformed or unreachable server; a
//! missing required argument; and settings (docs/configuration.md): an unknown key or
//! table, a value of the wrong kind, bad TOML, bad inline limits, a missing config file,
//! and bad `AETHERIS_*` variables and flags — each named with where it came from.

use crate::readme::free_port;
use crate::support::rt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One failure: the arguments, the environment (on top of one without `AETHERIS_*`) and
/// a text the error line must contain.
struct Case {
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    expect: String,
}

fn case<S: AsRef<str>>(args: &[S], expect: &str) -> Case {
    Case {
        args: args.iter().map(|a| a.as_ref().to_string()).collect(),
        env: Vec::new(),
        expect: expect.to_string(),
    }
}

/// A case whose environment sets `var`.
fn case_env<S: AsRef<str>>(args: &[S], var: &'static str, value: &str, expect: &str) -> Case {
    Case {
        env: vec![(var, value.to_string())],
        ..case(args, expect)
    }
}

/// Runs the binary in `cwd`; kills it if it has not exited after 60 s (a case that
/// starts instead of failing).
fn run(cwd: &Path, args: &[String], env: &[(&str, String)]) -> (Option<i32>, String) {
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
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
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
    let (code, stderr) = run(cwd, &c.args, &c.env);
    let vars: Vec<String> = c.env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    let shown = format!("{}aetheris {}", vars.concat(), c.args.join(" "));
    if code.is_none_or(|c| c == 0) {
        return Err(format!("{shown}: exit {code:?}, stderr {stderr:?}"));
    }
    let lines: Vec<&str> = stderr.lines().collect();
    if lines.len() != 1 || !lines[0].starts_with("error: ") || stderr.contains("panicked") {
        return Err(format!("{shown}: stderr is not one error line: {stderr:?}"));
    }
    if !lines[0].contains(&c.expect) {
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
    let with = |args: Vec<String>, expect: &str| Case {
        args,
        env: Vec::new(),
        expect: expect.to_string(),
    };
    let key = ["--auth-hs256-secret-file", good_key.as_str()];

    let cases = vec![
        // Port in use, malformed address.
        case(
            &["dev", "--bind", &busy, "--data-dir", "d-busy"],
            "cannot listen on",
        ),
        case(
            &["dev", "--bind", "not-an-address", "--data-dir", "d-bad"],
            "--bind: expected HOST:PORT, got \"not-an-address\"",
        ),
        case(
            &["dev", "--bind", "256.0.0.1:7420", "--data-dir", "d-bad"],
            "cannot listen on 256.0.0.1:7420",
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
            "--database-url: not a PostgreSQL URL",
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
            "--database-url: not a PostgreSQL URL",
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
            "--admin-bind: expected HOST:PORT, got \"not-an-address\"",
        ),
        case(
            &["migrate", "--database-url", &closed],
            "Connection refused",
        ),
        case(
            &["migrate", "--database-url", "not a url"],
            "--database-url: not a PostgreSQL URL",
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
        case(&["server"], "database.url is required: give --database-url"),
        case(&["job", "list", "--state", "done"], "invalid value 'done'"),
    ];
    let failures: Vec<String> = cases
        .iter()
        .chain(&config_cases(cwd, &db))
        .filter_map(|c| check(cwd, c).err())
        .collect();
    drop(held);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Settings that stop a start (docs/configuration.md), one per line: a config file (`FILE:
/// LINE: [table] key: …`), a variable (`AETHERIS_…: …`) or a flag (`--…: …`). Files are
/// written into `cwd`; `db` is a reachable database, so nothing but the setting is wrong.
fn config_cases(cwd: &Path, db: &str) -> Vec<Case> {
    let file = |name: &str, text: &str| {
        std::fs::write(cwd.join(name), text).unwrap();
        name.to_string()
    };
    let fast = file("fast.toml", "[worker]\nlease_ttl_ms = \"fast\"\n");
    let typo = file("typo.toml", "[gateway]\nbnd = \"127.0.0.1:0\"\n");
    let table = file("table.toml", "[workers]\nmax_jobs = 1\n");
    let top = file("top.toml", "admin_bind = \"127.0.0.1:0\"\n");
    let broken = file("broken.toml", "[worker\n");
    let limits = file("limits.toml", "[limits.defaults]\nadmissions_per_s = -1\n");
    let both = file("both.toml", "[limits]\nfile = \"l.json\"\nshare = 1.0\n");
    let key_files = file("keys.toml", "[auth]\nhs256_secret_files = \"nope.key\"\n");
    let url = file(
        "url.toml",
        "[database]\nurl = \"postgres://ada:s3cret@[x\"\n",
    );
    let ttl = file("ttl.toml", "[worker]\nlease_ttl_ms = 1000\n");
    let worker = |config: &str| {
        let args = ["worker", "--config", config, "--database-url", db];
        let mut args: Vec<String> = args.map(String::from).to_vec();
        args.extend(["--admin-bind".into(), "127.0.0.1:0".into()]);
        args
    };
    let dev = |config: &str| ["dev", "--config", config, "--bind", "127.0.0.1:0"].map(String::from);
    let at = |name: &str, rest: &str| format!("{name}:{rest}");
    vec![
        case(
            &worker(&fast),
            &at(
                &fast,
                "2: [worker] lease_ttl_ms: expected a whole number from 100 to 86400000, got \"fast\"",
            ),
        ),
        case(
            &["server", "--config", &typo, "--database-url", db],
            &at(&typo, "2: [gateway] bnd: unknown key; [gateway] has bind,"),
        ),
        // Unknown keys fail a command that reads nothing of their table.
        case(
            &["migrate", "--config", &table, "--database-url", db],
            &at(&table, "1: unknown table [workers]"),
        ),
        case(
            &dev(&top),
            &at(&top, "1: admin_bind: unknown key here; did you mean [worker] admin_bind?"),
        ),
        case(&dev(&broken), &at(&broken, "1:8: not valid TOML")),
        case(
            &dev(&limits),
            &at(&limits, "1: [limits] defaults: every limit must be a positive number"),
        ),
        case(&dev(&both), "[limits] has both `file` and inline limits"),
        // Key files named by the file are read from its directory, before the database.
        case(
            &["server", "--config", &key_files, "--database-url", db],
            "reading nope.key",
        ),
        case(
            &["migrate", "--config", &url],
            &at(&url, "2: [database] url: not a PostgreSQL URL"),
        ),
        case(&dev("missing.toml"), "--config missing.toml: cannot read it"),
        case_env(
            &["dev", "--bind", "127.0.0.1:0"],
            "AETHERIS_CONFIG",
            "gone.toml",
            "AETHERIS_CONFIG gone.toml: cannot read it",
        ),
        case_env(
            &worker(&ttl),
            "AETHERIS_MAX_JOBS",
            "lots",
            "AETHERIS_MAX_JOBS: expected a whole number from 1 to 1000000, got \"lots\"",
        ),
        case_env(
            &worker(&ttl),
            "AETHERIS_HEARTBEAT_MS",
            "1000",
            &format!(
                "[worker] heartbeat_ms 1000 (AETHERIS_HEARTBEAT_MS) must be below [worker] \
                 lease_ttl_ms 1000 ({ttl}:2)"
            ),
        ),
        case_env(
            &["dev", "--bind", "127.0.0.1:0"],
            "AETHERIS_NO_MIGRATE",
            "maybe",
            "AETHERIS_NO_MIGRATE: expected true or false, got \"maybe\"",
        ),
        case_env(
            &["dev", "--bind", "127.0.0.1:0"],
            "AETHERIS_LOG",
            "aetheris=loud",
            "AETHERIS_LOG: not a log filter",
        ),
        // A flag beats the variable it names, and a bad flag is a usage error.
        case_env(
            &["worker", "--max-jobs", "0", "--database-url", db],
            "AETHERIS_MAX_JOBS",
            "8",
            "--max-jobs: expected a whole number from 1 to 1000000, got 0 (see `aetheris \
             worker --help`)",
        ),
        case(
            &["server", "--body-timeout-ms", "soon"],
            "--body-timeout-ms: expected a whole number from 1 to 300000, got \"soon\"",
        ),
    ]
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
