//! aetheris.toml as an operator uses it (docs/configuration.md): a real `aetheris server`
//! and `aetheris worker` on a throwaway PostgreSQL database, configured only by a config
//! file, then with an `AETHERIS_*` variable over it, then with a flag over both — each
//! time the address the server listens on and the worker's admin port are the ones the
//! winning layer gave (and answer `/healthz`). `--print-config` names each value's source.

use crate::readme::free_port;
use crate::support::rt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child `aetheris` process writing to a log file; killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(dir: &Path, name: &str, args: &[String], env: &[(&str, String)]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_aetheris"));
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for (k, _) in std::env::vars() {
            if k.starts_with("AETHERIS_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        Proc {
            child: cmd.spawn().expect("spawn the aetheris binary"),
            log,
        }
    }

    /// The rest of the first log line containing `marker` (bounded wait).
    fn line_after(&mut self, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(rest) = text
                .lines()
                .find_map(|l| l.find(marker).map(|i| l[i + marker.len()..].to_string()))
            {
                return rest;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("exited ({status}) before {marker:?}:\n{text}");
            }
            assert!(Instant::now() < deadline, "no {marker:?} in 60 s:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status line of `GET /healthz` on `addr`.
fn healthz(addr: &str) -> String {
    let mut conn = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    answer.lines().next().unwrap_or_default().to_string()
}

/// Starts a server and a worker, each with `--config` and its own extra flags, on top of
/// `env`; returns the address the server listens on and the worker's admin address, each
/// checked to answer.
fn start_both(
    dir: &Path,
    layer: &str,
    (server_flags, worker_flags): (&[&str], &[&str]),
    env: &[(&str, String)],
) -> (String, String) {
    let with = |cmd: &'static str, flags: &[&str]| -> Vec<String> {
        [cmd, "--config", "conf/aetheris.toml"]
            .iter()
            .chain(flags)
            .map(|a| a.to_string())
            .collect()
    };
    let server_args = with("server", server_flags);
    let worker_args = with("worker", worker_flags);
    let mut server = Proc::spawn(dir, &format!("server-{layer}"), &server_args, env);
    let mut worker = Proc::spawn(dir, &format!("worker-{layer}"), &worker_args, env);
    let bind = server.line_after("aetheris server: listening on http://");
    let admin = worker.line_after(": admin on http://");
    let admin = admin
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    for addr in [&bind, &admin] {
        assert_eq!(healthz(addr), "HTTP/1.1 200 OK", "{layer}: {addr}");
    }
    (bind, admin)
}

#[test]
fn pg_server_and_worker_take_file_then_variable_then_flag() {
    let url = rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url());
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let [file_bind, file_admin, env_bind, env_admin, flag_bind, flag_admin] =
        [(); 6].map(|_| format!("127.0.0.1:{}", free_port()));
    // Only the file: database, listen addresses, auth key (relative to the file), limits.
    std::fs::write(
        conf.join("auth.key"),
        "hex:0101010101010101010101010101010101010101010101010101010101010101\n",
    )
    .unwrap();
    std::fs::write(
        conf.join("aetheris.toml"),
        format!(
            "[database]\nurl = \"{url}\"\npool_size = 4\n\n[gateway]\nbind = \"{file_bind}\"\n\n\
             [auth]\nhs256_secret_files = [\"auth.key\"]\n\n[worker]\nadmin_bind = \
             \"{file_admin}\"\nmax_jobs = 5\n\n[limits.defaults]\nadmissions_per_s = 100\n"
        ),
    )
    .unwrap();

    let (bind, admin) = start_both(dir.path(), "file", (&[], &[]), &[]);
    assert_eq!((bind, admin), (file_bind, file_admin));

    let env = [
        ("AETHERIS_BIND", env_bind.clone()),
        ("AETHERIS_ADMIN_BIND", env_admin.clone()),
    ];
    let (bind, admin) = start_both(dir.path(), "env", (&[], &[]), &env);
    assert_eq!((bind, admin), (env_bind, env_admin.clone()));

    let flags: (&[&str], &[&str]) = (&["--bind", &flag_bind], &["--admin-bind", &flag_admin]);
    let (bind, admin) = start_both(dir.path(), "flag", flags, &env);
    assert_eq!((bind, admin), (flag_bind, flag_admin));

    // What the worker would use, and why.
    let out = Command::new(env!("CARGO_BIN_EXE_aetheris"))
        .args([
            "worker",
            "--config",
            "conf/aetheris.toml",
            "--max-jobs",
            "7",
            "--print-config",
        ])
        .current_dir(dir.path())
        .env("AETHERIS_ADMIN_BIND", &env_admin)
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    let source = |key: &str| {
        printed
            .lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .and_then(|l| l.rsplit_once("# "))
            .map(|(_, s)| s.to_string())
            .unwrap_or_else(|| panic!("no {key} in\n{printed}"))
    };
    assert_eq!(source("max_jobs"), "--max-jobs");
    assert_eq!(source("admin_bind"), "AETHERIS_ADMIN_BIND");
    assert_eq!(source("pool_size"), "conf/aetheris.toml:3");
    assert_eq!(source("lease_ttl_ms"), "default");
    assert!(printed.contains("admissions_per_s = 100"), "{printed}");
}
