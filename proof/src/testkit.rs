//! Event histories for tests and the benchmark (not part of the supported API). Every
//! event after the submission goes through the runtime's append planner, so hashes, store
//! times and ledger rows are exactly what a store would record.

use crate::evidence::LedgerRecord;
use aetheris_runtime::chain::{event_hash, GENESIS};
use aetheris_runtime::{
    invocation_key, plan_append, Append, ConfirmOutcome, EffectClass, EventBody, JobHead, JobId,
    JobStatus, LedgerRow, Plan, RecordedEvent,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;

/// A job's log and ledger as a store would hold them.
#[derive(Debug, Clone)]
pub struct JobLog {
    pub job_id: JobId,
    pub tenant: String,
    pub events: Vec<RecordedEvent>,
    head: JobHead,
    rows: BTreeMap<String, LedgerRow>,
}

impl JobLog {
    /// A log holding only the submission, at store time `at_ms`.
    pub fn submit(
        job_id: JobId,
        tenant: &str,
        plan: Value,
        input: Value,
        at_ms: i64,
    ) -> Result<Self, String> {
        let plan: Plan = serde_json::from_value(plan).map_err(|e| format!("plan: {e}"))?;
        let body = EventBody::JobSubmitted {
            tenant: tenant.to_string(),
            plan,
            input,
            idempotency_key: None,
        };
        let hash = event_hash(&GENESIS, job_id, 1, at_ms, body.kind(), &body.payload());
        Ok(JobLog {
            job_id,
            tenant: tenant.to_string(),
            events: vec![RecordedEvent {
                job_id,
                seq: 1,
                recorded_at_ms: at_ms,
                body,
                prev_hash: GENESIS,
                hash,
            }],
            head: JobHead {
                status: JobStatus::Queued,
                last_seq: 1,
                last_hash: hash,
                token: 1,
                updated_at_ms: at_ms,
            },
            rows: BTreeMap::new(),
        })
    }

    /// Appends `bodies` in one transaction at store time `at_ms`, as a store does.
    pub fn append(&mut self, at_ms: i64, bodies: Vec<EventBody>) -> Result<(), String> {
        let rows = &self.rows;
        let planned = plan_append(
            &self.head,
            Append {
                job_id: self.job_id,
                token: self.head.token,
                expected_last_seq: self.head.last_seq,
                events: bodies,
            },
            at_ms,
            |step| Ok::<_, Infallible>(rows.get(step).cloned()),
        )
        .map_err(|e| e.to_string())?;
        self.rows.extend(planned.ledger);
        self.head = planned.head;
        self.events.extend(planned.events);
        Ok(())
    }

    /// The ledger rows the store would hold.
    pub fn ledger(&self) -> Vec<LedgerRecord> {
        self.rows
            .iter()
            .map(|(step, row)| LedgerRecord::new(step.clone(), row))
            .collect()
    }

    fn started(&self, step: &str, attempt: u32, tool: &str, effect: EffectClass) -> EventBody {
        EventBody::StepStarted {
            step: step.to_string(),
            attempt,
            invocation_key: invocation_key(&self.tenant, self.job_id, step, 0),
            tool: tool.to_string(),
            effect,
            fencing_token: self.head.token,
        }
    }
}

/// Store time of the first event of the built jobs.
pub const T0: i64 = 1_764_000_000_000;

/// A realistic finished job: an idempotent HTTP fetch; a wait for an `approval` signal
/// (sent by alice); a side-effecting charge whose worker died mid-call
/// (`step_outcome_unknown`), confirmed by bob with its output; a notification that failed
/// once and succeeded on retry; `job_succeeded`. 16 events.
pub fn realistic_job(job_id: JobId, tenant: &str) -> Result<JobLog, String> {
    let plan = json!({"steps": [
        {"id": "fetch", "tool": "http", "effect": "idempotent",
         "args": {"url": "https://billing.example.com/invoices/42"}},
        {"id": "approve", "needs": ["fetch"], "wait": {"signal": "approval"}},
        {"id": "charge", "needs": ["approve"], "tool": "payments", "effect": "side_effect",
         "args": {"amount": "${steps.fetch.output.amount}", "card": "${input.card}"}},
        {"id": "notify", "needs": ["charge"], "tool": "email", "retry": {"max_attempts": 3},
         "args": {"to": "ops@example.com"}}
    ]});
    let input =
        json!({"customer": "c-981", "card": "tok_visa_4242", "note": "quarterly invoice ünïcødé"});
    let mut log = JobLog::submit(job_id, tenant, plan, input, T0)?;
    let fetch = log.started("fetch", 1, "http", EffectClass::Idempotent);
    log.append(T0 + 12, vec![fetch])?;
    log.append(
        T0 + 250,
        vec![EventBody::StepSucceeded {
            step: "fetch".into(),
            attempt: 1,
            output: json!({"amount": 1250, "currency": "EUR", "invoice": 42, "ratio": 0.1}),
        }],
    )?;
    log.append(
        T0 + 260,
        vec![
            EventBody::WaitStarted {
                step: "approve".into(),
                timeout_ms: Some(86_400_000),
            },
            EventBody::JobParked {
                wake_at_ms: Some(T0 + 260 + 86_400_000),
            },
        ],
    )?;
    let approval = json!({"approved": true, "comment": "ok to charge"});
    log.append(
        T0 + 60_000,
        vec![
            EventBody::SignalReceived {
                signal: "approval".into(),
                signal_id: "sig-7f3a".into(),
                payload: approval.clone(),
                by: Some("alice@example.com".into()),
                command_id: 7,
            },
            EventBody::WaitCompleted {
                step: "approve".into(),
                signal_id: "sig-7f3a".into(),
                output: approval,
            },
        ],
    )?;
    let charge = log.started("charge", 1, "payments", EffectClass::SideEffect);
    log.append(T0 + 60_010, vec![charge])?;
    log.append(
        T0 + 90_000,
        vec![
            EventBody::StepOutcomeUnknown {
                step: "charge".into(),
                attempt: 1,
                reason: "the worker lost its lease during the call".into(),
            },
            EventBody::JobParked { wake_at_ms: None },
        ],
    )?;
    log.append(
        T0 + 120_000,
        vec![EventBody::StepConfirmed {
            step: "charge".into(),
            outcome: ConfirmOutcome::Succeeded,
            output: Some(json!({"charge_id": "ch_3PqL", "status": "captured"})),
            by: "bob@example.com".into(),
            note: Some("seen in the payments dashboard".into()),
            command_id: 9,
        }],
    )?;
    let notify = log.started("notify", 1, "email", EffectClass::Idempotent);
    log.append(T0 + 120_010, vec![notify])?;
    log.append(
        T0 + 121_000,
        vec![EventBody::StepFailed {
            step: "notify".into(),
            attempt: 1,
            error: "SMTP 451 try again later".into(),
            retryable: true,
            retry_after_ms: Some(1000),
        }],
    )?;
    let notify = log.started("notify", 2, "email", EffectClass::Idempotent);
    log.append(T0 + 122_000, vec![notify])?;
    log.append(
        T0 + 122_500,
        vec![
            EventBody::StepSucceeded {
                step: "notify".into(),
                attempt: 2,
                output: json!({"message_id": "<m-1@example.com>"}),
            },
            EventBody::JobSucceeded {
                output: json!({"charged": "ch_3PqL"}),
            },
        ],
    )?;
    Ok(log)
}

/// A finished job of about `events` events: echo steps, each started and succeeded in its
/// own append with a ~200-byte output, then `job_succeeded`.
pub fn long_job(job_id: JobId, tenant: &str, events: usize) -> Result<JobLog, String> {
    let steps = events.saturating_sub(2).max(2) / 2;
    let plan = json!({"steps": (0..steps)
        .map(|k| json!({"id": format!("s{k}"), "tool": "echo", "args": {"tag": k.to_string()}}))
        .collect::<Vec<_>>()});
    let mut log = JobLog::submit(job_id, tenant, plan, json!({"topic": "load"}), T0)?;
    for k in 0..steps {
        let step = format!("s{k}");
        let at = T0 + 1 + k as i64 * 3;
        let started = log.started(&step, 1, "echo", EffectClass::Pure);
        log.append(at, vec![started])?;
        log.append(
            at + 1,
            vec![EventBody::StepSucceeded {
                step,
                attempt: 1,
                output: json!({"tag": k.to_string(), "text": "lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua; ut enim ad minim veniam, quis nostrud exercitation"}),
            }],
        )?;
    }
    let at = T0 + 1 + steps as i64 * 3;
    log.append(
        at,
        vec![EventBody::JobSucceeded {
            output: json!({"steps": steps}),
        }],
    )?;
    Ok(log)
}
