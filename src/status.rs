//! `aetheris status [--json]`: the supervision view of a deployment, the CLI side of
//! `GET /v1/system/actors` (admins of the system tenant). Every gateway and worker process
//! the store knows — live, or stopped announcing in the last 10 minutes — with its actors
//! by kind (alive, mailbox depth, restarts, panics, the last of each with its reason and
//! age), leases held, heartbeat age against its TTL, uptime and version. `--json` prints
//! the server's answer as it is; the human form is [`render`], one block per process.

use crate::client::{block_on, Api};
use aetheris_actors::supervision::{ActorFigures, Incident};
use aetheris_api::routes::system::{ProcessView, SystemActors};
use std::fmt::Write;
use std::process::ExitCode;

pub fn run(server: &str, token: Option<&str>, json: bool) -> Result<ExitCode, String> {
    let api = Api::from_args(server, token)?;
    block_on(async move {
        let (_, answer) = api.send(api.get("/v1/system/actors")).await?;
        if json {
            println!("{answer}");
            return Ok(ExitCode::SUCCESS);
        }
        let view: SystemActors = serde_json::from_value(answer)
            .map_err(|e| format!("the server's answer does not read as a process list: {e}"))?;
        print!("{}", render(&view, now_ms()));
        Ok(ExitCode::SUCCESS)
    })?
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `1.2s`, `3m04s`, `2h05m`, `3d04h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// The whole view for a human: a summary line, then one block per process.
pub fn render(view: &SystemActors, now_ms: i64) -> String {
    let mut out = String::new();
    let live = |kind: &str| {
        view.processes
            .iter()
            .filter(|p| p.kind == kind && p.live)
            .count()
    };
    let gone = view.processes.iter().filter(|p| !p.live).count();
    let _ = writeln!(
        out,
        "{} live gateway(s), {} live worker(s){}",
        live("gateway"),
        live("worker"),
        if gone > 0 {
            format!(", {gone} not announcing (killed, hung or cut off from the store)")
        } else {
            String::new()
        }
    );
    for p in &view.processes {
        out.push('\n');
        out.push_str(&process_block(p, &view.processes, now_ms));
    }
    out
}

fn process_block(p: &ProcessView, all: &[ProcessView], now_ms: i64) -> String {
    let mut out = String::new();
    let r = &p.report;
    let heartbeat = match (p.heartbeat_age_ms, p.ttl_ms) {
        (Some(age), Some(ttl)) => format!("heartbeat {} ago, TTL {}", duration(age), duration(ttl)),
        _ => "heartbeat age unknown".to_string(),
    };
    let state = if p.live { "live" } else { "NOT ANNOUNCING" };
    let _ = writeln!(out, "{} {}  {state}, {heartbeat}", p.kind, p.id);
    if r.version.is_empty() {
        let _ = writeln!(out, "  (no report: a process of an older version)");
        return out;
    }
    let mut facts = vec![
        format!("version {}", r.version),
        format!("up {}", duration(r.uptime_ms)),
    ];
    if !r.host.is_empty() {
        facts.push(format!("host {}", r.host));
    }
    facts.push(format!("pid {}", r.pid));
    if let Some(held) = r.leases_held {
        let renewed = r
            .lease_heartbeat_age_ms
            .map(|a| format!(", renewed {} ago", duration(a)))
            .unwrap_or_default();
        facts.push(format!("leases held {held}{renewed}"));
    }
    let _ = writeln!(out, "  {}", facts.join(", "));
    let siblings: Vec<&str> = all
        .iter()
        .filter(|o| o.id != p.id && !r.instance.is_empty() && o.report.instance == r.instance)
        .map(|o| o.id.as_str())
        .collect();
    if !siblings.is_empty() {
        let _ = writeln!(
            out,
            "  same OS process as {} (their actors are counted together)",
            siblings.join(", ")
        );
    }
    let _ = writeln!(
        out,
        "  {:<14}{:>6}{:>9}{:>10}{:>8}  LAST",
        "ACTORS", "ALIVE", "MAILBOX", "RESTARTS", "PANICS"
    );
    for a in &r.actors {
        let _ = writeln!(out, "  {}", actor_line(a, now_ms));
    }
    out
}

fn actor_line(a: &ActorFigures, now_ms: i64) -> String {
    let mut last = Vec::new();
    if let Some(i) = &a.last_restart {
        last.push(format!("restart {}", incident(i, now_ms)));
    }
    if let Some(i) = &a.last_panic {
        last.push(format!("panic {}", incident(i, now_ms)));
    }
    let last = if last.is_empty() {
        "-".to_string()
    } else {
        last.join("; ")
    };
    format!(
        "{:<14}{:>6}{:>9}{:>10}{:>8}  {last}",
        a.kind, a.alive, a.mailbox_depth, a.restarts, a.panics
    )
}

/// `tool_panic 2m03s ago`, with what was said if anything.
fn incident(i: &Incident, now_ms: i64) -> String {
    let ago = duration(u64::try_from(now_ms - i.at_ms).unwrap_or(0));
    match &i.detail {
        Some(d) => format!("{} {ago} ago: {d}", i.reason),
        None => format!("{} {ago} ago", i.reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_actors::supervision::ProcessReport;

    fn process(kind: &str, id: &str, live: bool, report: ProcessReport) -> ProcessView {
        ProcessView {
            kind: kind.into(),
            id: id.into(),
            live,
            heartbeat_age_ms: Some(400),
            ttl_ms: Some(5000),
            report,
        }
    }

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(400), "0.4s");
        assert_eq!(duration(61_000), "1m01s");
        assert_eq!(duration(3_723_000), "1h02m");
        assert_eq!(duration(90_000_000), "1d01h");
    }

    #[test]
    fn a_worker_with_a_restarted_job_actor_and_a_dead_process_are_shown() {
        let now = 1_000_000;
        let worker = ProcessReport {
            version: "0.1.0".into(),
            instance: "i1".into(),
            host: "h".into(),
            pid: 42,
            started_at_ms: 1,
            uptime_ms: 125_000,
            leases_held: Some(3),
            lease_heartbeat_age_ms: Some(300),
            lease_ttl_ms: Some(5000),
            actors: vec![
                ActorFigures {
                    kind: "registry".into(),
                    alive: 1,
                    ..ActorFigures::default()
                },
                ActorFigures {
                    kind: "job".into(),
                    alive: 3,
                    restarts: 2,
                    last_restart: Some(Incident {
                        reason: "tool_panic".into(),
                        at_ms: now - 5_000,
                        detail: None,
                    }),
                    ..ActorFigures::default()
                },
                ActorFigures {
                    kind: "tool".into(),
                    alive: 2,
                    mailbox_depth: 1,
                    panics: 2,
                    last_panic: Some(Incident {
                        reason: "panic".into(),
                        at_ms: now - 5_000,
                        detail: Some("tool panicked: boom".into()),
                    }),
                    ..ActorFigures::default()
                },
            ],
        };
        let gateway = ProcessReport {
            version: "0.1.0".into(),
            instance: "i1".into(),
            ..ProcessReport::default()
        };
        let view = SystemActors {
            processes: vec![
                process("gateway", "g1", true, gateway),
                process("worker", "w1", true, worker),
                process("worker", "w2", false, ProcessReport::default()),
            ],
        };
        let text = render(&view, now);
        assert!(
            text.starts_with("1 live gateway(s), 1 live worker(s), 1 not announcing"),
            "{text}"
        );
        assert!(
            text.contains("worker w1  live, heartbeat 0.4s ago, TTL 5.0s"),
            "{text}"
        );
        assert!(
            text.contains(
                "version 0.1.0, up 2m05s, host h, pid 42, leases held 3, renewed 0.3s ago"
            ),
            "{text}"
        );
        assert!(text.contains("same OS process as g1"), "{text}");
        let job = text
            .lines()
            .find(|l| l.trim_start().starts_with("job"))
            .unwrap();
        assert!(job.contains("restart tool_panic 5.0s ago"), "{job}");
        let tool = text
            .lines()
            .find(|l| l.trim_start().starts_with("tool"))
            .unwrap();
        assert!(
            tool.contains("panic panic 5.0s ago: tool panicked: boom"),
            "{tool}"
        );
        assert!(text.contains("worker w2  NOT ANNOUNCING"), "{text}");
        assert!(text.contains("(no report"), "{text}");
    }
}
