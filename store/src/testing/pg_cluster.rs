//! Test support (not used by the runtime): a throwaway PostgreSQL cluster for tests.
//!
//! Owns one cluster per test process, started on first use from the installed server
//! binaries, and gives each test its own fresh database, so tests never see each other's
//! rows and never touch a real server. Invariants: the cluster listens only on 127.0.0.1
//! (a free port), runs with `fsync` on (what G1 tests need) and `max_connections=200`, and
//! is stopped (`pg_ctl stop -m immediate`) and deleted when the test process ends, however
//! it ends.
//!
//! How it works, step by step (the exact commands):
//! 1. Find the binaries: `$AETHERIS_PG_BIN`, else the first `$PATH` entry holding `initdb`
//!    and `pg_ctl`, else the newest `/usr/lib/postgresql/<version>/bin` (where Debian's
//!    `postgresql` package puts them). Missing → panic telling to
//!    `apt-get install -y postgresql`: a test that needs PostgreSQL never skips silently.
//! 2. PostgreSQL refuses to run as root; as root every server command runs as the
//!    `postgres` user through `runuser -u postgres --` (needs that user, which the Debian
//!    package creates).
//! 3. `initdb -D /tmp/aetheris-pgtest-<pid>-<nanos> -U postgres --auth=trust -E UTF8
//!    --locale=C -N` (`-N` only skips initdb's own final fsync of the template files).
//! 4. `pg_ctl -D <dir> -l <dir>/server.log -w -t 60 -o "-c listen_addresses=127.0.0.1
//!    -c port=<free port> -c unix_socket_directories=<dir> -c max_connections=200
//!    -c fsync=on" start` (retried on another port if the port was taken meanwhile).
//! 5. A watchdog `sh` in its own process group polls `kill -0 <test pid>` once a second;
//!    when the test process is gone (normal exit, panic, Ctrl-C or SIGKILL) it runs
//!    `pg_ctl -D <dir> stop -m immediate` and `rm -rf <dir>`. Rust never runs destructors
//!    of statics, so this is what makes cleanup reliable without an `atexit` hook.
//! 6. `fresh_database_url()` runs `CREATE DATABASE t_<uuid>` and returns
//!    `postgres://postgres@127.0.0.1:<port>/t_<uuid>`.
//! 7. `private_cluster()` starts another cluster the same way (steps 1–5) for one test
//!    that needs to stop or restart PostgreSQL; it is stopped and deleted on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// A running throwaway cluster.
#[derive(Debug)]
pub struct TestCluster {
    pub port: u16,
    pub data_dir: PathBuf,
    pub bin_dir: PathBuf,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();

/// The process's cluster, started on first call (blocking: initdb takes a second or two).
pub fn cluster() -> &'static TestCluster {
    CLUSTER.get_or_init(TestCluster::start)
}

/// A new empty database on the process's cluster; returns its URL. Starts the cluster on
/// first use (off the async threads).
pub async fn fresh_database_url() -> String {
    let c = match tokio::task::spawn_blocking(cluster).await {
        Ok(c) => c,
        Err(e) => panic!("starting the test PostgreSQL cluster failed: {e}"),
    };
    c.create_database().await
}

impl TestCluster {
    /// URL of database `db` on this cluster.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates `t_<random>` and returns its URL.
    pub async fn create_database(&self) -> String {
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect to test cluster on port {}: {e}", self.port));
        let driver = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        drop(client);
        let _ = driver.await;
        self.url(&name)
    }

    fn start() -> TestCluster {
        let bin_dir = find_bin_dir();
        let as_root = is_root();
        if as_root {
            require_postgres_user();
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let data_dir =
            std::env::temp_dir().join(format!("aetheris-pgtest-{}-{nanos}", std::process::id()));
        // Arm the watchdog first, so even a failed start is cleaned up.
        spawn_watchdog(&bin_dir, &data_dir, as_root);

        let out = server_cmd(&bin_dir, "initdb", as_root)
            .arg("-D")
            .arg(&data_dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running initdb: {e}"));
        if !out.status.success() {
            panic!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        let log = data_dir.join("server.log");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let opts = server_opts(port, &data_dir);
            let out = server_cmd(&bin_dir, "pg_ctl", as_root)
                .arg("-D")
                .arg(&data_dir)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o", &opts, "start"])
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("running pg_ctl: {e}"));
            if out.status.success() {
                return TestCluster {
                    port,
                    data_dir,
                    bin_dir,
                };
            }
            last_err = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("pg_ctl start failed 5 times; last output:\n{last_err}");
    }
}

/// The `postgres` options every test cluster runs with (`pg_ctl -o`).
fn server_opts(port: u16, data_dir: &Path) -> String {
    format!(
        "-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={} \
         -c max_connections=200 -c fsync=on",
        data_dir.display()
    )
}

/// A cluster of one test's own, for tests that stop or restart PostgreSQL (which would
/// break every other test sharing the process's cluster). Started like the shared one
/// (same binaries, options and watchdog), and stopped (`pg_ctl stop -m immediate`) and
/// deleted when dropped; the watchdog still cleans up if the test process is killed.
/// Derefs to [`TestCluster`] for `url` and `create_database`.
#[derive(Debug)]
pub struct PrivateCluster {
    cluster: TestCluster,
}

/// Starts a new private cluster (blocking: initdb takes a second or two; call it off the
/// async threads, e.g. through `spawn_blocking`, or before entering a runtime).
pub fn private_cluster() -> PrivateCluster {
    PrivateCluster {
        cluster: TestCluster::start(),
    }
}

impl std::ops::Deref for PrivateCluster {
    type Target = TestCluster;
    fn deref(&self) -> &TestCluster {
        &self.cluster
    }
}

impl PrivateCluster {
    /// `pg_ctl restart -m fast`: disconnects every client (their sessions end with
    /// SQLSTATE 57P01), stops and starts the server on the same port. Blocking; panics if
    /// the server does not come back within 60 s.
    pub fn restart(&self) {
        self.pg_ctl(&["-m", "fast", "restart"], None);
    }

    /// `pg_ctl stop -m fast`: the server is down until [`PrivateCluster::start`]. Blocking.
    pub fn stop(&self) {
        self.pg_ctl(&["-m", "fast", "stop"], None);
    }

    /// Starts the server again after [`PrivateCluster::stop`], on the same port with the
    /// same options. Blocking; panics if it does not come up within 60 s.
    pub fn start(&self) {
        let opts = server_opts(self.port, &self.data_dir);
        self.pg_ctl(&["start"], Some(&opts));
    }

    fn pg_ctl(&self, action: &[&str], opts: Option<&str>) {
        let log = self.data_dir.join("server.log");
        let mut cmd = server_cmd(&self.bin_dir, "pg_ctl", is_root());
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60"]);
        if let Some(o) = opts {
            cmd.args(["-o", o]);
        }
        let out = cmd
            .args(action)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running pg_ctl {action:?}: {e}"));
        if !out.status.success() {
            panic!(
                "pg_ctl {action:?} failed ({}): {}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = server_cmd(&self.bin_dir, "pg_ctl", is_root())
            .arg("-D")
            .arg(&self.data_dir)
            .args(["stop", "-m", "immediate"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn install_hint() -> &'static str {
    "install the PostgreSQL server (Debian: `apt-get install -y postgresql`) or set \
     AETHERIS_PG_BIN to the directory holding initdb and pg_ctl"
}

fn has_server_bins(dir: &Path) -> bool {
    dir.join("initdb").is_file() && dir.join("pg_ctl").is_file()
}

fn find_bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AETHERIS_PG_BIN") {
        let d = PathBuf::from(d);
        if has_server_bins(&d) {
            return d;
        }
        panic!(
            "AETHERIS_PG_BIN={} has no initdb/pg_ctl; {}",
            d.display(),
            install_hint()
        );
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has_server_bins(d)) {
            return d;
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_server_bins(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, d)) => d,
        None => panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found; {}",
            install_hint()
        ),
    }
}

fn is_root() -> bool {
    // The effective uid, from procfs (no libc dependency).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn require_postgres_user() {
    let ok = Command::new("id")
        .args(["-u", "postgres"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        panic!(
            "tests run as root, and PostgreSQL refuses root: a `postgres` user is needed; {}",
            install_hint()
        );
    }
    let runuser = Command::new("runuser")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !runuser {
        panic!(
            "tests run as root and need `runuser` (util-linux) to start PostgreSQL as `postgres`"
        );
    }
}

/// `bin/name`, run as `postgres` through runuser when we are root.
fn server_cmd(bin_dir: &Path, name: &str, as_root: bool) -> Command {
    let exe = bin_dir.join(name);
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
}

/// Detached on purpose: it must outlive this process, and it cannot exit (and so become a
/// zombie) while this process lives; once we are gone, init reaps it.
#[allow(clippy::zombie_processes)]
fn spawn_watchdog(bin_dir: &Path, data_dir: &Path, as_root: bool) {
    use std::os::unix::process::CommandExt;
    let pg_ctl = bin_dir.join("pg_ctl");
    let stop = if as_root {
        format!(
            "runuser -u postgres -- '{}' -D '{}' stop -m immediate",
            pg_ctl.display(),
            data_dir.display()
        )
    } else {
        format!(
            "'{}' -D '{}' stop -m immediate",
            pg_ctl.display(),
            data_dir.display()
        )
    };
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         if [ -f '{dir}/postmaster.pid' ]; then {stop}; fi; rm -rf '{dir}'",
        pid = std::process::id(),
        dir = data_dir.display(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("starting the cluster watchdog: {e}"));
}
