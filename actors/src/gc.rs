//! Retention: the worker's garbage collector of finished jobs (docs/operations.md,
//! "Retention and GC"). A tenant's `retention` (in its limits: `30d`, `12h`, `45m`, `90s`,
//! or `forever`) says how long its finished jobs (succeeded, failed, cancelled) are kept;
//! tenants without one get the process's default (`[retention] default`, unset: forever).
//!
//! It runs in the worker process (and so in `dev`), not the gateway: workers are the
//! processes that do background work against the store, a gateway's latency stays
//! independent of how much there is to delete, and several workers collecting at once are
//! safe (each batch locks its jobs, skipping the ones another worker holds).
//!
//! One task per worker (`spawn`) runs a pass every `interval`: it builds the policy from
//! the rate limits' current view of every tenant (kept in step with the tenants table),
//! then, batch after batch of at most `batch_size` jobs, optionally archives each job's
//! evidence package to `<archive dir>/<tenant>/<job>.zip`, and deletes the batch in one
//! store transaction (`aetheris_store::Retention`).
//!
//! Invariants: the store deletes only finished jobs past their retention, checked again
//! inside the deleting transaction, so a running, waiting or parked job is never touched
//! and a crash mid-batch leaves every job whole; with an archive directory, a job whose
//! package could not be written durably is not deleted (it is retried next pass); the
//! transparency leaf of every deleted job stays in its tenant's log.

use crate::metrics as m;
use crate::ratelimit::{LimitsConfig, RateLimiters, TenantLimits};
use aetheris_proof::SigningKey;
use aetheris_runtime::JobId;
use aetheris_store::{DueJob, DynStore, RetentionPolicy, Scope, StoreError};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The spelling of "keep forever" in a tenant's limits.
pub const FOREVER: &str = "forever";
/// The longest retention accepted (100 years), so every cutoff stays in range.
const MAX_RETENTION_MS: u64 = 100 * 365 * 86_400_000;

/// Parses a retention: `<n>s`, `<n>m`, `<n>h`, `<n>d` (a whole number above 0) or
/// `forever`. `Ok(None)` is forever.
pub fn parse_retention(text: &str) -> Result<Option<u64>, String> {
    let bad = || {
        format!(
            "retention {:?} must be a whole number of seconds, minutes, hours or days \
             above 0 (like 90s, 45m, 12h, 30d) or \"{FOREVER}\"",
            text.chars().take(40).collect::<String>()
        )
    };
    if text == FOREVER {
        return Ok(None);
    }
    let unit_at = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(unit_at);
    let unit_ms: u64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    match n.checked_mul(unit_ms) {
        Some(ms) if ms > 0 && ms <= MAX_RETENTION_MS => Ok(Some(ms)),
        Some(0) => Err(bad()),
        _ => Err(format!("retention {text:?} is longer than 100 years")),
    }
}

/// Where and with which key finished jobs are archived before deletion.
#[derive(Clone)]
pub struct Archive {
    pub dir: PathBuf,
    pub key: Arc<SigningKey>,
    /// Named in every package's manifest (`aetheris <version>`).
    pub exporter: String,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("Archive").field("dir", &self.dir).finish()
    }
}

/// How the collector runs.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// Off: no task is started (tests and benchmarks that collect by hand).
    pub enabled: bool,
    /// Retention of tenants whose limits name none (`None`: forever).
    pub default_retention_ms: Option<u64>,
    /// Jobs deleted per store transaction.
    pub batch_size: usize,
    /// Pause between passes.
    pub interval: Duration,
    /// After a batch that took `t`, wait `pace × t` before the next (0: no pause). The
    /// store has one writer (redb) or hot rows and a WAL (PostgreSQL), so a pass deleting
    /// as fast as it can takes write time from the jobs running beside it (W10 measured
    /// W1 at 0.30× of its speed during an unpaced pass of 100,000 jobs). With the default
    /// 3, a pass uses at most a quarter of the time it runs; retention is never urgent.
    pub pace: u32,
    pub archive: Option<Archive>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            default_retention_ms: None,
            batch_size: 500,
            interval: Duration::from_secs(30),
            pace: 3,
            archive: None,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    pub deleted: u64,
    pub batches: u64,
    /// Due jobs left in place because their archive failed.
    pub not_archived: u64,
    /// Time spent in batches (archiving and deleting), without the pauses between them.
    pub busy: Duration,
}

/// The policy the limits describe: a tenant's own `retention` (limits file or tenants
/// table), else the limits' default one, else `default_ms`. A retention that does not
/// parse (only an old limits file could hold one) keeps that tenant's jobs forever.
pub fn policy_of(limits: &LimitsConfig, default_ms: Option<u64>) -> RetentionPolicy {
    let parsed = |l: &TenantLimits| l.retention.as_deref().map(parse_retention);
    let default_ms = match parsed(&limits.defaults) {
        Some(Ok(ms)) => ms,
        Some(Err(_)) => None,
        None => default_ms,
    };
    let tenants: BTreeMap<String, Option<u64>> = limits
        .tenants
        .iter()
        .filter_map(|(t, l)| Some((t.clone(), parsed(l)?.unwrap_or(None))))
        .collect();
    RetentionPolicy {
        default_ms,
        tenants,
    }
}

/// The collector task of one worker; stopped by `stop` (or when the system stops).
pub struct GcHandle(Option<tokio::task::JoinHandle<()>>);

impl GcHandle {
    /// Stops the task. A batch cut short rolls back whole (one transaction).
    pub fn stop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Starts the collector (module docs), unless `config.enabled` is off.
pub fn spawn(store: DynStore, limits: RateLimiters, config: GcConfig) -> GcHandle {
    if !config.enabled {
        return GcHandle(None);
    }
    GcHandle(Some(tokio::spawn(async move {
        loop {
            let policy = policy_of(&limits.limits(), config.default_retention_ms);
            if let Err(e) = run_pass(&store, &policy, &config).await {
                metrics::counter!(m::RETENTION_ERRORS, "stage" => "store").increment(1);
                tracing::warn!(error = %e, "retention pass failed");
            }
            tokio::time::sleep(config.interval).await;
        }
    })))
}

/// One pass: batches until nothing is due (or only jobs whose archive failed are). Keeps
/// `aetheris_retention_gc_lag_seconds` at the most overdue job's lag as it goes.
pub async fn run_pass(
    store: &DynStore,
    policy: &RetentionPolicy,
    config: &GcConfig,
) -> Result<PassReport, StoreError> {
    let mut report = PassReport::default();
    if policy.keeps_everything() {
        metrics::gauge!(m::RETENTION_GC_LAG).set(0.0);
        return Ok(report);
    }
    let batch_size = config.batch_size.max(1);
    loop {
        let due = store.due_jobs(policy, batch_size).await?;
        let lag_s = due.first().map_or(0.0, |d| d.overdue_ms as f64 / 1000.0);
        metrics::gauge!(m::RETENTION_GC_LAG).set(lag_s);
        if due.is_empty() {
            return Ok(report);
        }
        let started = Instant::now();
        let ids = match &config.archive {
            Some(archive) => archive_all(store, archive, &due).await,
            None => due.iter().map(|d| d.job_id).collect(),
        };
        report.not_archived += (due.len() - ids.len()) as u64;
        let deleted = store.delete_jobs(policy, &ids).await?;
        let took = started.elapsed();
        metrics::histogram!(m::RETENTION_BATCH_DURATION).record(took.as_secs_f64());
        metrics::counter!(m::RETENTION_DELETED).increment(deleted.len() as u64);
        report.deleted += deleted.len() as u64;
        report.batches += 1;
        report.busy += took;
        // A short batch was the last one; one where nothing could go (every archive
        // failed, or another worker took them all) ends the pass rather than spin.
        if due.len() < batch_size || deleted.is_empty() {
            let rest = store.due_jobs(policy, 1).await?;
            let lag_s = rest.first().map_or(0.0, |d| d.overdue_ms as f64 / 1000.0);
            metrics::gauge!(m::RETENTION_GC_LAG).set(lag_s);
            return Ok(report);
        }
        if config.pace > 0 {
            tokio::time::sleep(took * config.pace).await;
        }
    }
}

/// The jobs of `due` whose package is now durably in the archive.
async fn archive_all(store: &DynStore, archive: &Archive, due: &[DueJob]) -> Vec<JobId> {
    let mut archived = Vec::with_capacity(due.len());
    for d in due {
        match archive_one(store, archive, d).await {
            Ok(()) => archived.push(d.job_id),
            Err(e) => {
                metrics::counter!(m::RETENTION_ERRORS, "stage" => "archive").increment(1);
                tracing::warn!(job = %d.job_id, error = %e, "archiving a job failed; it is kept");
            }
        }
    }
    archived
}

/// Writes `<dir>/<tenant>/<job>.zip` through a temporary file, synced, then renamed, so a
/// package in the archive is always whole.
async fn archive_one(store: &DynStore, archive: &Archive, due: &DueJob) -> Result<(), String> {
    let package = aetheris_store::evidence::export_job(
        &**store,
        Scope::System,
        due.job_id,
        &[],
        &archive.exporter,
        archive.key.clone(),
    )
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let dir = archive.dir.join(&due.tenant);
    let path = dir.join(format!("{}.zip", due.job_id));
    tokio::task::spawn_blocking(move || write_durably(&dir, &path, &package))
        .await
        .map_err(|e| e.to_string())?
}

fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(|e| fail("creating the directory of", e))?;
    let tmp = path.with_extension("zip.tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| fail("creating", e))?;
    f.write_all(bytes).map_err(|e| fail("writing", e))?;
    f.sync_all().map_err(|e| fail("syncing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| fail("renaming", e))?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("syncing the directory of", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retentions_parse_and_bad_ones_are_refused() {
        assert_eq!(parse_retention("30d"), Ok(Some(30 * 86_400_000)));
        assert_eq!(parse_retention("12h"), Ok(Some(12 * 3_600_000)));
        assert_eq!(parse_retention("45m"), Ok(Some(45 * 60_000)));
        assert_eq!(parse_retention("1s"), Ok(Some(1_000)));
        assert_eq!(parse_retention("forever"), Ok(None));
        for bad in [
            "",
            "d",
            "0d",
            "-1d",
            "1.5h",
            "1 h",
            "12",
            "12w",
            "forever!",
            "+3d",
            "99999999999d",
        ] {
            assert!(parse_retention(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_policy_lays_tenants_over_the_limits_default_over_the_config_default() {
        let limits = |v: serde_json::Value| LimitsConfig::parse(&v.to_string()).unwrap();
        let p = policy_of(
            &limits(serde_json::json!({"tenants": {
                "short": {"retention": "1h"},
                "keep": {"retention": "forever"},
                "other": {"max_running_jobs": 3}
            }})),
            Some(86_400_000),
        );
        assert_eq!(p.keep_ms("short"), Some(3_600_000));
        assert_eq!(p.keep_ms("keep"), None);
        assert_eq!(p.keep_ms("other"), Some(86_400_000));
        assert_eq!(p.keep_ms("unknown"), Some(86_400_000));
        let p = policy_of(
            &limits(serde_json::json!({"defaults": {"retention": "2d"}})),
            Some(1_000),
        );
        assert_eq!(p.keep_ms("any"), Some(2 * 86_400_000));
        assert!(policy_of(&LimitsConfig::default(), None).keeps_everything());
    }

    use aetheris_runtime::EventBody;
    use aetheris_store::{Append, NewJob, RedbStore};

    /// A store with `n` finished jobs of tenant `acme` (and one still running).
    async fn store_with_finished(dir: &Path, n: usize) -> (DynStore, Vec<JobId>, JobId) {
        let store: DynStore = Arc::new(RedbStore::open(&dir.join("a.redb")).unwrap());
        let plan: aetheris_runtime::Plan =
            serde_json::from_value(serde_json::json!({"steps": [{"id": "a", "tool": "echo"}]}))
                .unwrap();
        for _ in 0..=n {
            let job = NewJob {
                tenant: "acme".into(),
                idempotency_key: None,
                plan: plan.clone(),
                input: serde_json::json!({}),
            };
            store.submit(job, None).await.unwrap();
        }
        let leases = store.claim("w", 60_000, 100).await.unwrap();
        let mut finished = Vec::new();
        for l in &leases[..n] {
            let finish = Append {
                job_id: l.job_id,
                token: l.token,
                expected_last_seq: 1,
                events: vec![EventBody::JobSucceeded {
                    output: serde_json::json!(1),
                }],
            };
            store.append(finish).await.unwrap();
            finished.push(l.job_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        (store, finished, leases[n].job_id)
    }

    fn acme_after_1ms() -> RetentionPolicy {
        RetentionPolicy {
            default_ms: None,
            tenants: BTreeMap::from([("acme".to_string(), Some(1))]),
        }
    }

    fn archiving_to(dir: PathBuf, key: &Arc<SigningKey>) -> GcConfig {
        GcConfig {
            enabled: false,
            batch_size: 2,
            archive: Some(Archive {
                dir,
                key: key.clone(),
                exporter: "aetheris test".into(),
            }),
            ..GcConfig::default()
        }
    }

    /// A pass deletes every due job in batches, each archived first as a package that
    /// verifies offline; the running job stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_archives_then_deletes_in_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (store, finished, running) = store_with_finished(dir.path(), 5).await;
        let key = Arc::new(SigningKey::from_seed([3; 32]).unwrap());
        let archive = dir.path().join("archive");
        let report = run_pass(
            &store,
            &acme_after_1ms(),
            &archiving_to(archive.clone(), &key),
        )
        .await
        .unwrap();
        assert_eq!(report.deleted, 5);
        assert_eq!(report.batches, 3, "5 jobs in batches of 2");
        assert_eq!(report.not_archived, 0);
        for id in &finished {
            let zip = std::fs::read(archive.join("acme").join(format!("{id}.zip"))).unwrap();
            aetheris_proof::verify(&zip, &[key.public_key()]).unwrap();
            assert!(store.get_job(Scope::System, *id).await.unwrap().is_none());
        }
        assert!(store
            .get_job(Scope::System, running)
            .await
            .unwrap()
            .is_some());
    }

    /// A job whose package cannot be written is not deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_whose_archive_fails_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, finished, _) = store_with_finished(dir.path(), 2).await;
        let key = Arc::new(SigningKey::from_seed([3; 32]).unwrap());
        // The archive "directory" is a file: nothing can be written under it.
        let blocked = dir.path().join("not-a-dir");
        std::fs::write(&blocked, b"x").unwrap();
        let report = run_pass(&store, &acme_after_1ms(), &archiving_to(blocked, &key))
            .await
            .unwrap();
        assert_eq!(report.deleted, 0);
        assert_eq!(report.not_archived, 2);
        for id in &finished {
            assert!(store.get_job(Scope::System, *id).await.unwrap().is_some());
        }
    }
}
