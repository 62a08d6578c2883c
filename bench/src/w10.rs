//! W10 of `aetheris bench`: retention. `--w10-jobs` one-step jobs run through a tenant
//! whose retention is 1 ms, on an in-process worker whose own collector is off, so the
//! bench drives retention (`aetheris_actors::gc::run_pass`, the collector's own pass, in
//! batches of `BATCH`) and times it:
//!
//! 1. fill: the jobs run (`WINDOW` in flight) and finish; the store's size is the peak;
//! 2. W1 (10 no-op steps × `--w10-w1-jobs` jobs at concurrency 16) without retention
//!    running, then again while a retention pass deletes the filled jobs (the pass then
//!    finishes alone); steps/s of both;
//! 3. a second fill and a retention pass alone: the store's size after it (the space the
//!    first pass freed is reused, so the size stays bounded) and the cost per job deleted.
//!
//! One run (not `--runs`): its figures are totals over many jobs.

use crate::report::W10Report;
use crate::runner::{self, progress, FinishedFeed};
use aetheris_actors::gc::{self, GcConfig};
use aetheris_actors::WorkerConfig;
use aetheris_runtime::Plan;
use aetheris_store::{DynStore, RetentionPolicy};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The tenant whose jobs retention deletes.
const TENANT: &str = "w10";
/// Jobs in flight while filling.
const WINDOW: usize = 256;
/// Jobs per retention batch (the default of `[retention] batch_size`).
const BATCH: usize = 500;
/// W1's concurrency inside W10.
const W1_CONCURRENCY: usize = 16;

/// Runs W10 once on a fresh store.
pub fn run(fresh: &runner::Fresh, jobs: usize, w1_jobs: usize) -> Result<W10Report, String> {
    progress(&format!("W10 ({jobs} jobs)…"));
    fresh.run(move |o| once(o, jobs, w1_jobs))
}

async fn once(opener: runner::Opener, jobs: usize, w1_jobs: usize) -> Result<W10Report, String> {
    let store = opener.open().await?;
    let config = WorkerConfig {
        max_jobs: 64,
        gc: GcConfig {
            enabled: false,
            ..GcConfig::default()
        },
        ..WorkerConfig::default()
    };
    let (worker, mut feed) =
        runner::start_worker(store.clone(), runner::tools_with_noop(), config, 65_536).await?;
    let one_step = runner::plan(json!({"steps": [{"id": "a", "tool": "noop"}]}))?;
    let size_before = size(&store).await;

    let t = Instant::now();
    fill(&store, &one_step, jobs, &mut feed).await?;
    let fill_jobs_per_s = jobs as f64 / t.elapsed().as_secs_f64();
    let peak = size(&store).await;
    // Past the 1 ms retention at the store clock.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let policy = RetentionPolicy {
        default_ms: None,
        tenants: BTreeMap::from([(TENANT.to_string(), Some(1))]),
    };
    let gc_config = GcConfig {
        enabled: false,
        batch_size: BATCH,
        ..GcConfig::default()
    };

    let w1_steps = (w1_jobs * crate::w1::STEPS) as f64;
    let w1_plan = crate::w1::ten_step_plan()?;
    let t = Instant::now();
    crate::w1::drive(&store, &w1_plan, W1_CONCURRENCY, w1_jobs, worker.feed()).await?;
    let w1_steps_per_s_without_gc = w1_steps / t.elapsed().as_secs_f64();

    let gc_store = store.clone();
    let (gc_policy, gc_cfg) = (policy.clone(), gc_config.clone());
    let gc_started = Instant::now();
    let pass = actix_rt::spawn(async move {
        let r = gc::run_pass(&gc_store, &gc_policy, &gc_cfg).await;
        (r, gc_started.elapsed())
    });
    let t = Instant::now();
    crate::w1::drive(&store, &w1_plan, W1_CONCURRENCY, w1_jobs, worker.feed()).await?;
    let w1_steps_per_s_with_gc = w1_steps / t.elapsed().as_secs_f64();
    let (first, first_wall) = pass.await.map_err(|e| format!("W10 retention pass: {e}"))?;
    let first = first.map_err(|e| format!("W10 retention pass: {e}"))?;
    let after_first_gc = size(&store).await;

    progress(&format!("W10: second fill of {jobs} jobs…"));
    fill(&store, &one_step, jobs, &mut feed).await?;
    let peak_second = size(&store).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let t = Instant::now();
    let second = gc::run_pass(&store, &policy, &gc_config)
        .await
        .map_err(|e| format!("W10 retention pass: {e}"))?;
    let second_wall = t.elapsed();
    let after_second_gc = size(&store).await;
    worker.drain().await;

    let per_job =
        |wall: Duration, deleted: u64| wall.as_secs_f64() * 1000.0 / deleted.max(1) as f64;
    Ok(W10Report {
        jobs: jobs as u64,
        batch_size: BATCH as u64,
        size_before_bytes: size_before,
        peak_bytes: peak,
        after_gc_bytes: after_first_gc,
        second_peak_bytes: peak_second,
        after_second_gc_bytes: after_second_gc,
        fill_jobs_per_s,
        deleted_while_w1: first.deleted,
        gc_ms_per_job_alone: per_job(second.busy, second.deleted),
        gc_ms_per_job_under_w1: per_job(first.busy, first.deleted),
        gc_pass_s_alone: second_wall.as_secs_f64(),
        gc_pass_s_under_w1: first_wall.as_secs_f64(),
        deleted_alone: second.deleted,
        w1_jobs: w1_jobs as u64,
        w1_steps_per_s_without_gc,
        w1_steps_per_s_with_gc,
    })
}

async fn size(store: &DynStore) -> u64 {
    store.size_bytes().await.unwrap_or(0)
}

/// Runs `jobs` jobs of `plan` in `TENANT`, `WINDOW` in flight, until every one finished.
async fn fill(
    store: &DynStore,
    plan: &Plan,
    jobs: usize,
    feed: &mut FinishedFeed,
) -> Result<(), String> {
    let (mut submitted, mut finished) = (0usize, 0usize);
    let mut ours = std::collections::HashSet::new();
    while finished < jobs {
        while submitted < jobs && submitted - finished < WINDOW {
            ours.insert(runner::submit(store, TENANT, plan, Value::Null).await?);
            submitted += 1;
        }
        match tokio::time::timeout(Duration::from_secs(60), feed.recv()).await {
            Ok(Ok((id, _))) => {
                if ours.remove(&id) {
                    finished += 1;
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                return Err(format!("W10: the finished feed lost {n} jobs"))
            }
            Ok(Err(e)) => return Err(format!("W10: the finished feed: {e}")),
            Err(_) => return Err(format!("W10: no job finished for 60 s ({finished}/{jobs})")),
        }
    }
    Ok(())
}
