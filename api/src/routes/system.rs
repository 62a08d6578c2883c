//! The supervision view of the whole deployment (`GET /v1/system/actors`, admins of the
//! system tenant; `aetheris status` prints it): every process in the presence table —
//! gateways and workers, live or expired in the last 10 minutes — with what it reported
//! with its last announcement: its actors by kind (alive, mailbox depth, restarts and
//! panics with the last reason and time), leases held and how fresh their renewal is,
//! version, host, start time and uptime, plus its heartbeat age on the store clock.
//!
//! Invariant: the answer is read from the store, never from this process's memory, so
//! every gateway answers the same for every process (its own included), and a process
//! that stopped announcing shows as not live rather than vanishing at once.

use super::{schema, Access, Answer, AppState, Caller, HttpMethod, RouteSpec};
use crate::auth::Permission;
use crate::problem::ApiError;
use actix_web::{web, HttpResponse};
use aetheris_actors::supervision::ProcessReport;
use aetheris_store::ProcessStatus;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const ACTORS: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/system/actors",
    Access::System(Permission::TenantAdmin),
    "systemActors",
    "Every gateway and worker process with its actors by kind: alive, mailbox depth, \
     restarts and panics with the last reason, leases held, heartbeat age, uptime, version \
     (admins of the system tenant)",
    Answer::json(200, "the processes", schema::<SystemActors>),
    |r| r.to(actors),
);

/// `GET /v1/system/actors`.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct SystemActors {
    /// Ordered by kind (gateway, worker), then id.
    pub processes: Vec<ProcessView>,
}

/// One announced process.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
pub struct ProcessView {
    /// `gateway` or `worker`.
    pub kind: String,
    /// Its id (a worker's id is the owner named in its leases).
    pub id: String,
    /// Its announcement is current; false once it expired without being withdrawn (the
    /// process was killed, hangs, or cannot reach the store).
    pub live: bool,
    /// Since its last announcement, on the store clock (`null` for a process of an older
    /// version).
    pub heartbeat_age_ms: Option<u64>,
    /// How long one announcement keeps it live.
    pub ttl_ms: Option<u64>,
    /// What it reported with its last announcement (its uptime is moved on by the
    /// heartbeat age, to now).
    #[serde(flatten)]
    pub report: ProcessReport,
}

impl ProcessView {
    /// The view of one presence row; a report that does not read (another version, or
    /// damage) shows as an empty one.
    pub fn of(p: ProcessStatus) -> ProcessView {
        let mut report: ProcessReport = serde_json::from_str(&p.report).unwrap_or_else(|e| {
            tracing::warn!(process = %p.id, error = %e, "unreadable process report");
            ProcessReport::default()
        });
        if report.started_at_ms > 0 {
            report.uptime_ms = report
                .uptime_ms
                .saturating_add(p.heartbeat_age_ms.unwrap_or(0));
        }
        ProcessView {
            kind: p.kind.as_str().to_string(),
            id: p.id,
            live: p.live,
            heartbeat_age_ms: p.heartbeat_age_ms,
            ttl_ms: p.ttl_ms,
            report,
        }
    }
}

async fn actors(_p: Caller, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let processes = st.store.list_processes().await?;
    Ok(HttpResponse::Ok().json(SystemActors {
        processes: processes.into_iter().map(ProcessView::of).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_store::ProcessKind;

    fn status(report: &str) -> ProcessStatus {
        ProcessStatus {
            kind: ProcessKind::Worker,
            id: "w1".into(),
            live: true,
            heartbeat_age_ms: Some(250),
            ttl_ms: Some(5000),
            report: report.into(),
        }
    }

    #[test]
    fn a_report_is_shown_flat_with_its_uptime_moved_to_now() {
        let report = serde_json::json!({
            "version": "9.9.9", "pid": 7, "started_at_ms": 1000, "uptime_ms": 60_000,
            "leases_held": 3,
            "actors": [{"kind": "job", "alive": 3, "restarts": 2,
                        "restarts_by_reason": {"tool_panic": 2},
                        "last_restart": {"reason": "tool_panic", "at_ms": 5}}]
        });
        let v = ProcessView::of(status(&report.to_string()));
        assert_eq!(v.report.uptime_ms, 60_250);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["kind"], "worker");
        assert_eq!(json["version"], "9.9.9");
        assert_eq!(json["leases_held"], 3);
        assert_eq!(json["actors"][0]["last_restart"]["reason"], "tool_panic");
        assert_eq!(json["heartbeat_age_ms"], 250);
    }

    #[test]
    fn an_unreadable_or_empty_report_shows_as_empty() {
        for text in ["not json", "{}", "[1]"] {
            let v = ProcessView::of(status(text));
            assert_eq!(v.report.version, "", "{text}");
            assert!(v.report.actors.is_empty());
            assert_eq!(v.report.uptime_ms, 0, "no start, no uptime: {text}");
            assert!(v.live);
        }
    }
}
