//! Waits, sleeps, signals and confirmations in the pure core: decisions resolve them from
//! state and time alone, and the fold enforces their state machines.

use aetheris_runtime::{
    decide, ConfirmOutcome, EventBody, JobId, JobState, JobStatus, RecordedEvent, StepStatus,
};
use serde_json::json;

struct Log {
    job: JobId,
    events: Vec<RecordedEvent>,
    state: Option<JobState>,
}

impl Log {
    fn new(plan: serde_json::Value) -> Log {
        let mut l = Log {
            job: JobId::new(),
            events: vec![],
            state: None,
        };
        l.push(
            1000,
            EventBody::JobSubmitted {
                tenant: "t".into(),
                plan: serde_json::from_value(plan).unwrap(),
                input: json!({}),
                idempotency_key: None,
            },
        )
        .expect("genesis");
        l
    }
    fn push(&mut self, at: i64, body: EventBody) -> Result<(), String> {
        let seq = self.events.len() as u64 + 1;
        let e = RecordedEvent {
            job_id: self.job,
            seq,
            recorded_at_ms: at,
            body,
            prev_hash: [0; 32],
            hash: [0; 32],
        };
        match self.state.as_mut() {
            None => self.state = Some(JobState::genesis(&e).map_err(|e| e.to_string())?),
            Some(s) => s.apply(&e).map_err(|e| e.to_string())?,
        }
        self.events.push(e);
        Ok(())
    }
    fn st(&self) -> &JobState {
        self.state.as_ref().unwrap()
    }
}

#[test]
fn a_wait_consumes_a_signal_that_arrived_before_or_after_it_started() {
    let mut l = Log::new(
        json!({"steps": [{"id": "approve", "wait": {"signal": "approval", "timeout": "1h"}}]}),
    );
    let d = decide(l.st(), 1000, 4);
    assert_eq!(d.start, vec!["approve"]);
    l.push(
        1001,
        EventBody::WaitStarted {
            step: "approve".into(),
            timeout_ms: Some(3_600_000),
        },
    )
    .unwrap();
    let d = decide(l.st(), 2000, 4);
    assert!(d.resolve.is_empty() && d.start.is_empty());
    assert_eq!(d.wake_at_ms, Some(1001 + 3_600_000));
    l.push(
        3000,
        EventBody::SignalReceived {
            signal: "approval".into(),
            signal_id: "s1".into(),
            payload: json!({"ok": true}),
            by: Some("ada".into()),
            command_id: 1,
        },
    )
    .unwrap();
    assert!(
        l.push(
            3001,
            EventBody::SignalReceived {
                signal: "approval".into(),
                signal_id: "s1".into(),
                payload: json!({}),
                by: None,
                command_id: 2
            }
        )
        .is_err(),
        "a signal id applies once"
    );
    let d = decide(l.st(), 3001, 4);
    assert_eq!(d.resolve.len(), 1);
    l.push(3002, d.resolve[0].clone()).unwrap();
    assert_eq!(l.st().steps["approve"].status, StepStatus::Succeeded);
    assert_eq!(
        l.st().steps["approve"].output.as_ref().unwrap()["by"],
        "ada"
    );
    assert!(l.st().signals.is_empty());
    assert!(matches!(
        decide(l.st(), 3003, 4).finish,
        Some(EventBody::JobSucceeded { .. })
    ));
}

#[test]
fn a_wait_times_out_to_failure_or_its_default() {
    for (default, want) in [
        (None, StepStatus::Failed),
        (Some(json!("no")), StepStatus::Succeeded),
    ] {
        let mut wait = json!({"signal": "go", "timeout": "10s"});
        if let Some(d) = &default {
            wait["default"] = d.clone();
        }
        let mut l = Log::new(json!({"steps": [{"id": "w", "wait": wait}]}));
        l.push(
            1000,
            EventBody::WaitStarted {
                step: "w".into(),
                timeout_ms: Some(10_000),
            },
        )
        .unwrap();
        assert!(decide(l.st(), 10_999, 1).resolve.is_empty());
        let d = decide(l.st(), 11_000, 1);
        assert_eq!(
            d.resolve,
            vec![EventBody::WaitTimedOut { step: "w".into() }]
        );
        l.push(11_000, d.resolve[0].clone()).unwrap();
        assert_eq!(l.st().steps["w"].status, want);
    }
}

#[test]
fn a_sleep_is_a_durable_timer_and_parking_is_a_status() {
    let mut l = Log::new(
        json!({"steps": [{"id": "nap", "sleep": "5s"}, {"id": "after", "tool": "echo", "needs": ["nap"]}]}),
    );
    l.push(
        1000,
        EventBody::SleepStarted {
            step: "nap".into(),
            duration_ms: 5000,
        },
    )
    .unwrap();
    assert_eq!(l.st().status, JobStatus::Running);
    let d = decide(l.st(), 1500, 4);
    assert_eq!(d.wake_at_ms, Some(6000));
    l.push(
        1500,
        EventBody::JobParked {
            wake_at_ms: Some(6000),
        },
    )
    .unwrap();
    assert_eq!(l.st().status, JobStatus::Waiting);
    let d = decide(l.st(), 6000, 4);
    assert_eq!(
        d.resolve,
        vec![EventBody::SleepFinished { step: "nap".into() }]
    );
    l.push(6001, d.resolve[0].clone()).unwrap();
    assert_eq!(l.st().status, JobStatus::Running, "progress unparks");
    assert_eq!(decide(l.st(), 6001, 4).start, vec!["after"]);
    assert!(
        l.push(6002, EventBody::SleepFinished { step: "nap".into() })
            .is_err(),
        "a timer fires once"
    );
}

#[test]
fn confirmation_resolves_outcome_unknown_once() {
    let mut l = Log::new(json!({"steps": [{"id": "pay", "tool": "http"}]}));
    let started = |attempt| EventBody::StepStarted {
        step: "pay".into(),
        attempt,
        invocation_key: "k".into(),
        tool: "http".into(),
        effect: aetheris_runtime::EffectClass::SideEffect,
        fencing_token: 1,
    };
    l.push(1, started(1)).unwrap();
    l.push(
        2,
        EventBody::StepOutcomeUnknown {
            step: "pay".into(),
            attempt: 1,
            reason: "crash".into(),
        },
    )
    .unwrap();
    let confirm = |outcome| EventBody::StepConfirmed {
        step: "pay".into(),
        outcome,
        output: None,
        by: "ops".into(),
        note: None,
        command_id: 1,
    };
    l.push(3, confirm(ConfirmOutcome::NotExecuted)).unwrap();
    assert!(
        l.push(4, confirm(ConfirmOutcome::Succeeded)).is_err(),
        "confirm twice is refused"
    );
    assert_eq!(
        decide(l.st(), 5, 1).start,
        vec!["pay"],
        "not_executed lets it run"
    );
    l.push(5, started(2)).unwrap();
    assert_eq!(l.st().steps["pay"].invocation_key.as_deref(), Some("k"));
}
