//! The typed report of `aetheris bench`: one `Serialize` struct per workload, with named
//! fields, rendered as the human table (`Display`) and as `--json` (serde).
//!
//! Invariant: the table and the JSON are two renderings of the same values. Workloads
//! compute every figure; rendering only formats (no figure is derived, looked up by a
//! string key or defaulted here). A section a run did not measure is `None`: absent from
//! the JSON and from the table.

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::{self, Display, Formatter};

/// Everything one `aetheris bench` measured.
#[derive(Serialize, Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Repetitions; the figures are medians over them (unless a section says otherwise).
    pub runs: usize,
    /// `embedded (redb)` or `postgresql`.
    pub store: String,
    /// The PostgreSQL server's version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// How each run got a fresh, empty store.
    pub fresh_state: String,
    /// PostgreSQL: whether the server's processes could be observed for W1's CPU figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_observed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgbench: Option<PgbenchReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w1: Option<Vec<W1Row>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w7: Option<W7Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w3: Option<W3Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w5: Option<W5Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w6: Option<W6Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w4: Option<W4Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w8: Option<W8Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w9: Option<crate::w9::W9Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub w10: Option<W10Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostile: Option<HostileReport>,
}

/// W10: retention of one-step jobs (w10.rs).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W10Report {
    pub jobs: u64,
    pub batch_size: u64,
    pub size_before_bytes: u64,
    /// After the first fill (every job finished, none deleted).
    pub peak_bytes: u64,
    /// After the first retention pass.
    pub after_gc_bytes: u64,
    /// After a second fill of as many jobs.
    pub second_peak_bytes: u64,
    /// After the second retention pass.
    pub after_second_gc_bytes: u64,
    pub fill_jobs_per_s: f64,
    /// Deleted by the first pass (which ran while W1 did).
    pub deleted_while_w1: u64,
    /// Time in batches of the second pass (nothing else running) per job deleted; the
    /// collector's pauses between batches (`GcConfig::pace`) are not counted.
    pub gc_ms_per_job_alone: f64,
    /// Time in batches of the first pass (under W1, then alone) per job deleted.
    pub gc_ms_per_job_under_w1: f64,
    /// Wall time of the second pass, pauses included.
    pub gc_pass_s_alone: f64,
    /// Wall time of the first pass, pauses included.
    pub gc_pass_s_under_w1: f64,
    pub deleted_alone: u64,
    pub w1_jobs: u64,
    pub w1_steps_per_s_without_gc: f64,
    pub w1_steps_per_s_with_gc: f64,
}

impl Display for W10Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        writeln!(
            f,
            "\nW10: retention of {} one-step jobs per fill (batches of {}; {:.0} jobs/s filled)",
            self.jobs, self.batch_size, self.fill_jobs_per_s
        )?;
        writeln!(
            f,
            "  store: {:.1} MiB before, {:.1} MiB at peak, {:.1} MiB after GC; second fill \
             {:.1} MiB, after its GC {:.1} MiB",
            mib(self.size_before_bytes),
            mib(self.peak_bytes),
            mib(self.after_gc_bytes),
            mib(self.second_peak_bytes),
            mib(self.after_second_gc_bytes)
        )?;
        writeln!(
            f,
            "  GC cost: {:.3} ms/job alone ({} jobs, pass {:.1} s with its pauses), {:.3} ms/job \
             while W1 ran ({} jobs, pass {:.1} s)",
            self.gc_ms_per_job_alone,
            self.deleted_alone,
            self.gc_pass_s_alone,
            self.gc_ms_per_job_under_w1,
            self.deleted_while_w1,
            self.gc_pass_s_under_w1
        )?;
        let ratio = self.w1_steps_per_s_with_gc / self.w1_steps_per_s_without_gc.max(1e-9);
        writeln!(
            f,
            "  W1 ({} jobs, concurrency 16): {:.0} steps/s without GC, {:.0} with GC ({:.2}×)",
            self.w1_jobs, self.w1_steps_per_s_without_gc, self.w1_steps_per_s_with_gc, ratio
        )
    }
}

/// `pgbench` single-row insert commits/s on the same server in the same run (the baseline
/// W1's ratios are taken against).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct PgbenchReport {
    pub binary: String,
    pub seconds: u64,
    pub script: String,
    pub commits_per_s_1_client: f64,
    pub commits_per_s_32_clients: f64,
    /// The rows of one W1 step in one statement and commit, on Aetheris's schema, at 1
    /// client (see `pg::STEP_FLOOR_SCRIPT`): what concurrency 1 could reach on this server
    /// with no time spent outside the database.
    pub step_floor_per_s_1_client: f64,
}

/// W1 at one concurrency: jobs × 10 sequential no-op `side_effect` steps.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W1Row {
    pub concurrency: usize,
    pub jobs: usize,
    pub steps_per_s: f64,
    pub job_p50_ms: f64,
    pub job_p99_ms: f64,
    pub step_p50_ms: f64,
    pub step_p99_ms: f64,
    /// All processes: this one plus the PostgreSQL server's when observed.
    pub cpu_ms_per_step: f64,
    pub cpu_ms_per_step_aetheris: f64,
    /// `None` when the server's processes cannot be observed (or on the embedded store).
    pub cpu_ms_per_step_server: Option<f64>,
    /// Mean fenced append (queue + commit) as the job actors saw it.
    pub append_mean_ms: f64,
    /// PostgreSQL: appends per append transaction (group commit across jobs).
    pub appends_per_commit: Option<f64>,
    /// PostgreSQL: the share of append transactions that were one statement alone (every
    /// job known to the writer: no lock round trip, no BEGIN/COMMIT).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub one_statement_share: Option<f64>,
    /// PostgreSQL: statements per step (`pg_stat_statements`, when loaded; without the
    /// BEGIN/COMMIT of locking appends, which it does not count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub statements_per_step: Option<f64>,
    /// PostgreSQL: transactions that wrote (or locked) rows, per step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_transactions_per_step: Option<f64>,
    /// PostgreSQL: WAL bytes per step (the whole server's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal_bytes_per_step: Option<f64>,
    /// Mean tool call as the job actors saw it (actor messaging included).
    pub tool_call_mean_ms: f64,
    /// PostgreSQL: the share of jobs handed off to the worker at submission (leased in
    /// the submission's commit, so started with no claim).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub handed_off_share: Option<f64>,
    /// PostgreSQL: mean time from a job's submission to its first `step_started` (its
    /// hand-off or claim, and its first append), by the store times of its events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_start_ms: Option<f64>,
    /// PostgreSQL: mean time from a job's first `step_started` to its last event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_steps_ms: Option<f64>,
    /// Whole store growth per event.
    pub bytes_per_event: f64,
    pub payload_bytes_per_event: f64,
    /// Which pgbench figure the ratio is against (`1 client` or `32 clients`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pgbench_baseline: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_pgbench: Option<f64>,
    /// At concurrency 1 on PostgreSQL: steps/s against the pgbench step floor (the most one
    /// commit per step allows on that server; see `PgbenchReport`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_step_floor: Option<f64>,
}

/// W7: storage per event, from the largest W1 run.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W7Report {
    pub from_w1_jobs: usize,
    pub events: usize,
    pub store_bytes_per_event: f64,
    pub payload_bytes_per_event: f64,
    /// What the store figure counts.
    pub store_counts: String,
    /// Embedded store: whole store bytes minus payload, per event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overhead_bytes_per_event: Option<f64>,
    /// PostgreSQL: the `events` table broken down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_table: Option<EventsTable>,
}

/// W7 on PostgreSQL: the `events` table with its indexes and TOAST, per event.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct EventsTable {
    pub counts: String,
    pub bytes_per_event: f64,
    pub heap_bytes_per_event: f64,
    pub index_bytes_per_event: f64,
    pub toast_and_maps_bytes_per_event: f64,
    pub payload_bytes_per_event: f64,
    pub overhead_bytes_per_event: f64,
}

/// W3: crash-to-resume (`killed`) and drain handoff (`drained`).
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W3Report {
    pub jobs: usize,
    pub steps_per_job: usize,
    pub step_ms: u64,
    pub lease_ttl_ms: u64,
    pub heartbeat_ms: u64,
    pub claim_poll_ms: u64,
    /// Which processes A and B are.
    pub workers: String,
    pub killed: W3Handoff,
    pub drained: W3Handoff,
}

/// One W3 handoff: signal to the first and to the last job resuming elsewhere.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W3Handoff {
    pub first_resume_ms: f64,
    pub last_resume_ms: f64,
    /// Signal to worker A's exit (a drain: how long it took).
    pub a_exit_ms: f64,
    pub target_ms: f64,
    pub runs_last_resume_ms: Vec<f64>,
    /// Embedded store: signal to B reporting ready (B starts after A has exited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub b_ready_ms: Option<f64>,
}

/// W4: reload of a long job, with and without a snapshot.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W4Report {
    pub events: u64,
    pub reload_without_snapshot_ms: f64,
    pub reload_with_snapshot_ms: f64,
    pub append_at_event_10_ms: f64,
    pub append_at_last_event_ms: f64,
    /// A real worker's step (start, echo call, result; store clock) early in a fresh job.
    pub step_at_event_10_ms: f64,
    /// The same step once the job's log holds `events` events.
    pub step_at_last_event_ms: f64,
}

/// W8: export and offline verification of one long job's evidence package.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W8Report {
    pub events: u64,
    pub export_ms: f64,
    pub verify_ms: f64,
    pub total_ms: f64,
    pub package_bytes: u64,
    pub package_bytes_per_event: f64,
}

/// W5: jobs parked on a signal.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W5Report {
    pub parked_jobs: usize,
    pub rss_mib: f64,
    pub rss_delta_mib: f64,
    pub idle_cpu_percent: f64,
    pub signal_to_next_step_p50_ms: f64,
    pub signal_to_next_step_p99_ms: f64,
    pub timer_lateness_p50_ms: f64,
    pub timer_lateness_p99_ms: f64,
}

/// W6: tenant B's queue wait while tenant A floods, against B alone.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W6Report {
    pub b_jobs: usize,
    pub runs: usize,
    pub a_jobs: usize,
    pub ratio_a_to_b: usize,
    pub b_interval_ms: u64,
    pub worker_max_jobs: usize,
    pub flood_tenant: String,
    pub trickle_tenant: String,
    pub flood_submitters: usize,
    /// A's jobs whose events are read back to estimate A's wait and backlog.
    pub a_sample: usize,
    pub plan: String,
    pub queue_wait: String,
    pub unloaded: W6Phase,
    pub flood: W6Phase,
    pub b_p99_flood_over_unloaded: f64,
    pub ratio_denominator_floor_ms: f64,
    pub target_ratio: f64,
    pub meets_target: bool,
}

/// One W6 phase: B's waits over all runs pooled; medians over runs otherwise.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W6Phase {
    pub b_samples: usize,
    pub b_queue_wait_p50_ms: f64,
    pub b_queue_wait_p99_ms: f64,
    pub b_queue_wait_max_ms: f64,
    pub append_mean_ms: f64,
    pub b_queue_wait_p99_ms_per_run: Vec<f64>,
    /// The flood phase only.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub flood: Option<W6Flood>,
}

/// What A did in the flood phase.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct W6Flood {
    /// First submission to last completion.
    pub a_jobs_per_s: Option<f64>,
    pub a_submitted_per_s: Option<f64>,
    pub a_queue_wait_p50_ms: f64,
    pub a_queue_wait_p99_ms: f64,
    /// The smallest backlog any of B's jobs met (min over B's jobs, median over runs).
    pub a_backlog_at_b_submit_min: f64,
    pub a_backlog_at_b_submit_median: f64,
}

/// The hostile-submission workload: a dev node's answer time to ~1 MiB plans, and its
/// `/healthz` latency while hostile submissions are in flight.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct HostileReport {
    /// The refused plan (over the plan caps, answered 422).
    pub hostile_plan: SubmissionTiming,
    /// The largest legal plan (accepted, 201).
    pub legal_plan: SubmissionTiming,
    /// `/healthz` requests back to back on the idle node.
    pub healthz_idle: Latency,
    /// `/healthz` requests back to back while hostile submissions are in flight.
    pub healthz_under_hostile: Latency,
    /// Hostile submissions in flight at once during `healthz_under_hostile`.
    pub hostile_in_flight: usize,
    /// Hostile submissions answered while the load ran (its ramp-up included), by HTTP
    /// status.
    pub hostile_answers: BTreeMap<u16, usize>,
    /// How long each `/healthz` phase lasted (ms).
    pub phase_ms: u64,
    pub healthz_p50_ratio: f64,
    pub healthz_p99_ratio: f64,
}

/// HTTP round trips of one submission body, one at a time on a kept-alive connection.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct SubmissionTiming {
    pub plan: String,
    pub body_bytes: usize,
    /// The status every answer had.
    pub status: u16,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A latency distribution of back-to-back requests.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Latency {
    pub requests: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Report {
    /// The `--json` rendering.
    pub fn to_json(&self) -> Result<String, String> {
        serde_json::to_string(self).map_err(|e| format!("rendering the report as JSON: {e}"))
    }

    fn header(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "aetheris bench — {} — medians of {} runs",
            self.store, self.runs
        )?;
        if let Some(v) = &self.server {
            writeln!(f, "server: {v}")?;
        }
        writeln!(f, "fresh state: {}", self.fresh_state)
    }
}

/// The human table.
impl Display for Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        self.header(f)?;
        if let Some(p) = &self.pgbench {
            p.fmt(f)?;
        }
        if let Some(rows) = &self.w1 {
            W1Table(rows).fmt(f)?;
        }
        let sections: [Option<&dyn Display>; 9] = [
            self.w7.as_ref().map(|s| s as &dyn Display),
            self.w3.as_ref().map(|s| s as &dyn Display),
            self.w6.as_ref().map(|s| s as &dyn Display),
            self.w4.as_ref().map(|s| s as &dyn Display),
            self.w8.as_ref().map(|s| s as &dyn Display),
            self.w9.as_ref().map(|s| s as &dyn Display),
            self.w5.as_ref().map(|s| s as &dyn Display),
            self.w10.as_ref().map(|s| s as &dyn Display),
            self.hostile.as_ref().map(|s| s as &dyn Display),
        ];
        for s in sections.into_iter().flatten() {
            s.fmt(f)?;
        }
        Ok(())
    }
}

impl Display for PgbenchReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\npgbench (same server, single-row INSERT commits, {} s): {:.0}/s with 1 client, \
             {:.0}/s with 32 clients",
            self.seconds, self.commits_per_s_1_client, self.commits_per_s_32_clients
        )?;
        writeln!(
            f,
            "pgbench step floor (one W1 step's rows in one statement and commit, Aetheris's \
             schema, no checks or hashes, 1 client): {:.0} steps/s",
            self.step_floor_per_s_1_client
        )
    }
}

/// W1's rows as a table, then where a step's time goes.
struct W1Table<'a>(&'a [W1Row]);

impl Display for W1Table<'_> {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(f, "\nW1: jobs × 10 sequential no-op side_effect steps")?;
        writeln!(
            f,
            "{:>5} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>17} {:>11}  vs pgbench",
            "conc",
            "jobs",
            "steps/s",
            "job p50",
            "job p99",
            "step p50",
            "step p99",
            "cpu/step",
            "(ours + server)",
            "bytes/event",
        )?;
        for row in self.0 {
            row.table_line(f)?;
        }
        writeln!(
            f,
            "  (bytes/event: whole store growth per event, (Np) = average payload bytes)"
        )?;
        writeln!(
            f,
            "  where a step's time goes (means, as the job actor sees them):"
        )?;
        for row in self.0 {
            row.time_split_line(f)?;
        }
        Ok(())
    }
}

impl W1Row {
    fn table_line(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let split = match self.cpu_ms_per_step_server {
            Some(s) => format!("({:.3} + {:.3})", self.cpu_ms_per_step_aetheris, s),
            None => "(ours only)".to_string(),
        };
        let ratio = match (self.ratio_to_pgbench, &self.pgbench_baseline) {
            (Some(x), Some(base)) => format!("{x:.2}× {base}"),
            _ => String::new(),
        };
        let ratio = match self.ratio_to_step_floor {
            Some(x) => format!("{ratio}, {x:.2}× step floor"),
            None => ratio,
        };
        writeln!(
            f,
            "{:>5} {:>6} {:>9.0} {:>7.2}ms {:>7.2}ms {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>17} {:>5.0} ({:.0}p)  {}",
            self.concurrency,
            self.jobs,
            self.steps_per_s,
            self.job_p50_ms,
            self.job_p99_ms,
            self.step_p50_ms,
            self.step_p99_ms,
            self.cpu_ms_per_step,
            split,
            self.bytes_per_event,
            self.payload_bytes_per_event,
            ratio,
        )
    }

    fn time_split_line(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let batching = match self.appends_per_commit {
            Some(b) => format!(", {b:.1} appends per commit"),
            None => String::new(),
        };
        let one = match self.one_statement_share {
            Some(s) => format!(" ({:.0}% one statement)", s * 100.0),
            None => String::new(),
        };
        writeln!(
            f,
            "  c={:<3} fenced append (queue + commit) {:.3} ms{batching}{one}, tool call {:.3} ms",
            self.concurrency, self.append_mean_ms, self.tool_call_mean_ms,
        )?;
        if let Some(line) = self.server_line() {
            writeln!(f, "{line}")?;
        }
        if let (Some(start), Some(steps)) = (self.job_start_ms, self.job_steps_ms) {
            let handed = match self.handed_off_share {
                Some(h) => format!("; {:.0}% of jobs handed off at submission", h * 100.0),
                None => String::new(),
            };
            writeln!(
                f,
                "        per job {start:.1} ms from its submission to its first step (hand-off \
                 or claim, and first append), {steps:.1} ms from there to its end{handed}"
            )?;
        }
        Ok(())
    }

    /// What the database did per step (PostgreSQL only).
    fn server_line(&self) -> Option<String> {
        let wal = self.wal_bytes_per_step?;
        let xacts = self.write_transactions_per_step?;
        let statements = match self.statements_per_step {
            Some(s) => format!("{s:.2} statements"),
            None => "statements not counted (pg_stat_statements not loaded)".to_string(),
        };
        Some(format!(
            "        per step the database ran {statements}, {xacts:.2} write transactions, \
             {wal:.0} WAL bytes"
        ))
    }
}

impl Display for W7Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\nW7: storage, from the W1 run of {} jobs",
            self.from_w1_jobs
        )?;
        writeln!(
            f,
            "  whole store: {:.0} bytes/event ({}), payload {:.0} bytes/event",
            self.store_bytes_per_event, self.store_counts, self.payload_bytes_per_event
        )?;
        if let Some(e) = &self.events_table {
            writeln!(
                f,
                "  events table incl. indexes: {:.0} bytes/event = heap {:.0} + index {:.0} \
                 + TOAST/maps {:.0}; minus payload {:.0} = {:.0} bytes overhead/event",
                e.bytes_per_event,
                e.heap_bytes_per_event,
                e.index_bytes_per_event,
                e.toast_and_maps_bytes_per_event,
                e.payload_bytes_per_event,
                e.overhead_bytes_per_event,
            )?;
        }
        Ok(())
    }
}

impl Display for W3Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\nW3: {} jobs in flight (http steps held {} ms, idempotent), lease TTL {} ms, \
             heartbeat {} ms, claim poll {} ms",
            self.jobs, self.step_ms, self.lease_ttl_ms, self.heartbeat_ms, self.claim_poll_ms
        )?;
        writeln!(f, "  workers: {}", self.workers)?;
        self.killed.line(f, "SIGKILL → resumed")?;
        self.drained.line(f, "SIGTERM (drain) → resumed")
    }
}

impl W3Handoff {
    fn line(&self, f: &mut Formatter<'_>, what: &str) -> fmt::Result {
        let b = match self.b_ready_ms {
            Some(b) => format!(", B ready after {b:.0} ms"),
            None => String::new(),
        };
        writeln!(
            f,
            "  {what:<26} first {:>7.0} ms, last {:>7.0} ms (target ≤ {:.0} ms; A gone after \
             {:.0} ms{b})",
            self.first_resume_ms, self.last_resume_ms, self.target_ms, self.a_exit_ms,
        )
    }
}

impl Display for W4Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(f, "\nW4: reload of a {}-event job", self.events)?;
        writeln!(
            f,
            "  without snapshot {:>9.2} ms",
            self.reload_without_snapshot_ms
        )?;
        writeln!(
            f,
            "  with snapshot    {:>9.2} ms",
            self.reload_with_snapshot_ms
        )?;
        writeln!(
            f,
            "  one append at event 10: {:.3} ms; at event {}: {:.3} ms",
            self.append_at_event_10_ms, self.events, self.append_at_last_event_ms
        )?;
        writeln!(
            f,
            "  one worker step at event 10: {:.3} ms; at event {}: {:.3} ms",
            self.step_at_event_10_ms, self.events, self.step_at_last_event_ms
        )
    }
}

impl Display for W8Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\nW8: evidence of a {}-event job: export {:.1} ms + verify {:.1} ms = {:.1} ms \
             (goal ≤ 1000 ms); package {} bytes ({:.0} bytes/event)",
            self.events,
            self.export_ms,
            self.verify_ms,
            self.total_ms,
            self.package_bytes,
            self.package_bytes_per_event
        )
    }
}

impl Display for W5Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\nW5: {} jobs parked on a signal: RSS {:.1} MiB (+{:.1}), idle CPU {:.2}%, \
             signal→next step p50 {:.1} ms p99 {:.1} ms, timer lateness p50 {:.0} ms p99 {:.0} ms",
            self.parked_jobs,
            self.rss_mib,
            self.rss_delta_mib,
            self.idle_cpu_percent,
            self.signal_to_next_step_p50_ms,
            self.signal_to_next_step_p99_ms,
            self.timer_lateness_p50_ms,
            self.timer_lateness_p99_ms,
        )
    }
}

impl Display for W6Report {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\nW6: tenant flood — B ({}) trickles {} jobs, one per {} ms; A ({}) floods {} (×{}) \
             from {} submitters; jobs of 2 no-op side_effect steps; worker max_jobs {}",
            self.trickle_tenant,
            self.b_jobs,
            self.b_interval_ms,
            self.flood_tenant,
            self.a_jobs,
            self.ratio_a_to_b,
            self.flood_submitters,
            self.worker_max_jobs,
        )?;
        writeln!(
            f,
            "  {:<9} {:>11} {:>11} {:>11} {:>10} {:>14}  B p99 per run (B's waits of {} runs pooled)",
            "", "B wait p50", "B wait p99", "B wait max", "A jobs/s", "append mean", self.runs,
        )?;
        self.unloaded.line(f, "unloaded")?;
        self.flood.line(f, "flood")?;
        if let Some(a) = &self.flood.flood {
            a.line(f, self.a_sample)?;
        }
        writeln!(
            f,
            "  B p99 flood / unloaded: {:.2}× (target ≤ {:.0}×: {}; queue wait = first \
             step_started − job_submitted on the store clock, 1 ms resolution)",
            self.b_p99_flood_over_unloaded,
            self.target_ratio,
            if self.meets_target { "met" } else { "missed" },
        )
    }
}

impl W6Phase {
    fn line(&self, f: &mut Formatter<'_>, key: &str) -> fmt::Result {
        let a = match self.flood.as_ref().and_then(|a| a.a_jobs_per_s) {
            Some(x) => format!("{x:.0}"),
            None => "-".into(),
        };
        // Per-run values show the spread: within one run p99 is about B's maximum, and
        // one slow commit on a noisy machine moves it.
        let per_run: Vec<String> = self
            .b_queue_wait_p99_ms_per_run
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect();
        writeln!(
            f,
            "  {key:<9} {:>8.1} ms {:>8.1} ms {:>8.1} ms {a:>10} {:>11.3} ms  {} ms",
            self.b_queue_wait_p50_ms,
            self.b_queue_wait_p99_ms,
            self.b_queue_wait_max_ms,
            self.append_mean_ms,
            per_run.join(", "),
        )
    }
}

impl W6Flood {
    fn line(&self, f: &mut Formatter<'_>, sample: usize) -> fmt::Result {
        writeln!(
            f,
            "  A under the flood: stored {:.0} jobs/s; its own queue wait p50 {:.0} ms, p99 \
             {:.0} ms; backlog met by B's jobs: min {:.0}, median {:.0} (from a sample of {})",
            self.a_submitted_per_s.unwrap_or(0.0),
            self.a_queue_wait_p50_ms,
            self.a_queue_wait_p99_ms,
            self.a_backlog_at_b_submit_min,
            self.a_backlog_at_b_submit_median,
            sample,
        )
    }
}

impl Display for HostileReport {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "\nhostile: a dev node (embedded store, no auth) answering ~1 MiB plans over HTTP"
        )?;
        self.hostile_plan.line(f)?;
        self.legal_plan.line(f)?;
        let answers: Vec<String> = self
            .hostile_answers
            .iter()
            .map(|(status, n)| format!("{n}×{status}"))
            .collect();
        writeln!(
            f,
            "  /healthz back to back for {} ms each; under load: {} hostile submissions in \
             flight at once (answered: {})",
            self.phase_ms,
            self.hostile_in_flight,
            answers.join(", "),
        )?;
        self.healthz_idle.line(f, "idle")?;
        self.healthz_under_hostile.line(f, "under hostile")?;
        writeln!(
            f,
            "  under hostile / idle: p50 {:.2}×, p99 {:.2}×",
            self.healthz_p50_ratio, self.healthz_p99_ratio
        )
    }
}

impl SubmissionTiming {
    fn line(&self, f: &mut Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "  {:<34} {:>8} bytes → {}: p50 {:>8.2} ms, p99 {:>8.2} ms, max {:>8.2} ms ({} runs)",
            self.plan,
            self.body_bytes,
            self.status,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.samples,
        )
    }
}

impl Latency {
    fn line(&self, f: &mut Formatter<'_>, what: &str) -> fmt::Result {
        writeln!(
            f,
            "  /healthz {what:<14} p50 {:>7.3} ms, p99 {:>7.3} ms, max {:>7.3} ms ({} requests)",
            self.p50_ms, self.p99_ms, self.max_ms, self.requests,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn w1_row(concurrency: usize, server: Option<f64>) -> W1Row {
        W1Row {
            concurrency,
            jobs: 50,
            steps_per_s: 1234.4,
            job_p50_ms: 8.126,
            job_p99_ms: 12.5,
            step_p50_ms: 0.8126,
            step_p99_ms: 1.25,
            cpu_ms_per_step: 0.5,
            cpu_ms_per_step_aetheris: 0.25,
            cpu_ms_per_step_server: server,
            append_mean_ms: 0.375,
            appends_per_commit: server.map(|_| 2.5),
            one_statement_share: server.map(|_| 0.875),
            statements_per_step: server.map(|_| 1.5),
            write_transactions_per_step: server.map(|_| 1.25),
            wal_bytes_per_step: server.map(|_| 1400.0),
            tool_call_mean_ms: 0.125,
            handed_off_share: server.map(|_| 0.75),
            job_start_ms: server.map(|_| 1.5),
            job_steps_ms: server.map(|_| 6.5),
            bytes_per_event: 321.0,
            payload_bytes_per_event: 45.0,
            pgbench_baseline: server.map(|_| "1 client".to_string()),
            ratio_to_pgbench: server.map(|_| 0.75),
            ratio_to_step_floor: None,
        }
    }

    fn embedded() -> Report {
        Report {
            runs: 3,
            store: "embedded (redb)".into(),
            fresh_state: "a new temporary redb file per run".into(),
            w1: Some(vec![w1_row(1, None)]),
            w7: Some(W7Report {
                from_w1_jobs: 50,
                events: 1100,
                store_bytes_per_event: 321.0,
                payload_bytes_per_event: 45.0,
                store_counts: "redb file growth / events".into(),
                overhead_bytes_per_event: Some(276.0),
                events_table: None,
            }),
            w4: Some(W4Report {
                events: 10_000,
                reload_without_snapshot_ms: 25.5,
                reload_with_snapshot_ms: 0.25,
                append_at_event_10_ms: 0.5,
                append_at_last_event_ms: 0.625,
                step_at_event_10_ms: 0.75,
                step_at_last_event_ms: 0.875,
            }),
            hostile: Some(hostile()),
            ..Report::default()
        }
    }

    fn timing(plan: &str, status: u16) -> SubmissionTiming {
        SubmissionTiming {
            plan: plan.into(),
            body_bytes: 1_048_000,
            status,
            samples: 20,
            p50_ms: 4.5,
            p99_ms: 9.0,
            max_ms: 9.5,
        }
    }

    fn hostile() -> HostileReport {
        let latency = |p50: f64| Latency {
            requests: 1000,
            p50_ms: p50,
            p99_ms: p50 * 4.0,
            max_ms: p50 * 10.0,
        };
        HostileReport {
            hostile_plan: timing("hostile_dense_plan(500, 500)", 422),
            legal_plan: timing("max_legal_dense_plan()", 201),
            healthz_idle: latency(0.1),
            healthz_under_hostile: latency(0.2),
            hostile_in_flight: 8,
            hostile_answers: BTreeMap::from([(422, 96)]),
            phase_ms: 3000,
            healthz_p50_ratio: 2.0,
            healthz_p99_ratio: 2.0,
        }
    }

    #[test]
    fn table_renders_every_measured_section_and_nothing_else() {
        let text = embedded().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "aetheris bench — embedded (redb) — medians of 3 runs"
        );
        assert_eq!(lines[1], "fresh state: a new temporary redb file per run");
        assert!(lines.contains(
            &"    1     50      1234    8.13ms   12.50ms   0.813ms   1.250ms   0.500ms       (ours only)   321 (45p)  "
        ), "{text}");
        assert!(
            lines.contains(&"  c=1   fenced append (queue + commit) 0.375 ms, tool call 0.125 ms"),
            "{text}"
        );
        assert!(lines.contains(
            &"  whole store: 321 bytes/event (redb file growth / events), payload 45 bytes/event"
        ), "{text}");
        assert!(lines.contains(&"W4: reload of a 10000-event job"), "{text}");
        assert!(lines.contains(&"  without snapshot     25.50 ms"), "{text}");
        assert!(
            lines.contains(&"  one append at event 10: 0.500 ms; at event 10000: 0.625 ms"),
            "{text}"
        );
        assert!(lines.contains(
            &"  hostile_dense_plan(500, 500)        1048000 bytes → 422: p50     4.50 ms, p99     9.00 ms, max     9.50 ms (20 runs)"
        ), "{text}");
        assert!(lines.contains(
            &"  /healthz under hostile  p50   0.200 ms, p99   0.800 ms, max   2.000 ms (1000 requests)"
        ), "{text}");
        assert!(
            lines.contains(&"  under hostile / idle: p50 2.00×, p99 2.00×"),
            "{text}"
        );
        for absent in [
            "pgbench (same server",
            "W3:",
            "W5:",
            "W6:",
            "server:",
            "events table",
        ] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
    }

    #[test]
    fn postgres_rows_show_the_server_split_and_the_pgbench_ratio() {
        let mut report = embedded();
        report.store = "postgresql".into();
        report.server = Some("PostgreSQL 15.4".into());
        let mut at_one = w1_row(1, Some(0.125));
        at_one.ratio_to_step_floor = Some(0.46);
        report.w1 = Some(vec![w1_row(16, Some(0.125)), at_one]);
        report.pgbench = Some(PgbenchReport {
            binary: "/usr/bin/pgbench".into(),
            seconds: 5,
            script: "s".into(),
            commits_per_s_1_client: 1500.4,
            commits_per_s_32_clients: 9000.0,
            step_floor_per_s_1_client: 1200.0,
        });
        let text = report.to_string();
        assert!(
            text.contains("pgbench step floor (one W1 step's rows in one statement and commit, Aetheris's schema, no checks or hashes, 1 client): 1200 steps/s\n"),
            "{text}"
        );
        assert!(text.contains("server: PostgreSQL 15.4\n"), "{text}");
        assert!(text.contains(
            "\npgbench (same server, single-row INSERT commits, 5 s): 1500/s with 1 client, 9000/s with 32 clients\n"
        ), "{text}");
        assert!(
            text.contains(" (0.250 + 0.125)   321 (45p)  0.75× 1 client\n"),
            "{text}"
        );
        assert!(
            text.contains(" (0.250 + 0.125)   321 (45p)  0.75× 1 client, 0.46× step floor\n"),
            "{text}"
        );
        assert!(
            text.contains(", 2.5 appends per commit (88% one statement), tool call"),
            "{text}"
        );
        assert!(
            text.contains(
                "per step the database ran 1.50 statements, 1.25 write transactions, 1400 WAL bytes\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "        per job 1.5 ms from its submission to its first step (hand-off or claim, and first append), 6.5 ms from there to its end; 75% of jobs handed off at submission\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn json_has_the_named_keys_and_omits_what_was_not_measured() {
        let json: Value = serde_json::from_str(&embedded().to_json().unwrap()).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["fresh_state", "hostile", "runs", "store", "w1", "w4", "w7"]
        );
        let row = &json["w1"][0];
        assert_eq!(row["concurrency"], 1);
        assert_eq!(row["steps_per_s"], 1234.4);
        assert!(row["cpu_ms_per_step_server"].is_null());
        assert!(row.get("ratio_to_pgbench").is_none());
        assert_eq!(json["w7"]["overhead_bytes_per_event"], 276.0);
        assert!(json["w7"].get("events_table").is_none());
        assert_eq!(json["w4"]["reload_with_snapshot_ms"], 0.25);
        let h = &json["hostile"];
        assert_eq!(h["hostile_plan"]["status"], 422);
        assert_eq!(h["legal_plan"]["p99_ms"], 9.0);
        assert_eq!(h["healthz_under_hostile"]["p99_ms"], 0.8);
        assert_eq!(h["hostile_answers"]["422"], 96);
        assert_eq!(h["healthz_p99_ratio"], 2.0);
    }

    #[test]
    fn w6_flood_figures_sit_beside_the_phase_figures() {
        let phase = |flood: Option<W6Flood>| W6Phase {
            b_samples: 150,
            b_queue_wait_p50_ms: 2.0,
            b_queue_wait_p99_ms: 4.0,
            b_queue_wait_max_ms: 5.0,
            append_mean_ms: 0.5,
            b_queue_wait_p99_ms_per_run: vec![4.0, 3.0, 5.0],
            flood,
        };
        let w6 = W6Report {
            b_jobs: 50,
            runs: 3,
            a_jobs: 50_000,
            ratio_a_to_b: 1000,
            b_interval_ms: 40,
            worker_max_jobs: 256,
            flood_tenant: "a".into(),
            trickle_tenant: "b".into(),
            flood_submitters: 64,
            a_sample: 1000,
            plan: "p".into(),
            queue_wait: "q".into(),
            unloaded: phase(None),
            flood: phase(Some(W6Flood {
                a_jobs_per_s: Some(900.0),
                a_submitted_per_s: Some(5000.0),
                a_queue_wait_p50_ms: 20000.0,
                a_queue_wait_p99_ms: 40000.0,
                a_backlog_at_b_submit_min: 12000.0,
                a_backlog_at_b_submit_median: 30000.0,
            })),
            b_p99_flood_over_unloaded: 1.0,
            ratio_denominator_floor_ms: 1.0,
            target_ratio: 2.0,
            meets_target: true,
        };
        let json = serde_json::to_value(&w6).unwrap();
        assert_eq!(json["flood"]["a_jobs_per_s"], 900.0);
        assert!(json["unloaded"].get("a_jobs_per_s").is_none());
        let text = w6.to_string();
        assert!(text.contains(
            "\n  unloaded       2.0 ms      4.0 ms      5.0 ms          -       0.500 ms  4, 3, 5 ms\n"
        ), "{text}");
        assert!(
            text.contains("  flood          2.0 ms      4.0 ms      5.0 ms        900"),
            "{text}"
        );
        assert!(text.contains("(target ≤ 2×: met;"), "{text}");
    }
}
