//! Evidence packages end to end: what a package holds, that exports are byte-identical,
//! redaction keeps the chain verifiable and leaks nothing it names, export refuses unsound
//! store data, and verification accepts rotated keys and nothing else.

mod common;

use aetheris_proof::evidence::{self, Manifest, FILES};
use aetheris_proof::testkit::{long_job, realistic_job};
use aetheris_proof::{EvidenceError, EvidenceInput, RedactionRule};
use aetheris_runtime::{JobId, JobStatus, RecordedEvent};
use common::*;

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn a_package_holds_the_six_files_and_verifies() {
    let f = fixture();
    let zip = f.package(&[]);
    let report = aetheris_proof::verify(&zip, &[key().public_key()]).unwrap();
    assert_eq!(report.verdict, "valid");
    assert_eq!(report.job_id, job_id().to_string());
    assert_eq!(report.tenant, TENANT);
    assert_eq!(report.status, JobStatus::Succeeded);
    assert_eq!(report.events, f.log.events.len() as u64);
    assert_eq!(
        report.chain_head,
        hex::encode(f.log.events.last().unwrap().hash)
    );
    assert_eq!(report.signer_keyid, key().keyid());
    assert_eq!(report.exporter, EXPORTER);
    assert_eq!(report.export_time_ms, FINISHED_AT);
    // signal_received, wait_completed, step_confirmed
    assert_eq!(report.approvals, 3);
    assert_eq!(report.ledger_rows, 3);
    let cp = report.checkpoint.clone().unwrap();
    assert_eq!((cp.leaf_index, cp.tree_size), (LEAF_INDEX, LEAF_INDEX + 1));
    assert_eq!(cp.origin, "aetheris/tenant/acme");
    assert!(report.summary().contains("VALID"));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["verdict"], "valid");
    assert_eq!(json["status"], "succeeded");

    // The archive: exactly the six files in order, fixed time, deflated.
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&zip)).unwrap();
    let names: Vec<String> = (0..archive.len())
        .map(|i| archive.by_index(i).unwrap().name().unwrap().to_string())
        .collect();
    assert_eq!(names, FILES);
    for i in 0..archive.len() {
        let e = archive.by_index(i).unwrap();
        let t = e.last_modified().unwrap();
        assert_eq!(
            (t.year(), t.month(), t.day(), t.hour(), t.minute()),
            (1980, 1, 1, 0, 0)
        );
        assert_eq!(e.compression(), zip::CompressionMethod::Deflated);
        assert!(e.extra_data().is_none_or(|x| x.is_empty()));
    }

    // events.jsonl: one JSON object per event, each with the fields the docs name.
    let files = files_of(&zip);
    let lines: Vec<serde_json::Value> = files
        .events
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), f.log.events.len());
    for (line, e) in lines.iter().zip(&f.log.events) {
        assert_eq!(line["seq"], e.seq);
        assert_eq!(line["kind"], e.body.kind());
        assert_eq!(line["hash"], hex::encode(e.hash));
        assert_eq!(line["payload"], serde_json::to_value(&e.body).unwrap());
    }
    let manifest: Manifest = serde_json::from_slice(&files.manifest).unwrap();
    assert!(manifest.redactions.is_empty());
    let job: serde_json::Value = serde_json::from_slice(&files.job).unwrap();
    assert_eq!(job["plan"]["steps"][2]["id"], "charge");
    assert_eq!(job["status"], "succeeded");
}

#[test]
fn exports_of_the_same_history_are_byte_identical() {
    let f = fixture();
    let a = f.package(&[]);
    let b = f.package(&[]);
    assert_eq!(a, b);

    // As a store would hand it over after a reload: events read back from their JSON form,
    // ledger rows in another order. Same bytes.
    let json = serde_json::to_string(&f.log.events).unwrap();
    let reloaded: Vec<RecordedEvent> = serde_json::from_str(&json).unwrap();
    let mut ledger = f.ledger.clone();
    ledger.reverse();
    let input = EvidenceInput {
        events: &reloaded,
        ledger: &ledger,
        ..f.input(&[])
    };
    assert_eq!(aetheris_proof::build(&input, &key()).unwrap(), a);

    let rules = [RedactionRule::requested("steps.fetch.output", "pii").unwrap()];
    assert_eq!(f.package(&rules), f.package(&rules));
    assert_ne!(f.package(&rules), a);
}

#[test]
fn redacting_a_step_output_keeps_the_chain_verifiable_and_lists_it() {
    let f = fixture();
    let rules = [RedactionRule::requested("steps.fetch.output", "customer data").unwrap()];
    let zip = f.package(&rules);
    let report = aetheris_proof::verify(&zip, &[key().public_key()]).unwrap();
    assert_eq!(report.redactions.len(), 1);
    let r = &report.redactions[0];
    assert_eq!(
        (r.seq, r.kind.as_str(), r.path.as_str()),
        (3, "step_succeeded", "steps.fetch.output")
    );
    assert_eq!(r.reason, "customer data");
    let payload = f.log.events[2].body.payload();
    assert_eq!(
        r.digest,
        format!(
            "sha256:{}",
            hex::encode(aetheris_proof::payload_digest(&payload))
        )
    );
    let files = files_of(&zip);
    for name in FILES {
        assert!(
            !contains(files.get(name).unwrap(), "\"currency\":\"EUR\""),
            "{name}"
        );
    }
    assert!(contains(
        &files.events,
        &format!("{{\"redacted\":\"{}\"}}", r.digest)
    ));
    assert!(report.summary().contains("steps.fetch.output"));
}

#[test]
fn every_redaction_path_hides_what_it_names_and_nothing_breaks() {
    let f = fixture();
    let cases: &[(&[&str], &[&str], &[u64])] = &[
        (&["input"], &["tok_visa_4242"], &[1]),
        (&["signals.approval.payload"], &["ok to charge"], &[6, 7]),
        (&["signals.*.payload"], &["ok to charge"], &[6, 7]),
        (&["steps.approve.output"], &["ok to charge"], &[6, 7]),
        (
            &["steps.*.output", "output"],
            &["ch_3PqL", "EUR", "m-1@example.com"],
            &[3, 6, 7, 11, 15, 16],
        ),
    ];
    for (paths, secrets, seqs) in cases {
        let rules: Vec<RedactionRule> = paths
            .iter()
            .map(|p| RedactionRule::requested(p, "test").unwrap())
            .collect();
        let zip = f.package(&rules);
        let report = aetheris_proof::verify(&zip, &[key().public_key()])
            .unwrap_or_else(|e| panic!("{paths:?}: {e}"));
        let got: Vec<u64> = report.redactions.iter().map(|r| r.seq).collect();
        assert_eq!(got, *seqs, "{paths:?}");
        let files = files_of(&zip);
        for s in *secrets {
            for name in FILES {
                assert!(
                    !contains(files.get(name).unwrap(), s),
                    "{paths:?}: {s} in {name}"
                );
            }
        }
    }
    // Who approved and when stays visible when the signal's payload is redacted.
    let zip = f.package(&[RedactionRule::requested("signals.approval.payload", "t").unwrap()]);
    let approvals: serde_json::Value = serde_json::from_slice(&files_of(&zip).approvals).unwrap();
    assert_eq!(approvals[0]["by"], "alice@example.com");
    assert_eq!(approvals[0]["redacted"], true);
    // The submission redacted: job.json says so.
    let zip = f.package(&[RedactionRule::requested("input", "t").unwrap()]);
    let job: serde_json::Value = serde_json::from_slice(&files_of(&zip).job).unwrap();
    assert_eq!(job["submission_redacted"], true);
}

#[test]
fn a_requested_redaction_that_matches_nothing_is_an_error_a_policy_one_is_not() {
    let f = fixture();
    let typo = [RedactionRule::requested("steps.fecth.output", "pii").unwrap()];
    let e = aetheris_proof::build(&f.input(&typo), &key()).unwrap_err();
    assert!(matches!(e, EvidenceError::Redaction { .. }), "{e}");
    let policy = [RedactionRule::policy("steps.fecth.output", "tenant policy").unwrap()];
    let zip = aetheris_proof::build(&f.input(&policy), &key()).unwrap();
    assert!(aetheris_proof::verify(&zip, &[key().public_key()])
        .unwrap()
        .redactions
        .is_empty());
    assert!(RedactionRule::requested("steps.x", "r").is_err());
}

#[test]
fn export_refuses_unsound_store_data() {
    let f = fixture();
    let mut ledger = f.ledger.clone();
    ledger[0].attempt += 1;
    let bad = EvidenceInput {
        ledger: &ledger,
        ..f.input(&[])
    };
    assert!(matches!(
        aetheris_proof::build(&bad, &key()),
        Err(EvidenceError::Input(_))
    ));

    let short = &f.ledger[1..];
    let bad = EvidenceInput {
        ledger: short,
        ..f.input(&[])
    };
    assert!(matches!(
        aetheris_proof::build(&bad, &key()),
        Err(EvidenceError::Input(_))
    ));

    let bad = EvidenceInput {
        tenant: "globex",
        ..f.input(&[])
    };
    assert!(matches!(
        aetheris_proof::build(&bad, &key()),
        Err(EvidenceError::Input(_))
    ));

    let mut events = f.log.events.clone();
    events[4].recorded_at_ms += 1;
    let bad = EvidenceInput {
        events: &events,
        ..f.input(&[])
    };
    let e = aetheris_proof::build(&bad, &key()).unwrap_err();
    assert!(e.to_string().contains("seq 5"), "{e}");

    let bad = EvidenceInput {
        events: &[],
        ..f.input(&[])
    };
    assert!(aetheris_proof::build(&bad, &key()).is_err());

    // Transparency material for another leaf, or another tenant's log.
    let mut t = f.transparency.clone();
    t.leaf_index = 2;
    let bad = EvidenceInput {
        transparency: Some(&t),
        ..f.input(&[])
    };
    assert!(matches!(
        aetheris_proof::build(&bad, &key()),
        Err(EvidenceError::Input(_))
    ));
    let other =
        aetheris_proof::checkpoint::prove_job("globex", &f.leaves, 3, 4, 0, &key()).unwrap();
    let bad = EvidenceInput {
        transparency: Some(&other),
        ..f.input(&[])
    };
    assert!(matches!(
        aetheris_proof::build(&bad, &key()),
        Err(EvidenceError::Input(_))
    ));
}

#[test]
fn an_unfinished_job_exports_without_a_checkpoint() {
    let f = fixture();
    let events = &f.log.events[..8];
    let log = realistic_job(job_id(), TENANT).unwrap();
    assert_eq!(&log.events[..8], events);
    // The ledger as it was at seq 8: only fetch and its status then.
    let mut partial = aetheris_proof::testkit::JobLog::submit(
        job_id(),
        TENANT,
        serde_json::to_value(match &events[0].body {
            aetheris_runtime::EventBody::JobSubmitted { plan, .. } => plan,
            _ => unreachable!(),
        })
        .unwrap(),
        match &events[0].body {
            aetheris_runtime::EventBody::JobSubmitted { input, .. } => input.clone(),
            _ => unreachable!(),
        },
        events[0].recorded_at_ms,
    )
    .unwrap();
    let mut i = 1;
    while i < events.len() {
        let at = events[i].recorded_at_ms;
        let batch: Vec<_> = events[i..]
            .iter()
            .take_while(|e| e.recorded_at_ms == at)
            .map(|e| e.body.clone())
            .collect();
        i += batch.len();
        partial.append(at, batch).unwrap();
    }
    assert_eq!(partial.events, events);
    let ledger = partial.ledger();
    let input = EvidenceInput {
        events,
        ledger: &ledger,
        transparency: None,
        ..f.input(&[])
    };
    let zip = aetheris_proof::build(&input, &key()).unwrap();
    let report = aetheris_proof::verify(&zip, &[key().public_key()]).unwrap();
    assert_eq!(report.status, JobStatus::Running);
    assert_eq!(report.events, 8);
    assert!(report.checkpoint.is_none());
    assert!(report.summary().contains("checkpoint:  none"));
}

#[test]
fn verification_accepts_any_listed_key_and_refuses_others() {
    let f = fixture();
    let zip = f.package(&[]);
    let both = [other_key().public_key(), key().public_key()];
    assert_eq!(
        aetheris_proof::verify(&zip, &both).unwrap().signer_keyid,
        key().keyid()
    );
    let e = aetheris_proof::verify(&zip, &[other_key().public_key()]).unwrap_err();
    assert_eq!(e.failing_file(), Some("envelope.json"), "{e}");
    assert!(matches!(
        aetheris_proof::verify(&zip, &[]),
        Err(EvidenceError::Key(_))
    ));

    // Signed by the new key after a rotation: old and new listed, it verifies.
    let zip = aetheris_proof::build(&f.input(&[]), &other_key());
    // The checkpoint inside was signed by the old key: both keys are needed.
    let zip = zip.unwrap();
    assert!(aetheris_proof::verify(&zip, &both).is_ok());
    let e = aetheris_proof::verify(&zip, &[other_key().public_key()]).unwrap_err();
    assert!(e.to_string().contains("transparency"), "{e}");
}

#[test]
fn a_long_job_round_trips() {
    let log = long_job(JobId::new(), TENANT, 501).unwrap();
    let ledger = log.ledger();
    let input = EvidenceInput {
        job_id: log.job_id,
        tenant: TENANT,
        events: &log.events,
        ledger: &ledger,
        exporter: EXPORTER,
        redactions: &[],
        transparency: None,
    };
    let zip = aetheris_proof::build(&input, &key()).unwrap();
    let report = evidence::verify(&zip, &[key().public_key()]).unwrap();
    assert_eq!(report.events, log.events.len() as u64);
    assert_eq!(report.ledger_rows, (log.events.len() - 2) / 2);
}
