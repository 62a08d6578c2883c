//! W8 of `aetheris bench`: evidence. One job is grown to `--evidence-events` events (as W4
//! grows its job) and finished, so it joins its tenant's transparency log; then its evidence
//! package is exported from the store exactly as `GET /v1/jobs/{id}/evidence` exports it
//! (`aetheris_store::evidence::export_job`: read, prove, sign, zip) and verified offline
//! (`aetheris_proof::verify`: digests, signature, the whole chain, the inclusion proof).
//! Goal: export + verify of a 10,000-event job within 1 s in release.

use crate::report::W8Report;
use crate::runner::{median, ms, progress, progress_done, Fresh, Opener};
use crate::w4::{append, grow, submit_and_claim};
use aetheris_runtime::EventBody;
use aetheris_store::evidence::export_job;
use aetheris_store::Scope;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

/// Exports (each followed by a verify) timed per run.
const EXPORTS: usize = 3;

struct W8Run {
    export_ms: f64,
    verify_ms: f64,
    package_bytes: usize,
}

/// Runs W8 `runs` times on fresh stores; medians.
pub fn run(fresh: &Fresh, runs: usize, events: u64) -> Result<W8Report, String> {
    let mut all = Vec::new();
    for r in 0..runs {
        progress(&format!("W8 run {}/{runs} ({events} events)…", r + 1));
        all.push(fresh.run(move |o| once(o, events))?);
    }
    progress_done();
    let m = |f: fn(&W8Run) -> f64| median(all.iter().map(f).collect());
    let package_bytes = m(|w| w.package_bytes as f64);
    Ok(W8Report {
        events,
        export_ms: m(|w| w.export_ms),
        verify_ms: m(|w| w.verify_ms),
        total_ms: m(|w| w.export_ms + w.verify_ms),
        package_bytes: package_bytes as u64,
        package_bytes_per_event: package_bytes / events.max(1) as f64,
    })
}

async fn once(opener: Opener, events: u64) -> Result<W8Run, String> {
    let store = opener.open().await?;
    let mut g = submit_and_claim(&store).await?;
    grow(&store, &mut g, events.saturating_sub(1).max(1)).await?;
    append(
        &store,
        &g,
        g.seq,
        vec![EventBody::JobSucceeded {
            output: json!({"w8": true}),
        }],
    )
    .await?;
    let key =
        Arc::new(aetheris_proof::SigningKey::generate().map_err(|e| format!("evidence key: {e}"))?);
    let public = [key.public_key()];
    let (mut export, mut verify, mut bytes) = (Vec::new(), Vec::new(), 0);
    for _ in 0..EXPORTS {
        let t = Instant::now();
        let zip = export_job(
            store.as_ref(),
            Scope::System,
            g.job,
            &[],
            "aetheris-bench",
            key.clone(),
        )
        .await
        .map_err(|e| format!("W8 export: {e}"))?
        .map_err(|e| format!("W8 export: {e}"))?;
        export.push(ms(t.elapsed()));
        let t = Instant::now();
        let report =
            aetheris_proof::verify(&zip, &public).map_err(|e| format!("W8 verify: {e}"))?;
        verify.push(ms(t.elapsed()));
        if report.events != g.seq + 1 {
            return Err(format!(
                "W8: the package holds {} events, the job {}",
                report.events,
                g.seq + 1
            ));
        }
        bytes = zip.len();
    }
    Ok(W8Run {
        export_ms: median(export),
        verify_ms: median(verify),
        package_bytes: bytes,
    })
}
