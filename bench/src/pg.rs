//! PostgreSQL helpers of `aetheris bench`: one database per run, the server's CPU time,
//! the `pgbench` baseline and the W7 breakdown of the `events` table. Invariant: the bench
//! only ever writes to databases it created itself (`bench_<uuid>`).
//!
//! - Fresh state: `CREATE DATABASE bench_<uuid>` on the server of the given URL (the URL's
//!   own database is only used to issue it), `DROP DATABASE … WITH (FORCE)` after the run.
//! - Server CPU (for W1's CPU per step): when the server runs on this machine and the
//!   URL's user may read `data_directory`, the postmaster pid comes from its
//!   `postmaster.pid`; the server's CPU time is the postmaster's own and reaped children's
//!   time plus the live children's (backends, WAL writer, checkpointer, …). Otherwise the
//!   bench reports our process only and says so.
//! - pgbench: in a database of its own, a logged table `pgb(id bigserial primary key,
//!   x bigint)` and the script `\set x random(1, 1000000000)` / `INSERT INTO pgb(x) VALUES
//!   (:x);`, run with `-n -T <s>` at 1 client and at 32 clients (`-j 2`): single-row insert
//!   commits/s, the ceiling one durable commit per step could reach on this server.
//! - The step floor: in the same database, migrated to Aetheris's own schema and seeded
//!   with 1,000 running jobs, `STEP_FLOOR_SCRIPT` at 1 client (prepared statements): the
//!   rows one W1 step writes (the job row, two events with W1's payload size, a ledger row
//!   updated and one inserted) in one statement and one commit, without the fence's
//!   checks or the hashes. What a step at concurrency 1 could reach on this server and
//!   schema with no time spent outside the database.
//! - What the database did per W1 step (`Counters`, read just before and after the
//!   measured window on a connection of its own): WAL bytes (the insert position, exact
//!   and cluster-wide), write transactions (transaction ids assigned: every transaction
//!   that wrote or locked a row) and, when `pg_stat_statements` is loaded, statements
//!   executed in the run's database (its `calls`; it does not count transaction control
//!   sent as prepared statements, i.e. the `BEGIN`/`COMMIT` of a locking append).

use crate::report::PgbenchReport;
use crate::runner::{in_own_system, median, proc_cpu_ms, progress};
use std::path::{Path, PathBuf};
use tokio_postgres::NoTls;

/// The pgbench script, as the report describes it.
const PGBENCH_SCRIPT: &str = "\\set x random(1, 1000000000); INSERT INTO pgb(x) VALUES (:x) \
                              (logged table, bigserial primary key), -n";

/// The server under test.
#[derive(Clone)]
pub struct Server {
    /// The URL as given (its database is used only for CREATE/DROP DATABASE).
    pub url: String,
    pub version: String,
    /// The postmaster's pid, when the server runs here and we may see its data directory.
    pub postmaster: Option<u32>,
}

/// Where a W1 job's time went, from the store times of its events (ms, means over the
/// run's jobs): from its submission to its first `step_started` (the claim and the first
/// append), and from there to its last event (its steps).
#[derive(Clone, Copy, Debug)]
pub struct JobPhases {
    pub start_ms: f64,
    pub steps_ms: f64,
}

/// `JobPhases` of every job in the run's database.
pub async fn job_phases(url: &str) -> Result<JobPhases, String> {
    let c = connect(url).await?;
    let row = c
        .query_one(
            "WITH j AS (
                 SELECT min(recorded_at) FILTER (WHERE kind = 'job_submitted') AS submitted,
                        min(recorded_at) FILTER (WHERE kind = 'step_started') AS started,
                        max(recorded_at) AS ended
                 FROM events GROUP BY job_id)
             SELECT coalesce(avg(started - submitted), 0)::float8,
                    coalesce(avg(ended - started), 0)::float8
             FROM j WHERE started IS NOT NULL AND submitted IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| format!("W1 job phases: {}", msg(&e)))?;
    Ok(JobPhases {
        start_ms: row.get(0),
        steps_ms: row.get(1),
    })
}

/// W7 on PostgreSQL: the `events` table after a W1 run, per event.
#[derive(Clone, Debug)]
pub struct W7 {
    pub total_per_event: f64,
    pub heap_per_event: f64,
    pub index_per_event: f64,
    pub rest_per_event: f64,
    pub payload_per_event: f64,
}

/// The step floor's pgbench script (module docs). `:n` picks one of the seeded jobs.
const STEP_FLOOR_SCRIPT: &str = "\\set n random(1, 1000)
WITH j AS (
    UPDATE jobs SET last_seq = last_seq + 2, updated_at = updated_at + 1,
                    last_hash = decode(repeat('ab', 32), 'hex')
    WHERE job_id = (SELECT job_id FROM floor_jobs WHERE n = :n)
    RETURNING job_id, last_seq, updated_at
), ev AS (
    INSERT INTO events (job_id, seq, recorded_at, kind, payload, prev_hash, hash)
    SELECT j.job_id, j.last_seq - g, j.updated_at, 'step_finished', repeat('x', 136),
           decode(repeat('00', 32), 'hex'), decode(repeat('ab', 32), 'hex')
    FROM j, generate_series(0, 1) AS g
), done AS (
    UPDATE ledger SET status = 'succeeded', updated_at = j.updated_at
    FROM j WHERE ledger.job_id = j.job_id AND ledger.step = 'a'
), next AS (
    INSERT INTO ledger (job_id, step, invocation_key, attempt, effect, status, updated_at)
    SELECT j.job_id, 's' || j.last_seq, 'k', 1, 'side_effect', 'started', j.updated_at FROM j
)
SELECT 1;
";

/// The step floor's jobs: 1,000 running jobs with one ledger row each, numbered for the
/// script.
const STEP_FLOOR_SEED: &str = "
INSERT INTO jobs (job_id, tenant, status, last_seq, last_hash, created_at, updated_at, token)
    SELECT gen_random_uuid(), 'default', 'running', 2, decode(repeat('ab', 32), 'hex'), 0, 0, 1
    FROM generate_series(1, 1000);
CREATE TABLE floor_jobs AS SELECT job_id, row_number() OVER (ORDER BY job_id) AS n FROM jobs;
CREATE UNIQUE INDEX ON floor_jobs (n);
INSERT INTO ledger (job_id, step, invocation_key, attempt, effect, status, updated_at)
    SELECT job_id, 'a', 'k', 1, 'side_effect', 'started', 0 FROM jobs;
";

/// One pgbench measurement: single-row insert commits/s at 1 and at 32 clients, and the
/// step floor at 1 client.
pub struct Pgbench {
    pub binary: String,
    pub clients_1: f64,
    pub clients_32: f64,
    pub step_floor_1: f64,
}

/// pgbench `runs` times on `server` (medians), or `None` when there is no pgbench binary.
pub fn baseline(
    server: &Server,
    runs: usize,
    seconds: u64,
) -> Result<Option<PgbenchReport>, String> {
    let mut one = Vec::new();
    let mut many = Vec::new();
    let mut floor = Vec::new();
    let mut binary = String::new();
    for r in 0..runs {
        progress(&format!(
            "pgbench run {}/{runs} (1 and 32 clients, then the step floor, {seconds} s each)…",
            r + 1
        ));
        let s = server.clone();
        match in_own_system(move || async move { s.pgbench(seconds).await })? {
            Some(p) => {
                one.push(p.clients_1);
                many.push(p.clients_32);
                floor.push(p.step_floor_1);
                binary = p.binary;
            }
            None => break,
        }
    }
    if one.is_empty() {
        return Ok(None);
    }
    Ok(Some(PgbenchReport {
        binary,
        seconds,
        script: PGBENCH_SCRIPT.to_string(),
        commits_per_s_1_client: median(one),
        commits_per_s_32_clients: median(many),
        step_floor_per_s_1_client: median(floor),
    }))
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("PostgreSQL at the bench URL: {}", msg(&e)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `CHECKPOINT` on the server of `url`, so the dirty pages and WAL of what ran before (an
/// earlier phase, pgbench) are not flushed during the next measurement. Needs a superuser
/// or `pg_checkpoint`; without, the error says so (the caller decides how to report it).
pub async fn checkpoint(url: &str) -> Result<(), String> {
    let c = connect(url).await?;
    c.batch_execute("CHECKPOINT")
        .await
        .map_err(|e| format!("CHECKPOINT: {}", msg(&e)))
}

fn msg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut m = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(s) = src {
                m.push_str(&format!(": {s}"));
                src = s.source();
            }
            m
        }
    }
}

/// `url` with its database replaced by `db` (URL or key=value form).
pub fn with_dbname(url: &str, db: &str) -> String {
    for scheme in ["postgres://", "postgresql://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            let (main, query) = match rest.find('?') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, ""),
            };
            let authority = match main.find('/') {
                Some(i) => &main[..i],
                None => main,
            };
            return format!("{scheme}{authority}/{db}{query}");
        }
    }
    // key=value: a later key wins.
    format!("{url} dbname={db}")
}

impl Server {
    /// Connects once: checks the URL, reads the version, finds the postmaster if local.
    pub async fn probe(url: &str) -> Result<Server, String> {
        let c = connect(url).await?;
        let row = c
            .query_one(
                "SELECT version(), current_setting('data_directory', true)",
                &[],
            )
            .await
            .map_err(|e| format!("PostgreSQL: {}", msg(&e)))?;
        let version: String = row.get(0);
        let data_dir: Option<String> = row.get(1);
        let postmaster = data_dir.and_then(|d| {
            let pid: u32 = std::fs::read_to_string(PathBuf::from(d).join("postmaster.pid"))
                .ok()?
                .lines()
                .next()?
                .trim()
                .parse()
                .ok()?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
            comm.trim().starts_with("postgres").then_some(pid)
        });
        Ok(Server {
            url: url.to_string(),
            version: version.split(" on ").next().unwrap_or(&version).to_string(),
            postmaster,
        })
    }

    pub fn url_for(&self, db: &str) -> String {
        with_dbname(&self.url, db)
    }

    /// Creates an empty database `bench_<uuid>` and returns its name.
    pub async fn create_database(&self) -> Result<String, String> {
        let name = format!("bench_{}", uuid::Uuid::now_v7().simple());
        let c = connect(&self.url).await?;
        c.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| {
                format!(
                    "CREATE DATABASE {name}: {} — the bench needs a user with CREATEDB, \
                     it never runs in an existing database",
                    msg(&e)
                )
            })?;
        Ok(name)
    }

    pub async fn drop_database(&self, name: &str) -> Result<(), String> {
        let c = connect(&self.url).await?;
        let force = c
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
        if force.is_err() {
            // Before PostgreSQL 13: no FORCE; the run's connections are closed by now.
            c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
                .await
                .map_err(|e| format!("DROP DATABASE {name}: {}", msg(&e)))?;
        }
        Ok(())
    }

    /// pgbench at 1 and 32 clients in a database of its own; `None` if no pgbench binary.
    pub async fn pgbench(&self, seconds: u64) -> Result<Option<Pgbench>, String> {
        let Some(bin) = find_pgbench() else {
            return Ok(None);
        };
        let db = self.create_database().await?;
        let r = self.pgbench_in(&bin, &db, seconds).await;
        let d = self.drop_database(&db).await;
        let r = r?;
        d?;
        Ok(Some(Pgbench {
            binary: bin.display().to_string(),
            clients_1: r.0,
            clients_32: r.1,
            step_floor_1: r.2,
        }))
    }

    async fn pgbench_in(
        &self,
        bin: &Path,
        db: &str,
        seconds: u64,
    ) -> Result<(f64, f64, f64), String> {
        let url = self.url_for(db);
        let c = connect(&url).await?;
        c.batch_execute("CREATE TABLE pgb (id bigserial PRIMARY KEY, x bigint NOT NULL)")
            .await
            .map_err(|e| format!("pgbench table: {}", msg(&e)))?;
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let script = dir.path().join("insert.sql");
        std::fs::write(
            &script,
            "\\set x random(1, 1000000000)\nINSERT INTO pgb(x) VALUES (:x);\n",
        )
        .map_err(|e| format!("writing the pgbench script: {e}"))?;
        let one = run_pgbench(bin, &script, &url, 1, 1, seconds, &[]).await?;
        let many = run_pgbench(bin, &script, &url, 32, 2, seconds, &[]).await?;
        // The step floor, on the schema the store migrates (its own pool, closed after).
        let store = aetheris_store::PgStore::connect(&url, 1)
            .await
            .map_err(|e| format!("step floor: {e}"))?;
        store
            .migrate()
            .await
            .map_err(|e| format!("step floor migrations: {e}"))?;
        drop(store);
        c.batch_execute(STEP_FLOOR_SEED)
            .await
            .map_err(|e| format!("step floor jobs: {}", msg(&e)))?;
        // On its own: VACUUM cannot run in the implicit transaction of a batch.
        c.batch_execute("VACUUM ANALYZE")
            .await
            .map_err(|e| format!("step floor VACUUM: {}", msg(&e)))?;
        let floor_script = dir.path().join("step_floor.sql");
        std::fs::write(&floor_script, STEP_FLOOR_SCRIPT)
            .map_err(|e| format!("writing the step floor script: {e}"))?;
        let floor =
            run_pgbench(bin, &floor_script, &url, 1, 1, seconds, &["-M", "prepared"]).await?;
        Ok((one, many, floor))
    }
}

/// One pgbench measurement: its `tps = ` figure.
async fn run_pgbench(
    bin: &Path,
    script: &Path,
    url: &str,
    clients: u32,
    threads: u32,
    seconds: u64,
    extra: &[&str],
) -> Result<f64, String> {
    let out = tokio::process::Command::new(bin)
        .args(["-n", "-T", &seconds.to_string()])
        .args(extra)
        .args(["-c", &clients.to_string(), "-j", &threads.to_string()])
        .arg("-f")
        .arg(script)
        .arg(url)
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "pgbench failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_tps(&text).ok_or_else(|| format!("no `tps = ` line in pgbench output: {text}"))
}

/// The `tps = N …` figure of pgbench's output.
fn parse_tps(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
}

/// `pgbench` on `$PATH`, else the newest `/usr/lib/postgresql/<version>/bin/pgbench`.
fn find_pgbench() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(p) = std::env::split_paths(&path)
            .map(|d| d.join("pgbench"))
            .find(|p| p.is_file())
        {
            return Some(p);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let p = e.path().join("bin").join("pgbench");
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// CPU time (ms) of the whole server: the postmaster (with its reaped children) plus every
/// live child process.
pub fn server_cpu_ms(postmaster: u32) -> Option<f64> {
    let mut total = proc_cpu_ms(&postmaster.to_string(), true)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(postmaster) {
            total += proc_cpu_ms(pid, false).unwrap_or(0.0);
        }
    }
    Some(total)
}

/// What the server had done at one moment, as W1 reads it around its window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counters {
    /// The WAL insert position, in bytes.
    pub wal_bytes: f64,
    /// The last transaction id assigned (this read assigns one).
    pub xid: f64,
    /// Statements executed in this database so far (`pg_stat_statements`), if loaded.
    pub statements: Option<f64>,
}

/// Per W1 step, what the server did between two `Counters` reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerStep {
    pub wal_bytes: f64,
    pub write_transactions: f64,
    pub statements: Option<f64>,
}

impl Counters {
    /// What happened from `self` to `later`, per step: the reads' own transaction and
    /// statement (one each) are not counted.
    pub fn per_step(&self, later: &Counters, steps: f64) -> PerStep {
        let steps = steps.max(1.0);
        PerStep {
            wal_bytes: (later.wal_bytes - self.wal_bytes).max(0.0) / steps,
            write_transactions: (later.xid - self.xid - 1.0).max(0.0) / steps,
            statements: self
                .statements
                .zip(later.statements)
                .map(|(a, b)| (b - a - 1.0).max(0.0) / steps),
        }
    }
}

/// A connection that reads `Counters` (the run's database): `pg_stat_statements` is
/// created in it when the server has the library loaded, else statements are not counted.
pub struct CounterReader {
    client: tokio_postgres::Client,
    statements: bool,
}

impl CounterReader {
    pub async fn connect(url: &str) -> Result<CounterReader, String> {
        let client = connect(url).await?;
        let statements = client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .is_ok()
            && client
                .query_one("SELECT count(*) FROM pg_stat_statements", &[])
                .await
                .is_ok();
        Ok(CounterReader { client, statements })
    }

    pub async fn read(&self) -> Result<Counters, String> {
        let row = self
            .client
            .query_one(
                "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::float8, \
                 pg_current_xact_id()::text::float8",
                &[],
            )
            .await
            .map_err(|e| format!("server counters: {}", msg(&e)))?;
        let statements = if self.statements {
            let r = self
                .client
                .query_one(
                    "SELECT coalesce(sum(calls), 0)::float8 FROM pg_stat_statements \
                     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    &[],
                )
                .await
                .map_err(|e| format!("pg_stat_statements: {}", msg(&e)))?;
            Some(r.get(0))
        } else {
            None
        };
        Ok(Counters {
            wal_bytes: row.get(0),
            xid: row.get(1),
            statements,
        })
    }
}

/// The `events` table of the run's database, per event.
pub async fn w7(url: &str) -> Result<W7, String> {
    let c = connect(url).await?;
    let row = c
        .query_one(
            "SELECT pg_total_relation_size('events')::float8, pg_relation_size('events')::float8,
                    pg_indexes_size('events')::float8, count(*)::float8,
                    coalesce(avg(octet_length(payload)), 0)::float8
             FROM events",
            &[],
        )
        .await
        .map_err(|e| format!("W7 sizes: {}", msg(&e)))?;
    let (total, heap, index, n, payload): (f64, f64, f64, f64, f64) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let n = n.max(1.0);
    Ok(W7 {
        total_per_event: total / n,
        heap_per_event: heap / n,
        index_per_event: index / n,
        rest_per_event: (total - heap - index) / n,
        payload_per_event: payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_replaced_in_both_url_forms() {
        assert_eq!(
            with_dbname("postgres://u:p@h:5/db?sslmode=disable", "bench_1"),
            "postgres://u:p@h:5/bench_1?sslmode=disable"
        );
        assert_eq!(with_dbname("postgresql://u@h", "x"), "postgresql://u@h/x");
        assert_eq!(with_dbname("host=h user=u", "x"), "host=h user=u dbname=x");
    }

    #[test]
    fn counters_per_step_leave_out_their_own_reads() {
        let a = Counters {
            wal_bytes: 1_000.0,
            xid: 10.0,
            statements: Some(100.0),
        };
        let b = Counters {
            wal_bytes: 3_000.0,
            xid: 31.0,
            statements: Some(141.0),
        };
        let per = a.per_step(&b, 20.0);
        assert_eq!(per.wal_bytes, 100.0);
        assert_eq!(per.write_transactions, 1.0);
        assert_eq!(per.statements, Some(2.0));
        let none = Counters {
            statements: None,
            ..b
        };
        assert_eq!(a.per_step(&none, 20.0).statements, None);
    }

    #[test]
    fn pgbench_tps_line_is_parsed() {
        let out = "number of transactions actually processed: 10\n\
                   tps = 1234.5 (without initial connection time)\n";
        assert_eq!(parse_tps(out), Some(1234.5));
        assert_eq!(parse_tps("no figure"), None);
    }
}
