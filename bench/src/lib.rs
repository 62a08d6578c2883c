//! aetheris-bench: the workloads behind `aetheris bench` and their typed report (what each
//! measures and how to run and compare them: docs/benchmarks.md). The `aetheris` binary
//! only parses [`BenchArgs`] and calls [`run`].
//!
//! Workloads, one module each, on the embedded store (default) or on a PostgreSQL given
//! with `--database-url`:
//! - W1 (`w1.rs`): jobs × 10 sequential no-op `side_effect` steps at several concurrencies;
//! - W3 (`w3.rs`): crash-to-resume and drain handoff with real worker processes;
//! - W4 (`w4.rs`): reload of a long job with and without a snapshot;
//! - W5 (`w5.rs`, on request): jobs parked on a signal;
//! - W6 (`w6.rs`, on request): tenant flood, tenant B's queue wait;
//! - W7 (`w7.rs`): bytes per event, from W1's largest run;
//! - W8 (`w8.rs`): export and offline verification of a long job's evidence package;
//! - W9 (`w9.rs`, on request): agent loops against a fake provider answering at once;
//! - W10 (`w10.rs`, on request): retention: store size after deleting finished jobs vs at
//!   peak, the cost per job deleted, and W1's throughput while retention runs;
//! - hostile (`hostile.rs`): a dev node's answer time to ~1 MiB plans and its `/healthz`
//!   latency while hostile submissions are in flight;
//! - on PostgreSQL, the `pgbench` baseline of the same server (`pg.rs`).
//!
//! Invariants: every run starts from fresh state and never touches existing data
//! (`runner.rs`); timings are reported, never asserted; progress goes to stderr and the
//! report (`report.rs`: a table, or `--json`) to stdout.

mod hostile;
mod pg;
pub mod report;
mod runner;
mod w1;
mod w10;
mod w3;
mod w4;
mod w5;
mod w6;
mod w7;
mod w8;
mod w9;

pub use report::Report;

use clap::Args;
use runner::{progress_done, Fresh, Target};
use std::process::ExitCode;
use std::time::Duration;

/// The flags of `aetheris bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Concurrencies for W1 (jobs in flight at once).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    /// Jobs per W1 run (default: max(50, 20 × concurrency)).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Repetitions; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Events in the W4 job.
    #[arg(long, default_value_t = 10_000)]
    pub reload_events: u64,
    /// Events in the W8 job (whose evidence package is exported and verified).
    #[arg(long, default_value_t = 10_000)]
    pub evidence_events: u64,
    /// Jobs parked on a signal in W5 (run with `--workloads w5`).
    #[arg(long, default_value_t = 10_000)]
    pub parked: usize,
    /// W10: one-step jobs run through the tenant with a short retention, per fill (run
    /// with `--workloads w10`).
    #[arg(long, default_value_t = 100_000)]
    pub w10_jobs: usize,
    /// W10: jobs of the W1 runs timed without and with retention running.
    #[arg(long, default_value_t = 500)]
    pub w10_w1_jobs: usize,
    /// Smaller sizes for a quick look: W10 with 5,000 jobs and 200 W1 jobs.
    #[arg(long)]
    pub quick: bool,
    /// Only these workloads: w1 (step throughput and latency), w3 (crash and drain
    /// handoff), w4 (reload of a long job), w5 (parked jobs), w6 (tenant flood), w7 (bytes
    /// per event), w8 (evidence export and verify of a long job), w9 (agent loops), w10
    /// (retention), hostile (~1 MiB hostile plans against a dev node); w5, w6, w9 and w10
    /// run only when named. See docs/benchmarks.md.
    #[arg(long, value_delimiter = ',', default_value = "w1,w3,w4,w7,w8,hostile")]
    pub workloads: Vec<String>,
    /// Print the report as one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Benchmark this PostgreSQL instead of the embedded store. Each run creates (and
    /// afterwards drops) its own database `bench_<uuid>` on that server, so the URL's user
    /// needs CREATEDB; existing data is never touched.
    #[arg(long, env = "AETHERIS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Connections in the PostgreSQL pool of the measured worker.
    #[arg(long, default_value_t = 16)]
    pub pool_size: usize,
    /// Keep each run's database instead of dropping it (PostgreSQL; for inspection; their
    /// names are printed on stderr).
    #[arg(long)]
    pub keep_databases: bool,
    /// Seconds per pgbench measurement (PostgreSQL only; 0 skips pgbench).
    #[arg(long, default_value_t = 5)]
    pub pgbench_seconds: u64,
    /// W3: jobs in flight on the worker that is killed or drained.
    #[arg(long, default_value_t = 32)]
    pub w3_jobs: usize,
    /// W3: lease TTL of the workers (ms).
    #[arg(long, default_value_t = 5_000)]
    pub w3_lease_ttl_ms: u64,
    /// W3: heartbeat interval of the PostgreSQL workers (ms; `aetheris dev` uses TTL/5).
    #[arg(long, default_value_t = 1_000)]
    pub w3_heartbeat_ms: u64,
    /// W3: how long the stub tool holds each call (ms).
    #[arg(long, default_value_t = 20)]
    pub w3_step_ms: u64,
    /// W6: jobs tenant B trickles in per run (its queue-wait samples).
    #[arg(long, default_value_t = 50)]
    pub w6_b_jobs: usize,
    /// W6: tenant A floods this many times as many jobs as B.
    #[arg(long, default_value_t = 1000)]
    pub w6_ratio: usize,
    /// W6: B submits one job every this many ms.
    #[arg(long, default_value_t = 40)]
    pub w6_interval_ms: u64,
    /// W6: jobs the worker runs at once (default: as `aetheris dev` on the embedded store,
    /// 256; as `aetheris worker` on PostgreSQL, 64).
    #[arg(long)]
    pub w6_max_jobs: Option<usize>,
    /// W6: the flooding tenant's id (claims go round robin in tenant-id order).
    #[arg(long, default_value = "a")]
    pub w6_flood_tenant: String,
    /// W6: the trickling tenant's id.
    #[arg(long, default_value = "b")]
    pub w6_trickle_tenant: String,
    /// hostile: submissions of each plan (hostile, then largest legal) timed one at a time
    /// (p50 and p99 reported).
    #[arg(long, default_value_t = 20)]
    pub hostile_runs: usize,
    /// hostile: ~1 MiB hostile submissions kept in flight at once while `/healthz` is
    /// timed.
    #[arg(long, default_value_t = 8)]
    pub hostile_in_flight: usize,
    /// hostile: how long `/healthz` is timed on the idle node, and again under the hostile
    /// submissions (ms).
    #[arg(long, default_value_t = 3_000)]
    pub hostile_phase_ms: u64,
}

/// The workloads `--workloads` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    W1,
    W3,
    W4,
    W5,
    W6,
    W7,
    W8,
    W9,
    W10,
    Hostile,
}

impl Workload {
    const NAMES: [(&'static str, Workload); 10] = [
        ("w1", Workload::W1),
        ("w3", Workload::W3),
        ("w4", Workload::W4),
        ("w5", Workload::W5),
        ("w6", Workload::W6),
        ("w7", Workload::W7),
        ("w8", Workload::W8),
        ("w9", Workload::W9),
        ("w10", Workload::W10),
        ("hostile", Workload::Hostile),
    ];

    fn parse(name: &str) -> Result<Workload, String> {
        Self::NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, w)| *w)
            .ok_or_else(|| {
                format!(
                    "unknown workload {name:?} (expected w1, w3, w4, w5, w6, w7, w8, w9, w10 or hostile)"
                )
            })
    }
}

/// The workloads of one invocation.
struct Selection(Vec<Workload>);

impl Selection {
    fn parse(names: &[String]) -> Result<Selection, String> {
        names
            .iter()
            .map(|n| Workload::parse(n))
            .collect::<Result<_, _>>()
            .map(Selection)
    }

    fn has(&self, w: Workload) -> bool {
        self.0.contains(&w)
    }
}

/// Runs the selected workloads and prints the report (table or JSON) on stdout.
pub fn run(args: BenchArgs) -> Result<ExitCode, String> {
    let selection = validate(&args)?;
    let report = measure(&args, &selection)?;
    if args.json {
        println!("{}", report.to_json()?);
    } else {
        print!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Every flag's bounds, before anything runs; returns the workloads.
fn validate(args: &BenchArgs) -> Result<Selection, String> {
    if args.runs == 0 || args.concurrency.contains(&0) {
        return Err("--runs and every --concurrency must be at least 1".into());
    }
    if args.pool_size == 0 || args.w3_jobs == 0 {
        return Err("--pool-size and --w3-jobs must be at least 1".into());
    }
    if args.w3_heartbeat_ms == 0 || args.w3_heartbeat_ms >= args.w3_lease_ttl_ms {
        return Err("--w3-heartbeat-ms must be above 0 and below --w3-lease-ttl-ms".into());
    }
    validate_w6(args)?;
    if args.w10_jobs == 0 || args.w10_w1_jobs == 0 {
        return Err("--w10-jobs and --w10-w1-jobs must be at least 1".into());
    }
    if args.hostile_runs == 0 || args.hostile_in_flight == 0 || args.hostile_phase_ms == 0 {
        return Err(
            "--hostile-runs, --hostile-in-flight and --hostile-phase-ms must be at least 1".into(),
        );
    }
    Selection::parse(&args.workloads)
}

fn validate_w6(args: &BenchArgs) -> Result<(), String> {
    if args.w6_b_jobs == 0 || args.w6_ratio == 0 || args.w6_max_jobs == Some(0) {
        return Err("--w6-b-jobs, --w6-ratio and --w6-max-jobs must be at least 1".into());
    }
    if args.w6_flood_tenant.is_empty()
        || args.w6_trickle_tenant.is_empty()
        || args.w6_flood_tenant == args.w6_trickle_tenant
    {
        return Err(
            "--w6-flood-tenant and --w6-trickle-tenant must be two different, non-empty ids".into(),
        );
    }
    Ok(())
}

/// Runs the workloads in a fixed order (pgbench, W1 and W7, W3, W5, W6, W4, W8, hostile).
fn measure(args: &BenchArgs, selection: &Selection) -> Result<Report, String> {
    let fresh = Fresh {
        target: Target::connect(args.database_url.as_deref())?,
        pool: args.pool_size,
        keep: args.keep_databases,
    };
    let mut report = describe(&fresh.target, args.runs);
    if let (Target::Pg(server), true) = (&fresh.target, args.pgbench_seconds > 0) {
        report.pgbench = pg::baseline(server, args.runs, args.pgbench_seconds)?;
    }
    if selection.has(Workload::W1) || selection.has(Workload::W7) {
        let w1 = w1::run(&fresh, args, report.pgbench.as_ref())?;
        if selection.has(Workload::W1) {
            report.w1 = Some(w1.rows);
        }
        if selection.has(Workload::W7) {
            report.w7 = w1.largest.map(|(jobs, runs)| w7::from_w1(jobs, &runs));
        }
    }
    if selection.has(Workload::W3) {
        report.w3 = Some(w3::run(&fresh, args)?);
    }
    if selection.has(Workload::W5) {
        report.w5 = Some(w5::run(&fresh, args.parked)?);
    }
    if selection.has(Workload::W6) {
        report.w6 = Some(w6::run(&fresh, args)?);
    }
    if selection.has(Workload::W4) {
        report.w4 = Some(w4::run(&fresh, args.runs, args.reload_events)?);
    }
    if selection.has(Workload::W8) {
        report.w8 = Some(w8::run(&fresh, args.runs, args.evidence_events)?);
    }
    if selection.has(Workload::W9) {
        report.w9 = Some(w9::run(&fresh, args.runs)?);
    }
    if selection.has(Workload::W10) {
        let (jobs, w1_jobs) = if args.quick {
            (args.w10_jobs.min(5_000), args.w10_w1_jobs.min(200))
        } else {
            (args.w10_jobs, args.w10_w1_jobs)
        };
        report.w10 = Some(w10::run(&fresh, jobs, w1_jobs)?);
    }
    if selection.has(Workload::Hostile) {
        report.hostile = Some(hostile::run(hostile::HostileCfg {
            runs: args.hostile_runs,
            in_flight: args.hostile_in_flight,
            phase: Duration::from_millis(args.hostile_phase_ms),
        })?);
    }
    progress_done();
    Ok(report)
}

/// The report's header: what was measured and how state was kept fresh.
fn describe(target: &Target, runs: usize) -> Report {
    match target {
        Target::Embedded => Report {
            runs,
            store: "embedded (redb)".into(),
            fresh_state: "a new temporary redb file per run".into(),
            ..Report::default()
        },
        Target::Pg(s) => Report {
            runs,
            store: "postgresql".into(),
            server: Some(s.version.clone()),
            fresh_state: "a new database bench_<uuid> per run, dropped after it".into(),
            server_cpu_observed: Some(s.postmaster.is_some()),
            ..Report::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bench: BenchArgs,
    }

    fn parse(args: &[&str]) -> BenchArgs {
        let mut all = vec!["bench"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).expect("parse").bench
    }

    #[test]
    fn every_flag_has_help_that_stays_in_the_repository() {
        Cli::command().debug_assert();
        let cmd = Cli::command();
        let args: Vec<_> = cmd
            .get_arguments()
            .filter(|a| a.get_id() != "help")
            .collect();
        assert!(args.len() >= 24, "{}", args.len());
        for a in args {
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(!help.trim().is_empty(), "--{} has no help", a.get_id());
            assert!(
                !help.contains("DESIGN") && !help.contains('§'),
                "--{}: {help}",
                a.get_id()
            );
        }
    }

    #[test]
    fn workloads_parse_case_insensitively_and_unknown_ones_are_refused() {
        let s = Selection::parse(&["W1".into(), "hostile".into()]).unwrap();
        assert!(s.has(Workload::W1) && s.has(Workload::Hostile) && !s.has(Workload::W4));
        let e = Selection::parse(&["w2".into()]).err().unwrap();
        assert!(e.contains("unknown workload \"w2\""), "{e}");
        let defaults = parse(&[]);
        let s = Selection::parse(&defaults.workloads).unwrap();
        assert_eq!(
            s.0,
            [
                Workload::W1,
                Workload::W3,
                Workload::W4,
                Workload::W7,
                Workload::W8,
                Workload::Hostile
            ]
        );
    }

    #[test]
    fn out_of_range_flags_are_one_clear_error_before_anything_runs() {
        for (args, expect) in [
            (vec!["--runs", "0"], "--runs"),
            (vec!["--concurrency", "1,0"], "--concurrency"),
            (vec!["--w3-heartbeat-ms", "5000"], "--w3-heartbeat-ms"),
            (vec!["--w6-flood-tenant", "b"], "--w6-flood-tenant"),
            (vec!["--hostile-in-flight", "0"], "--hostile-in-flight"),
            (vec!["--workloads", "w1,nope"], "unknown workload"),
        ] {
            let e = validate(&parse(&args)).err().unwrap_or_default();
            assert!(e.contains(expect), "{args:?}: {e}");
        }
        assert!(validate(&parse(&["--workloads", "hostile"])).is_ok());
    }
}
