//! W8 measurement (not a test): export and verify a package of a 10,000-event job and
//! print the times and the package size per event. Run it in release:
//!
//! ```sh
//! cargo run --release -p aetheris-proof --example evidence_w8 [EVENTS]
//! ```

use aetheris_proof::testkit::long_job;
use aetheris_proof::{build, verify, EvidenceInput, SigningKey};
use aetheris_runtime::JobId;
use std::time::Instant;

fn main() -> Result<(), String> {
    let events: usize = match std::env::args().nth(1) {
        Some(n) => n
            .parse()
            .map_err(|_| format!("not a number of events: {n}"))?,
        None => 10_000,
    };
    let log = long_job(JobId::new(), "acme", events)?;
    let ledger = log.ledger();
    let key = SigningKey::generate().map_err(|e| e.to_string())?;
    let input = EvidenceInput {
        job_id: log.job_id,
        tenant: "acme",
        events: &log.events,
        ledger: &ledger,
        exporter: "aetheris-bench",
        redactions: &[],
        transparency: None,
    };
    let t = Instant::now();
    let zip = build(&input, &key).map_err(|e| e.to_string())?;
    let export = t.elapsed();
    let t = Instant::now();
    let report = verify(&zip, &[key.public_key()]).map_err(|e| e.to_string())?;
    let check = t.elapsed();
    let n = report.events as f64;
    let files = aetheris_proof::evidence::read_package(&zip, &Default::default())
        .map_err(|e| e.to_string())?;
    let unzipped: usize = aetheris_proof::evidence::FILES
        .iter()
        .filter_map(|f| files.get(f))
        .map(Vec::len)
        .sum();
    println!(
        "events: {}  export: {:.1} ms  verify: {:.1} ms  total: {:.1} ms  package: {} bytes ({:.1} bytes/event; {:.1} unzipped)",
        report.events,
        export.as_secs_f64() * 1e3,
        check.as_secs_f64() * 1e3,
        (export + check).as_secs_f64() * 1e3,
        zip.len(),
        zip.len() as f64 / n,
        unzipped as f64 / n
    );
    Ok(())
}
