//! `aetheris bench` as a user runs it, in its smallest configuration: the hostile workload
//! plus W1, W4 and W7 with tiny sizes, `--json`. Checks the report's shape and the facts
//! that hold whatever the machine's speed (statuses, counts, sizes, orderings of a
//! distribution), never a timing; and that a bad flag is one error line and a non-zero exit.

use serde_json::Value;
use std::process::{Command, Output, Stdio};

fn bench(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_aetheris"));
    cmd.arg("bench")
        .args(args)
        .env_remove("AETHERIS_DATABASE_URL")
        .stdin(Stdio::null());
    cmd.output().expect("run aetheris bench")
}

fn number(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// p50 ≤ p99 ≤ max, all positive.
fn ordered(v: &Value, p50: &str, p99: &str, max: &str) {
    let (a, b, c) = (number(v, p50), number(v, p99), number(v, max));
    assert!(0.0 < a && a <= b && b <= c, "{v}");
}

#[test]
fn smallest_bench_reports_hostile_w1_w4_w7_w8_as_json() {
    let out = bench(&[
        "--workloads",
        "hostile,w1,w4,w7,w8",
        "--json",
        "--runs",
        "1",
        "--concurrency",
        "2",
        "--jobs",
        "4",
        "--reload-events",
        "40",
        "--evidence-events",
        "60",
        "--hostile-runs",
        "2",
        "--hostile-in-flight",
        "2",
        "--hostile-phase-ms",
        "300",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1, "one JSON line: {stdout}");
    let report: Value = serde_json::from_str(&stdout).expect("JSON report");

    assert_eq!(report["store"], "embedded (redb)");
    assert_eq!(report["runs"], 1);
    for absent in ["w3", "w5", "w6", "pgbench", "server"] {
        assert!(report.get(absent).is_none(), "{absent} in {report}");
    }

    let h = &report["hostile"];
    assert_eq!(h["hostile_plan"]["status"], 422, "{h}");
    assert_eq!(h["legal_plan"]["status"], 201, "{h}");
    for plan in ["hostile_plan", "legal_plan"] {
        let p = &h[plan];
        assert_eq!(p["samples"], 2, "{p}");
        // Both bodies are about 1 MiB.
        let bytes = number(p, "body_bytes");
        assert!((500_000.0..=1_100_000.0).contains(&bytes), "{p}");
        ordered(p, "p50_ms", "p99_ms", "max_ms");
    }
    for phase in ["healthz_idle", "healthz_under_hostile"] {
        let p = &h[phase];
        assert!(number(p, "requests") >= 1.0, "{p}");
        ordered(p, "p50_ms", "p99_ms", "max_ms");
    }
    assert_eq!(h["hostile_in_flight"], 2);
    assert_eq!(h["phase_ms"], 300);
    let answers = h["hostile_answers"].as_object().expect("answers by status");
    assert!(number(&h["hostile_answers"], "422") >= 2.0, "{h}");
    assert!(answers.keys().all(|k| k == "422"), "{h}");
    assert!(number(h, "healthz_p99_ratio") > 0.0, "{h}");

    let w1 = report["w1"].as_array().expect("w1 rows");
    assert_eq!(w1.len(), 1);
    let row = &w1[0];
    assert_eq!(
        (row["concurrency"].as_u64(), row["jobs"].as_u64()),
        (Some(2), Some(4))
    );
    assert!(number(row, "steps_per_s") > 0.0, "{row}");
    assert!(
        number(row, "job_p50_ms") <= number(row, "job_p99_ms"),
        "{row}"
    );
    assert!(
        row["cpu_ms_per_step_server"].is_null(),
        "embedded: no server"
    );
    assert!(row.get("ratio_to_pgbench").is_none(), "{row}");

    let w7 = &report["w7"];
    assert_eq!(w7["from_w1_jobs"], 4);
    assert_eq!(w7["events"], 4 * 22);
    assert!(number(w7, "payload_bytes_per_event") > 0.0, "{w7}");

    let w4 = &report["w4"];
    assert_eq!(w4["events"], 40);
    for key in [
        "reload_without_snapshot_ms",
        "reload_with_snapshot_ms",
        "append_at_event_10_ms",
        "append_at_last_event_ms",
    ] {
        assert!(number(w4, key) > 0.0, "{key}: {w4}");
    }

    // W8: a 60-event job exported (signed, proven) and verified offline.
    let w8 = &report["w8"];
    assert_eq!(w8["events"], 60);
    for key in [
        "export_ms",
        "verify_ms",
        "total_ms",
        "package_bytes_per_event",
    ] {
        assert!(number(w8, key) > 0.0, "{key}: {w8}");
    }
    assert!(number(w8, "package_bytes") > 1000.0, "{w8}");
}

#[test]
fn bad_bench_flags_are_one_error_line() {
    for (args, expect) in [
        (&["--workloads", "w2"][..], "unknown workload \"w2\""),
        (&["--hostile-runs", "0"][..], "--hostile-runs"),
    ] {
        let out = bench(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(expect),
            "{stderr}"
        );
        assert!(out.stdout.is_empty(), "no report on a bad flag");
    }
}

/// On PostgreSQL the bench measures its baselines on the same server in databases of its
/// own: pgbench's one-row insert at 1 and 32 clients, and the step floor (one W1 step's
/// rows in one statement and commit, on Aetheris's schema); the W1 row at concurrency 1
/// carries its ratio to each, and what the database did per step. Shapes only, never a
/// timing. pgbench ships with the PostgreSQL server package the test clusters need, so
/// its absence fails the test instead of skipping it.
#[test]
fn postgres_bench_reports_pgbench_the_step_floor_and_the_database_per_step() {
    let url =
        crate::support::rt().block_on(aetheris_store::testing::pg_cluster::fresh_database_url());
    let out = bench(&[
        "--database-url",
        &url,
        "--workloads",
        "w1",
        "--concurrency",
        "1",
        "--jobs",
        "5",
        "--runs",
        "1",
        "--pgbench-seconds",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["store"], "postgresql", "{v}");
    let p = &v["pgbench"];
    for key in [
        "commits_per_s_1_client",
        "commits_per_s_32_clients",
        "step_floor_per_s_1_client",
    ] {
        assert!(number(p, key) > 0.0, "{key}: {p}");
    }
    let row = &v["w1"][0];
    assert_eq!(row["concurrency"], 1, "{row}");
    assert_eq!(row["pgbench_baseline"], "1 client", "{row}");
    for key in [
        "ratio_to_pgbench",
        "ratio_to_step_floor",
        "write_transactions_per_step",
        "wal_bytes_per_step",
        "appends_per_commit",
    ] {
        assert!(number(row, key) > 0.0, "{key}: {row}");
    }
}
