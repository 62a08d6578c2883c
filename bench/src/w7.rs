//! W7 of `aetheris bench`: storage per event, from the W1 runs with the most jobs. On the
//! embedded store: the redb file's growth per event; on PostgreSQL: the growth of the
//! jobs, events, ledger and snapshots tables per event, and the `events` table broken down
//! into heap, primary-key index and TOAST/maps (see `pg.rs`). Both with the average
//! payload, so the per-event overhead shows.

use crate::report::{EventsTable, W7Report};
use crate::runner::median;
use crate::w1::{W1Run, EVENTS_PER_JOB};

/// The W7 section from W1's runs of `jobs` jobs.
pub fn from_w1(jobs: usize, runs: &[W1Run]) -> W7Report {
    let m = |f: &dyn Fn(&W1Run) -> f64| median(runs.iter().map(f).collect());
    let store_bytes_per_event = m(&|w| w.bytes_per_event);
    let payload_bytes_per_event = m(&|w| w.payload_per_event);
    let events_table = events_table(runs);
    let (store_counts, overhead) = match events_table {
        Some(_) => (
            "jobs + events + ledger + snapshots tables (pg_total_relation_size) / events",
            None,
        ),
        None => (
            "redb file growth / events",
            Some(m(&|w| w.bytes_per_event - w.payload_per_event)),
        ),
    };
    W7Report {
        from_w1_jobs: jobs,
        events: jobs * EVENTS_PER_JOB,
        store_bytes_per_event,
        payload_bytes_per_event,
        store_counts: store_counts.to_string(),
        overhead_bytes_per_event: overhead,
        events_table,
    }
}

/// The `events` table figures, when every run measured them (PostgreSQL).
fn events_table(runs: &[W1Run]) -> Option<EventsTable> {
    let tables: Vec<_> = runs
        .iter()
        .map(|w| w.pg_w7.as_ref())
        .collect::<Option<_>>()?;
    if tables.is_empty() {
        return None;
    }
    let m = |f: fn(&crate::pg::W7) -> f64| median(tables.iter().map(|t| f(t)).collect());
    Some(EventsTable {
        counts: "pg_total_relation_size('events'): heap + primary-key index + TOAST + \
                 free-space and visibility maps"
            .to_string(),
        bytes_per_event: m(|w| w.total_per_event),
        heap_bytes_per_event: m(|w| w.heap_per_event),
        index_bytes_per_event: m(|w| w.index_per_event),
        toast_and_maps_bytes_per_event: m(|w| w.rest_per_event),
        payload_bytes_per_event: m(|w| w.payload_per_event),
        overhead_bytes_per_event: m(|w| w.total_per_event - w.payload_per_event),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: f64, payload: f64, pg: Option<crate::pg::W7>) -> W1Run {
        W1Run {
            steps_per_s: 0.0,
            job_p50_ms: 0.0,
            job_p99_ms: 0.0,
            step_p50_ms: 0.0,
            step_p99_ms: 0.0,
            cpu_ms_per_step: 0.0,
            cpu_ms_per_step_ours: 0.0,
            cpu_ms_per_step_server: None,
            bytes_per_event: bytes,
            payload_per_event: payload,
            append_mean_ms: 0.0,
            tool_mean_ms: 0.0,
            pg_w7: pg,
            job_phases: None,
            appends_per_commit: None,
            one_statement_share: None,
            handed_off_share: None,
            server_per_step: None,
        }
    }

    #[test]
    fn embedded_reports_file_growth_and_overhead() {
        let runs = [
            run(300.0, 40.0, None),
            run(320.0, 40.0, None),
            run(310.0, 50.0, None),
        ];
        let w7 = from_w1(50, &runs);
        assert_eq!(w7.events, 50 * 22);
        assert_eq!(w7.store_bytes_per_event, 310.0);
        assert_eq!(w7.payload_bytes_per_event, 40.0);
        // The median of each run's overhead (260, 280, 260), not a difference of medians.
        assert_eq!(w7.overhead_bytes_per_event, Some(260.0));
        assert!(w7.events_table.is_none());
        assert_eq!(w7.store_counts, "redb file growth / events");
    }

    #[test]
    fn postgres_breaks_the_events_table_down() {
        let table = |total: f64| crate::pg::W7 {
            total_per_event: total,
            heap_per_event: total / 2.0,
            index_per_event: total / 4.0,
            rest_per_event: total / 4.0,
            payload_per_event: 40.0,
        };
        let runs = [
            run(500.0, 40.0, Some(table(400.0))),
            run(520.0, 40.0, Some(table(440.0))),
        ];
        let w7 = from_w1(64, &runs);
        let t = w7.events_table.expect("events table");
        assert_eq!(t.bytes_per_event, 440.0);
        assert_eq!(t.overhead_bytes_per_event, 400.0);
        assert!(w7.overhead_bytes_per_event.is_none());
        let mixed = [run(500.0, 40.0, Some(table(400.0))), run(500.0, 40.0, None)];
        assert!(from_w1(64, &mixed).events_table.is_none());
    }
}
