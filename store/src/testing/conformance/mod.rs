//! The generic store conformance suite: the executable form of the store contract
//! (DESIGN §2 G1, G3, G6, G7 and §5). Every backend runs these same checks from its own
//! integration test, so the backends cannot drift apart: [`conformance_tests!`] expands to
//! one `#[test]` per check (each on a fresh store, so a failure names its check and hides
//! no other), plus one test that runs them all twice on one shared store.
//!
//! Each check is a `pub async fn` taking a [`DynStore`] and panicking with a message that
//! names the broken guarantee; the checks are grouped by concern (`jobs`, `append`,
//! `ledger`, `leases`, `commands`, `audit`, `tenants`, `presence`, `evidence`, `llm`, `retention`). This is test support
//! (feature `test-util`): panicking asserts are its failure mode, which is why the crate's
//! "no `unwrap()` outside tests" rule does not apply here.
//!
//! Checks are independent and can share one store: each uses fresh tenants (a UUID in the
//! name) and fresh jobs. Checks whose outcome depends on *which* jobs are claimable first
//! park every claimable job left over from earlier checks under a long lease
//! ([`park_claimable`]), so on a shared store they must run one at a time; [`run_all`]
//! runs them in sequence.

mod append;
mod audit;
mod commands;
mod evidence;
mod jobs;
mod leases;
mod ledger;
mod llm;
mod presence;
mod retention;
mod tenants;

pub use append::*;
pub use audit::*;
pub use commands::*;
pub use evidence::*;
pub use jobs::*;
pub use leases::*;
pub use ledger::*;
pub use llm::*;
pub use presence::*;
pub use retention::*;
pub use tenants::*;

use crate::{
    Append, AuditEntry, AuditFilter, AuditRecord, DynStore, Entity, JobSummary, Lease, ListFilter,
    NewJob, RunningCaps, Scope, StoreError,
};
use aetheris_runtime::{
    invocation_key, EffectClass, EventBody, JobId, JobState, JobStatus, LedgerStatus, Plan,
    RecordedEvent,
};
use serde_json::json;
use std::collections::{BTreeSet, HashSet};
use std::fmt::Debug;
use std::time::Duration;

/// A lease long enough to outlive the whole suite.
const HOUR_MS: u64 = 3_600_000;
/// The worker name under which leftover jobs are parked.
const PARKING: &str = "conformance-parking";

/// Runs every check, one after another, against one store.
pub async fn run_all(store: DynStore) {
    submit_creates_job_and_is_idempotent(store.clone()).await;
    seq_is_gap_free(store.clone()).await;
    stale_tokens_are_fenced(store.clone()).await;
    concurrent_claims_are_exclusive(store.clone()).await;
    leases_expire_release_and_heartbeat(store.clone()).await;
    claims_are_fair_across_tenants(store.clone()).await;
    ledger_follows_state_machine(store.clone()).await;
    outcome_unknown_parks_job(store.clone()).await;
    events_are_hash_chained(store.clone()).await;
    terminal_jobs_are_closed(store.clone()).await;
    snapshots_select_newest_at_or_below(store.clone()).await;
    load_job_reads_one_consistent_start(store.clone()).await;
    claim_and_load_preloads_only_what_load_job_would_read(store.clone()).await;
    reads_are_scoped_and_listing_pages(store.clone()).await;
    batch_appends_fail_alone(store.clone()).await;
    work_hint_fires_on_submit_and_release(store.clone()).await;
    commands_wake_waiting_jobs_and_are_fenced(store.clone()).await;
    audit_rows_commit_with_their_change(store.clone()).await;
    claims_respect_running_caps(store.clone()).await;
    parked_jobs_wake_when_due_and_finished_ones_never(store.clone()).await;
    a_finishing_append_gives_the_lease_back(store.clone()).await;
    users_are_per_tenant_data(store.clone()).await;
    missing_tenants_are_not_found(store.clone()).await;
    live_processes_are_counted_per_kind(store.clone()).await;
    process_reports_are_listed(store.clone()).await;
    operational_figures_show_backlog_and_unknown_outcomes(store.clone()).await;
    finished_jobs_join_their_tenant_log(store.clone()).await;
    concurrent_finishes_get_gap_free_indexes(store.clone()).await;
    evidence_packages_are_the_recorded_history(store.clone()).await;
    llm_providers_are_per_tenant_data(store.clone()).await;
    llm_token_reservations_respect_the_daily_limit(store.clone()).await;
    retention_deletes_only_expired_finished_jobs(store.clone()).await;
    retention_batches_are_bounded(store.clone()).await;
    clock_and_size_are_sane(store).await;
}

/// One `#[tokio::test]` per conformance check, each on a store of its own from `$open`
/// (an async fn returning `(guard, DynStore)`; the guard, e.g. a temporary directory, lives
/// as long as the test), plus `every_check_twice_on_one_store`.
#[macro_export]
macro_rules! conformance_tests {
    ($open:path) => {
        $crate::conformance_tests!(@checks $open;
            submit_creates_job_and_is_idempotent,
            seq_is_gap_free,
            stale_tokens_are_fenced,
            concurrent_claims_are_exclusive,
            leases_expire_release_and_heartbeat,
            claims_are_fair_across_tenants,
            ledger_follows_state_machine,
            outcome_unknown_parks_job,
            events_are_hash_chained,
            terminal_jobs_are_closed,
            snapshots_select_newest_at_or_below,
            load_job_reads_one_consistent_start,
            claim_and_load_preloads_only_what_load_job_would_read,
            reads_are_scoped_and_listing_pages,
            batch_appends_fail_alone,
            work_hint_fires_on_submit_and_release,
            commands_wake_waiting_jobs_and_are_fenced,
            audit_rows_commit_with_their_change,
            claims_respect_running_caps,
            parked_jobs_wake_when_due_and_finished_ones_never,
            a_finishing_append_gives_the_lease_back,
            users_are_per_tenant_data,
            missing_tenants_are_not_found,
            live_processes_are_counted_per_kind,
            process_reports_are_listed,
            operational_figures_show_backlog_and_unknown_outcomes,
            finished_jobs_join_their_tenant_log,
            concurrent_finishes_get_gap_free_indexes,
            evidence_packages_are_the_recorded_history,
            llm_providers_are_per_tenant_data,
            llm_token_reservations_respect_the_daily_limit,
            retention_deletes_only_expired_finished_jobs,
            retention_batches_are_bounded,
            clock_and_size_are_sane,
        );

        /// Checks share a store in production: the whole suite, twice, on one store.
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn every_check_twice_on_one_store() {
            let (_guard, store) = $open().await;
            $crate::testing::conformance::run_all(store.clone()).await;
            $crate::testing::conformance::run_all(store).await;
        }
    };
    (@checks $open:path; $($check:ident,)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (_guard, store) = $open().await;
                $crate::testing::conformance::$check(store).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------
// helpers

#[track_caller]
fn ok<T, E: Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("conformance: {what}: unexpected error {e:?}"),
    }
}

#[track_caller]
fn err<T: Debug>(r: crate::Result<T>, what: &str) -> StoreError {
    match r {
        Ok(v) => panic!("conformance: {what}: expected an error, got Ok({v:?})"),
        Err(e) => e,
    }
}

/// A tenant name no other check (or earlier run on the same store) uses.
pub fn fresh_tenant(prefix: &str) -> String {
    format!("{prefix}-{}", JobId::new())
}

/// Steps `a` (echo, pure), `b` (http, side_effect, after a), `c` (http, side_effect).
pub fn sample_plan() -> Plan {
    ok(
        serde_json::from_value(json!({"steps": [
            {"id": "a", "tool": "echo", "args": {"text": "hi"}},
            {"id": "b", "tool": "http", "effect": "side_effect", "needs": ["a"],
             "args": {"method": "POST", "url": "http://127.0.0.1:9/refunds"}},
            {"id": "c", "tool": "http", "effect": "side_effect"}
        ]})),
        "sample plan must deserialize",
    )
}

fn new_job(tenant: &str, key: Option<&str>) -> NewJob {
    NewJob {
        tenant: tenant.to_string(),
        idempotency_key: key.map(str::to_string),
        plan: sample_plan(),
        input: json!({"order": "A-17"}),
    }
}

async fn submit(store: &DynStore, tenant: &str) -> JobSummary {
    let (s, created) = ok(store.submit(new_job(tenant, None), None).await, "submit");
    assert!(
        created,
        "conformance: a submit without a key must create a job"
    );
    s
}

fn started(
    tenant: &str,
    job: JobId,
    step: &str,
    attempt: u32,
    effect: EffectClass,
    token: u64,
) -> EventBody {
    EventBody::StepStarted {
        step: step.to_string(),
        attempt,
        invocation_key: invocation_key(tenant, job, step, 0),
        tool: if step == "a" { "echo" } else { "http" }.to_string(),
        effect,
        fencing_token: token,
    }
}

fn succeeded(step: &str, attempt: u32) -> EventBody {
    EventBody::StepSucceeded {
        step: step.to_string(),
        attempt,
        output: json!({"step": step, "ok": true}),
    }
}

fn append(job: JobId, token: u64, expected_last_seq: u64, events: Vec<EventBody>) -> Append {
    Append {
        job_id: job,
        token,
        expected_last_seq,
        events,
    }
}

async fn events(store: &DynStore, job: JobId) -> Vec<RecordedEvent> {
    ok(
        store.read_events(Scope::System, job, 0, 100_000).await,
        "read_events",
    )
}

async fn job(store: &DynStore, id: JobId) -> JobSummary {
    match ok(store.get_job(Scope::System, id).await, "get_job") {
        Some(s) => s,
        None => panic!("conformance: job {id} vanished"),
    }
}

/// Claims every claimable job under a lease longer than the suite, so a check that needs
/// to know exactly what is claimable starts from "nothing".
pub async fn park_claimable(store: &DynStore) {
    for _ in 0..1000 {
        if ok(store.claim(PARKING, HOUR_MS, 1000).await, "park claim").is_empty() {
            return;
        }
    }
    panic!("conformance: claim keeps returning jobs; leases are not being kept");
}

/// Leases `id` for an hour and records its pure step `a` started and succeeded.
async fn lease_and_run_a(store: &DynStore, tenant: &str, worker: &str, id: JobId) -> Lease {
    let l = lease_job(store, worker, HOUR_MS, id).await;
    ok(
        store
            .append(append(
                id,
                l.token,
                1,
                vec![
                    started(tenant, id, "a", 1, EffectClass::Pure, l.token),
                    succeeded("a", 1),
                ],
            ))
            .await,
        "run a",
    );
    l
}

/// Claims `id` for `worker`, giving back any other job the claim picked up.
async fn lease_job(store: &DynStore, worker: &str, ttl_ms: u64, id: JobId) -> Lease {
    for _ in 0..100 {
        let leases = ok(store.claim(worker, ttl_ms, 1000).await, "claim");
        let others: Vec<(JobId, u64)> = leases
            .iter()
            .filter(|l| l.job_id != id)
            .map(|l| (l.job_id, l.token))
            .collect();
        ok(store.release(worker, &others).await, "release others");
        if let Some(l) = leases.into_iter().find(|l| l.job_id == id) {
            return l;
        }
        if others.is_empty() {
            break;
        }
    }
    panic!("conformance: runnable job {id} could not be claimed");
}

/// The stored log verifies (G7), folds (G5), and the projection row agrees with the fold.
async fn assert_consistent(store: &DynStore, id: JobId) -> Vec<RecordedEvent> {
    let evs = events(store, id).await;
    let head = match aetheris_proof::verify_chain(id, &evs) {
        Ok(h) => h,
        Err(e) => panic!("conformance: job {id}: hash chain broken: {e}"),
    };
    let state = match JobState::from_events(&evs) {
        Ok(Some(s)) => s,
        Ok(None) => panic!("conformance: job {id} has no events"),
        Err(e) => panic!("conformance: job {id}: stored log does not fold: {e}"),
    };
    let row = job(store, id).await;
    assert_eq!(
        row.last_seq, state.last_seq,
        "job {id}: projection last_seq"
    );
    assert_eq!(row.status, state.status, "job {id}: projection status");
    assert_eq!(state.last_hash, head, "job {id}: fold head hash");
    evs
}

async fn audit_rows(store: &DynStore, scope: Scope<'_>) -> Vec<AuditRecord> {
    ok(
        store
            .list_audit(
                scope,
                AuditFilter {
                    after_id: 0,
                    limit: 10_000,
                    action: None,
                },
            )
            .await,
        "list_audit",
    )
}
