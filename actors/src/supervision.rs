//! The supervision figures of this process: for each kind of actor (registry, lease
//! manager, job actors, rate limiters, tool actors) how many are alive, how many messages
//! wait in their mailboxes, how often they were restarted or panicked and the last reason
//! and time of each; the leases this process holds and how fresh its last lease heartbeat
//! is; its version, start time and uptime. The same figures are
//!
//! - Prometheus series (`aetheris_actors{kind}`, `aetheris_mailbox_depth{kind}`,
//!   `aetheris_actor_restarts_total{kind,reason}`, `aetheris_actor_panics_total{kind,reason}`,
//!   `aetheris_leases_held`, `aetheris_lease_heartbeat_age_seconds`, …), rendered with every
//!   scrape of the process ([`scrape_series`]);
//! - a [`ProcessReport`] announced with each heartbeat in the store's presence table, which
//!   is how `GET /v1/system/actors` and `aetheris status` show every live process, not only
//!   the one answering.
//!
//! **Mailbox depth.** actix exposes no queue length, so it is counted: every message sent
//! to an actor of ours carries a [`Queued`] ticket made when it is sent; the ticket counts
//! one up for the receiving kind and one down when it is dropped — when the handler is done
//! with the message, or when the message is dropped unhandled (its actor stopped). The
//! depth of a kind is therefore the messages sent to its actors and not yet handled
//! (including the one being handled). A tool actor handles each call at once and runs it
//! as a future of its own, so its depth counts calls in flight instead.
//!
//! Invariants: the figures are process-wide (every node of one process shares them, like
//! its metrics recorder); labels are kinds and bounded reasons, never job ids; a reason's
//! free-text detail (a tool's panic message) goes to the report only, clipped, never to a
//! label.

use crate::metrics as m;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// The kinds of actor of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorKind {
    Registry,
    LeaseManager,
    Job,
    RateLimiter,
    Tool,
}

impl ActorKind {
    pub const ALL: [ActorKind; 5] = [
        ActorKind::Registry,
        ActorKind::LeaseManager,
        ActorKind::Job,
        ActorKind::RateLimiter,
        ActorKind::Tool,
    ];

    /// The `kind` label.
    pub const fn as_str(self) -> &'static str {
        match self {
            ActorKind::Registry => "registry",
            ActorKind::LeaseManager => "lease_manager",
            ActorKind::Job => "job",
            ActorKind::RateLimiter => "rate_limiter",
            ActorKind::Tool => "tool",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The longest detail kept with an incident (a panic message can be anything).
pub const MAX_DETAIL_BYTES: usize = 256;

/// One restart or panic: why (the bounded `reason` label), when (ms since the epoch, this
/// process's clock) and, where one is known, what was said (clipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Incident {
    pub reason: String,
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The figures of one kind of actor in one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ActorFigures {
    /// registry, lease_manager, job, rate_limiter or tool.
    pub kind: String,
    /// Actors of this kind alive now.
    pub alive: u64,
    /// Messages sent to them and not yet handled (tool actors: calls in flight).
    pub mailbox_depth: u64,
    /// Crashed actors restarted from storage (or given up on) since the process started.
    pub restarts: u64,
    /// The restarts by reason.
    pub restarts_by_reason: BTreeMap<String, u64>,
    /// Panics caught since the process started.
    pub panics: u64,
    pub last_restart: Option<Incident>,
    pub last_panic: Option<Incident>,
}

/// What a process announces about itself with each heartbeat (stored as JSON in the
/// presence table; every field has a default, so a report of another version still reads).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct ProcessReport {
    /// The `aetheris` version it runs.
    pub version: String,
    /// One id per OS process: a gateway and a worker of one process (`aetheris dev`)
    /// share it, and their figures.
    pub instance: String,
    pub host: String,
    pub pid: u32,
    /// When the process started (ms since the epoch, its own clock).
    pub started_at_ms: i64,
    /// How long it had been running when it made this report.
    pub uptime_ms: u64,
    /// Leases it holds (processes that run a worker).
    pub leases_held: Option<u64>,
    /// Since its leases were last renewed (0 while it holds none).
    pub lease_heartbeat_age_ms: Option<u64>,
    /// Its lease TTL: a heartbeat age near it means leases are about to be lost.
    pub lease_ttl_ms: Option<u64>,
    /// Its actors by kind.
    pub actors: Vec<ActorFigures>,
}

#[derive(Default)]
struct Incidents {
    restarts_by_reason: BTreeMap<&'static str, u64>,
    last_restart: Option<Incident>,
    last_panic: Option<Incident>,
}

#[derive(Default)]
struct KindState {
    alive: AtomicI64,
    mailbox: AtomicI64,
    restarts: AtomicU64,
    panics: AtomicU64,
    incidents: Mutex<Incidents>,
}

struct State {
    kinds: [KindState; 5],
    instance: String,
    started: Instant,
    started_at_ms: i64,
    /// Leases held by every lease manager of this process.
    leases_held: AtomicI64,
    /// Local ms when this process's leases were last known renewed (or none were held).
    lease_fresh_ms: AtomicI64,
    /// The lease TTL of the workers of this process (0: it runs none).
    lease_ttl_ms: AtomicU64,
    /// 1 when the last store round trip of a heartbeat succeeded, 0 when it failed, -1
    /// before the first.
    store_up: AtomicI64,
}

fn state() -> &'static State {
    static STATE: OnceLock<State> = OnceLock::new();
    STATE.get_or_init(|| State {
        kinds: Default::default(),
        instance: uuid::Uuid::now_v7().to_string(),
        started: Instant::now(),
        started_at_ms: crate::clock::local_ms(),
        leases_held: AtomicI64::new(0),
        lease_fresh_ms: AtomicI64::new(crate::clock::local_ms()),
        lease_ttl_ms: AtomicU64::new(0),
        store_up: AtomicI64::new(-1),
    })
}

fn kind(k: ActorKind) -> &'static KindState {
    &state().kinds[k.index()]
}

/// Starts the clock of this process's uptime (the first call wins; later ones change
/// nothing). Every process start-up calls it.
pub fn init() {
    let _ = state();
}

/// An actor of `k` started.
pub fn started(k: ActorKind) {
    kind(k).alive.fetch_add(1, Ordering::Relaxed);
}

/// An actor of `k` stopped.
pub fn stopped(k: ActorKind) {
    kind(k).alive.fetch_sub(1, Ordering::Relaxed);
}

/// `delta` actors of `k` started (negative: stopped), for an owner that counts its actors
/// itself (the registry its job actors, whose `stopped` does not run after a panic).
pub fn alive_changed(k: ActorKind, delta: i64) {
    kind(k).alive.fetch_add(delta, Ordering::Relaxed);
}

fn clip(text: &str) -> String {
    if text.len() <= MAX_DETAIL_BYTES {
        return text.to_string();
    }
    let mut end = MAX_DETAIL_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn incident(reason: &str, detail: Option<&str>) -> Incident {
    Incident {
        reason: reason.to_string(),
        at_ms: crate::clock::local_ms(),
        detail: detail.map(clip),
    }
}

/// A crashed actor of `k` was restarted (or given up on) for `reason`, a bounded label.
pub fn restarted(k: ActorKind, reason: &'static str) {
    metrics::counter!(m::ACTOR_RESTARTS, "kind" => k.as_str(), "reason" => reason).increment(1);
    let s = kind(k);
    s.restarts.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut i) = s.incidents.lock() {
        *i.restarts_by_reason.entry(reason).or_insert(0) += 1;
        i.last_restart = Some(incident(reason, None));
    }
}

/// A panic was caught in an actor of `k`: `reason` is the bounded label, `detail` what the
/// panic said (kept in the report only).
pub fn panicked(k: ActorKind, reason: &'static str, detail: Option<&str>) {
    metrics::counter!(m::ACTOR_PANICS, "kind" => k.as_str(), "reason" => reason).increment(1);
    let s = kind(k);
    s.panics.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut i) = s.incidents.lock() {
        i.last_panic = Some(incident(reason, detail));
    }
}

/// A message on its way to an actor of one kind: counted in that kind's mailbox depth from
/// when it is made until it is dropped (see the module doc). Cloning a message makes
/// another ticket; all tickets are equal (they are not part of what a message says).
pub struct Queued(ActorKind);

impl Queued {
    /// A ticket for a message to an actor of `k`.
    pub fn new(k: ActorKind) -> Queued {
        kind(k).mailbox.fetch_add(1, Ordering::Relaxed);
        Queued(k)
    }

    pub fn kind(&self) -> ActorKind {
        self.0
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        kind(self.0).mailbox.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Clone for Queued {
    fn clone(&self) -> Queued {
        Queued::new(self.0)
    }
}

impl PartialEq for Queued {
    fn eq(&self, _: &Queued) -> bool {
        true
    }
}

impl Eq for Queued {}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queued({})", self.0.as_str())
    }
}

/// A worker of this process runs with leases of `ttl_ms`.
pub fn worker_started(ttl_ms: u64) {
    let s = state();
    s.lease_ttl_ms.fetch_max(ttl_ms, Ordering::Relaxed);
    s.lease_fresh_ms
        .fetch_max(crate::clock::local_ms(), Ordering::Relaxed);
}

/// A lease manager now holds `delta` more leases (negative: fewer).
pub fn leases_changed(delta: i64) {
    state().leases_held.fetch_add(delta, Ordering::Relaxed);
}

/// A lease manager's leases are known renewed now (a heartbeat succeeded, or it holds
/// none, so none can be lost).
pub fn leases_fresh() {
    state()
        .lease_fresh_ms
        .fetch_max(crate::clock::local_ms(), Ordering::Relaxed);
}

/// Whether the store answered this process's last heartbeat.
pub fn store_answered(up: bool) {
    state().store_up.store(i64::from(up), Ordering::Relaxed);
}

fn figures(k: ActorKind) -> ActorFigures {
    let s = kind(k);
    let (by_reason, last_restart, last_panic) = match s.incidents.lock() {
        Ok(i) => (
            i.restarts_by_reason
                .iter()
                .map(|(r, n)| (r.to_string(), *n))
                .collect(),
            i.last_restart.clone(),
            i.last_panic.clone(),
        ),
        Err(_) => Default::default(),
    };
    ActorFigures {
        kind: k.as_str().to_string(),
        alive: u64::try_from(s.alive.load(Ordering::Relaxed)).unwrap_or(0),
        mailbox_depth: u64::try_from(s.mailbox.load(Ordering::Relaxed)).unwrap_or(0),
        restarts: s.restarts.load(Ordering::Relaxed),
        restarts_by_reason: by_reason,
        panics: s.panics.load(Ordering::Relaxed),
        last_restart,
        last_panic,
    }
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_default()
}

/// Since this process's leases were last known renewed, if it runs a worker.
fn lease_heartbeat_age_ms() -> Option<u64> {
    let s = state();
    (s.lease_ttl_ms.load(Ordering::Relaxed) > 0).then(|| {
        let fresh = s.lease_fresh_ms.load(Ordering::Relaxed);
        u64::try_from(crate::clock::local_ms() - fresh).unwrap_or(0)
    })
}

/// This process's figures now.
pub fn report() -> ProcessReport {
    let s = state();
    let ttl = s.lease_ttl_ms.load(Ordering::Relaxed);
    let worker = ttl > 0;
    ProcessReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        instance: s.instance.clone(),
        host: host_name(),
        pid: std::process::id(),
        started_at_ms: s.started_at_ms,
        uptime_ms: u64::try_from(s.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        leases_held: worker
            .then(|| u64::try_from(s.leases_held.load(Ordering::Relaxed)).unwrap_or(0)),
        lease_heartbeat_age_ms: lease_heartbeat_age_ms(),
        lease_ttl_ms: worker.then_some(ttl),
        actors: ActorKind::ALL.into_iter().map(figures).collect(),
    }
}

/// The series computed from these figures at scrape time: actors alive and mailbox depth
/// per kind, uptime, build info, whether the store answers, how often it did not, and for
/// a process that runs a worker its leases held, lease heartbeat age and lease TTL.
pub fn scrape_series() -> Vec<m::ScrapeGauge> {
    let s = state();
    let mut out: Vec<m::ScrapeGauge> = Vec::new();
    for k in ActorKind::ALL {
        let alive = kind(k).alive.load(Ordering::Relaxed).max(0) as f64;
        out.push((m::ACTORS, vec![("kind", k.as_str().into())], alive));
    }
    for k in ActorKind::ALL {
        let depth = kind(k).mailbox.load(Ordering::Relaxed).max(0) as f64;
        out.push((m::MAILBOX_DEPTH, vec![("kind", k.as_str().into())], depth));
    }
    out.push((m::UPTIME, vec![], s.started.elapsed().as_secs_f64()));
    out.push((
        m::BUILD_INFO,
        vec![("version", env!("CARGO_PKG_VERSION").into())],
        1.0,
    ));
    // Nothing before the first heartbeat: no answer yet is not an outage.
    let up = s.store_up.load(Ordering::Relaxed);
    if up >= 0 {
        out.push((m::STORE_UP, vec![], up as f64));
    }
    out.push((
        m::STORE_UNAVAILABLE,
        vec![],
        aetheris_store::unavailable_errors() as f64,
    ));
    if let Some(age) = lease_heartbeat_age_ms() {
        let ttl = s.lease_ttl_ms.load(Ordering::Relaxed);
        let held = s.leases_held.load(Ordering::Relaxed).max(0) as f64;
        out.push((m::LEASES_HELD, vec![], held));
        out.push((m::LEASE_HEARTBEAT_AGE, vec![], age as f64 / 1000.0));
        out.push((m::LEASE_TTL, vec![], ttl as f64 / 1000.0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // The figures are process-wide and other tests of this crate start actors, so each
    // check here compares before and after on a kind and counter it alone touches, or
    // checks what only grows.

    #[test]
    fn a_ticket_counts_a_message_until_it_is_dropped() {
        let depth = || kind(ActorKind::RateLimiter).mailbox.load(Ordering::SeqCst);
        let before = depth();
        let a = Queued::new(ActorKind::RateLimiter);
        let b = a.clone();
        assert!(depth() >= before + 2);
        assert_eq!(a, b, "tickets do not make messages differ");
        drop(a);
        drop(b);
        // Other tests may hold tickets of their own meanwhile; ours are gone.
        assert!(depth() <= before + 2);
    }

    #[test]
    fn restarts_and_panics_keep_the_last_reason_and_a_clipped_detail() {
        let long = "x".repeat(1000) + "é";
        panicked(ActorKind::Tool, "panic", Some(&long));
        let r = report();
        let tool = r.actors.iter().find(|a| a.kind == "tool").unwrap();
        assert!(tool.panics >= 1);
        let last = tool.last_panic.clone().unwrap();
        assert_eq!(last.reason, "panic");
        let detail = last.detail.unwrap();
        assert!(
            detail.len() <= MAX_DETAIL_BYTES + '…'.len_utf8(),
            "{}",
            detail.len()
        );
        assert!(last.at_ms > 0);

        restarted(ActorKind::Job, "fold");
        let job = report()
            .actors
            .into_iter()
            .find(|a| a.kind == "job")
            .unwrap();
        assert!(job.restarts >= 1);
        assert!(job.restarts_by_reason.get("fold").copied().unwrap_or(0) >= 1);
        assert!(job.last_restart.is_some());
    }

    #[test]
    fn the_report_lists_every_kind_and_reads_back_from_json() {
        let r = report();
        let kinds: Vec<&str> = r.actors.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["registry", "lease_manager", "job", "rate_limiter", "tool"]
        );
        assert_eq!(r.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(r.pid, std::process::id());
        let json = serde_json::to_value(&r).unwrap();
        let back: ProcessReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, r);
        // A report of another version (fields missing or added) still reads.
        let old: ProcessReport =
            serde_json::from_value(serde_json::json!({"version": "0.0.1", "new_field": 1}))
                .unwrap();
        assert_eq!(old.version, "0.0.1");
        assert!(old.actors.is_empty());
    }

    #[test]
    fn scrape_series_have_every_kind_and_no_job_ids() {
        let series = scrape_series();
        for k in ActorKind::ALL {
            for name in [m::ACTORS, m::MAILBOX_DEPTH] {
                assert!(
                    series
                        .iter()
                        .any(|(n, l, _)| *n == name && l == &vec![("kind", k.as_str().to_string())]),
                    "{name} {}",
                    k.as_str()
                );
            }
        }
        for (name, labels, _) in &series {
            assert!(m::definition(name).is_some(), "{name} is not declared");
            for (key, _) in labels {
                assert!(["kind", "version"].contains(key), "{name}: label {key}");
            }
        }
    }
}
