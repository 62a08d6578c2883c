//! Per-tenant rate limits (DESIGN §3 RateLimiter): one `RateLimiter` actor per tenant,
//! created on demand on a dedicated arbiter and stopped when idle, owning that tenant's
//! token buckets — job admission, tool calls per second (overall and per tool), LLM tokens
//! per minute (reserved before a call, settled after). `RateLimiters` is the handle the
//! gateway and the job actors share.
//!
//! Invariants: an admission over the limit is refused (the gateway answers 429 with
//! Retry-After and stores nothing); a tool call over the limit waits its turn (buckets go
//! into debt in arrival order), it never fails. The cap on running jobs (`max_running_jobs`) is not a
//! bucket: it is handed to the store with every claim (`running_caps`), which counts
//! leases across all workers and never grants one past the cap.
//!
//! Buckets live in each process; a tenant's limits are global. Every gateway and worker
//! announces itself in the store each heartbeat (`Announcement`), learns how many of its
//! kind are live, and sizes its buckets to `1/that` of each limit (gateways share
//! admissions, workers tool calls and LLM tokens), so N live workers together never go
//! past the limit however many join or leave. A fixed `share` in the limits file
//! overrides the count. See docs/limits.md.

use crate::clock::local_ms as now_ms;
use crate::metrics as m;
use crate::supervision::{self, ActorKind, Queued};
use actix::prelude::*;
use aetheris_runtime::bucket::TokenBucket;
use aetheris_store::{DynStore, ProcessKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// One tenant's limits. `None` = unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Jobs admitted per second (burst: `admission_burst`, default = one second's worth).
    #[serde(default)]
    pub admissions_per_s: Option<f64>,
    #[serde(default)]
    pub admission_burst: Option<f64>,
    /// Tool calls per second over all tools.
    #[serde(default)]
    pub tool_calls_per_s: Option<f64>,
    /// Tool calls per second for specific tools.
    #[serde(default)]
    pub tool_calls_per_s_by_tool: BTreeMap<String, f64>,
    /// LLM tokens per minute.
    #[serde(default)]
    pub llm_tokens_per_min: Option<f64>,
    /// LLM tokens per UTC day (store clock), counted in the store so the budget holds
    /// across restarts and workers; a call that would pass it waits (agent steps park on
    /// the `budget` signal; docs/agents.md).
    #[serde(default)]
    pub llm_tokens_per_day: Option<u64>,
    /// Jobs running at once across all workers, enforced when workers claim jobs (the
    /// store counts leases; never scaled by `share`).
    #[serde(default)]
    pub max_running_jobs: Option<u64>,
    /// How long the tenant's finished jobs are kept before retention deletes them:
    /// `90s`, `45m`, `12h`, `30d`, or `forever`. Unset: the process's default
    /// (`[retention] default`). Not a rate: it is here so it is set and shown with them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([1-9][0-9]*[smhd]|forever)$"))]
    pub retention: Option<String>,
}

/// Defaults plus per-tenant overrides (an override replaces the default field by field).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default)]
    pub defaults: TenantLimits,
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantLimits>,
    /// A fixed share of every limit for this process. Unset (the default): `1/N` with N
    /// live processes of its kind, counted in the store.
    #[serde(default)]
    pub share: Option<f64>,
}

impl TenantLimits {
    /// These limits laid over `base`, field by field: a field set here wins, an unset one
    /// falls back to `base`; per-tool rates merge (these win per tool).
    pub fn over(&self, base: &TenantLimits) -> TenantLimits {
        let mut by_tool = base.tool_calls_per_s_by_tool.clone();
        by_tool.extend(self.tool_calls_per_s_by_tool.clone());
        TenantLimits {
            admissions_per_s: self.admissions_per_s.or(base.admissions_per_s),
            admission_burst: self.admission_burst.or(base.admission_burst),
            tool_calls_per_s: self.tool_calls_per_s.or(base.tool_calls_per_s),
            tool_calls_per_s_by_tool: by_tool,
            llm_tokens_per_min: self.llm_tokens_per_min.or(base.llm_tokens_per_min),
            llm_tokens_per_day: self.llm_tokens_per_day.or(base.llm_tokens_per_day),
            max_running_jobs: self.max_running_jobs.or(base.max_running_jobs),
            retention: self.retention.clone().or_else(|| base.retention.clone()),
        }
    }
}

impl LimitsConfig {
    pub fn for_tenant(&self, tenant: &str) -> TenantLimits {
        match self.tenants.get(tenant) {
            Some(o) => o.over(&self.defaults),
            None => self.defaults.clone(),
        }
    }

    /// The caps on running jobs that claims enforce: the default for every tenant, and
    /// each override that names one.
    pub fn running_caps(&self) -> aetheris_store::RunningCaps {
        aetheris_store::RunningCaps {
            default: self.defaults.max_running_jobs,
            tenants: self
                .tenants
                .iter()
                .filter_map(|(t, l)| Some((t.clone(), l.max_running_jobs?)))
                .collect(),
            this_claim: Default::default(),
            this_claim_default: None,
        }
    }

    /// Parses and checks a limits file (JSON).
    pub fn parse(text: &str) -> Result<LimitsConfig, String> {
        let c: LimitsConfig = serde_json::from_str(text).map_err(|e| format!("limits: {e}"))?;
        let all = std::iter::once(("defaults", &c.defaults))
            .chain(c.tenants.iter().map(|(k, v)| (k.as_str(), v)));
        for (who, l) in all {
            let vals = [
                l.admissions_per_s,
                l.admission_burst,
                l.tool_calls_per_s,
                l.llm_tokens_per_min,
            ];
            if vals
                .iter()
                .flatten()
                .chain(l.tool_calls_per_s_by_tool.values())
                .any(|v| !v.is_finite() || *v <= 0.0)
            {
                return Err(format!(
                    "limits: {who}: every limit must be a positive number"
                ));
            }
        }
        let all = std::iter::once(("defaults", &c.defaults))
            .chain(c.tenants.iter().map(|(k, v)| (k.as_str(), v)));
        for (who, l) in all {
            if l.max_running_jobs == Some(0) {
                return Err(format!(
                    "limits: {who}: max_running_jobs must be at least 1"
                ));
            }
            if let Some(r) = &l.retention {
                crate::gc::parse_retention(r).map_err(|e| format!("limits: {who}: {e}"))?;
            }
            if l.llm_tokens_per_day == Some(0) {
                return Err(format!(
                    "limits: {who}: llm_tokens_per_day must be at least 1"
                ));
            }
        }
        if c.share.is_some_and(|s| !(s > 0.0 && s <= 1.0)) {
            return Err("limits: share must be in (0, 1]".into());
        }
        Ok(c)
    }
}

/// This process's share of a tenant's global limits: gateways enforce admissions,
/// workers tool calls and LLM tokens, each kind sharing among its live processes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Shares {
    admission: f64,
    work: f64,
}

/// The buckets of one tenant.
pub struct RateLimiter {
    limits: TenantLimits,
    shares: Shares,
    admission: Option<TokenBucket>,
    tools: Option<TokenBucket>,
    by_tool: HashMap<String, TokenBucket>,
    llm: Option<TokenBucket>,
    last_used: Instant,
}

/// (rate per second, burst) of each bucket of `l` at `s`.
fn admission_rate(l: &TenantLimits, s: &Shares) -> Option<(f64, f64)> {
    let r = l.admissions_per_s?;
    Some((
        r * s.admission,
        l.admission_burst.unwrap_or(r) * s.admission,
    ))
}

fn tool_rate(r: f64, s: &Shares) -> (f64, f64) {
    (r * s.work, r * s.work)
}

fn llm_rate(l: &TenantLimits, s: &Shares) -> Option<(f64, f64)> {
    let r = l.llm_tokens_per_min?;
    Some((r * s.work / 60.0, r * s.work))
}

impl RateLimiter {
    fn new(limits: TenantLimits, shares: Shares) -> Self {
        let now = now_ms();
        let bucket = |(r, b): (f64, f64)| TokenBucket::new(r, b, now);
        RateLimiter {
            admission: admission_rate(&limits, &shares).map(bucket),
            tools: limits
                .tool_calls_per_s
                .map(|r| bucket(tool_rate(r, &shares))),
            by_tool: HashMap::new(),
            llm: llm_rate(&limits, &shares).map(bucket),
            limits,
            shares,
            last_used: Instant::now(),
        }
    }

    /// Resizes every bucket to new shares, keeping what each holds (or owes).
    fn rescale(&mut self, shares: Shares) {
        let now = now_ms();
        self.shares = shares;
        let l = &self.limits;
        if let (Some(b), Some((r, burst))) = (&mut self.admission, admission_rate(l, &shares)) {
            b.rescale(r, burst, now);
        }
        if let (Some(b), Some(r)) = (&mut self.tools, l.tool_calls_per_s) {
            let (r, burst) = tool_rate(r, &shares);
            b.rescale(r, burst, now);
        }
        for (tool, b) in &mut self.by_tool {
            if let Some(r) = l.tool_calls_per_s_by_tool.get(tool) {
                let (r, burst) = tool_rate(*r, &shares);
                b.rescale(r, burst, now);
            }
        }
        if let (Some(b), Some((r, burst))) = (&mut self.llm, llm_rate(l, &shares)) {
            b.rescale(r, burst, now);
        }
    }
}

impl Actor for RateLimiter {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Context<Self>) {
        supervision::started(ActorKind::RateLimiter);
        // Evicted when idle: buckets refill to full anyway after an idle minute.
        ctx.run_interval(Duration::from_secs(30), |act, ctx| {
            if act.last_used.elapsed() > Duration::from_secs(300) {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        supervision::stopped(ActorKind::RateLimiter);
    }
}

/// A ticket for a message to a rate limiter (supervision.rs).
fn ticket() -> Queued {
    Queued::new(ActorKind::RateLimiter)
}

/// Admit one job now, or say after how many ms to retry.
#[derive(Message)]
#[rtype(result = "Result<(), u64>")]
struct Admit {
    _queued: Queued,
}

/// Reserve a tool call: how many ms to wait before making it.
#[derive(Message)]
#[rtype(result = "u64")]
struct ToolCall {
    tool: String,
    _queued: Queued,
}

/// Reserve LLM tokens: how many ms to wait before the call.
#[derive(Message)]
#[rtype(result = "u64")]
struct ReserveLlm {
    tokens: f64,
    _queued: Queued,
}

/// Return unused reserved LLM tokens.
#[derive(Message)]
#[rtype(result = "()")]
struct SettleLlm {
    unused: f64,
    _queued: Queued,
}

impl Handler<Admit> for RateLimiter {
    type Result = Result<(), u64>;
    fn handle(&mut self, _: Admit, _: &mut Context<Self>) -> Result<(), u64> {
        self.last_used = Instant::now();
        match &mut self.admission {
            Some(b) => b.try_take(1.0, now_ms()),
            None => Ok(()),
        }
    }
}

impl Handler<ToolCall> for RateLimiter {
    type Result = u64;
    fn handle(&mut self, m: ToolCall, _: &mut Context<Self>) -> u64 {
        self.last_used = Instant::now();
        let now = now_ms();
        let all = self
            .tools
            .as_mut()
            .map(|b| b.reserve(1.0, now))
            .unwrap_or(0);
        let one = match self.limits.tool_calls_per_s_by_tool.get(&m.tool) {
            Some(r) => {
                let (r, burst) = tool_rate(*r, &self.shares);
                self.by_tool
                    .entry(m.tool)
                    .or_insert_with(|| TokenBucket::new(r, burst, now))
                    .reserve(1.0, now)
            }
            None => 0,
        };
        all.max(one)
    }
}

impl Handler<ReserveLlm> for RateLimiter {
    type Result = u64;
    fn handle(&mut self, m: ReserveLlm, _: &mut Context<Self>) -> u64 {
        self.last_used = Instant::now();
        self.llm
            .as_mut()
            .map(|b| b.reserve(m.tokens, now_ms()))
            .unwrap_or(0)
    }
}

/// This process's shares changed (processes of its kind joined or left).
#[derive(Message)]
#[rtype(result = "()")]
struct Rescale {
    shares: Shares,
    _queued: Queued,
}

impl Handler<Rescale> for RateLimiter {
    type Result = ();
    fn handle(&mut self, m: Rescale, _: &mut Context<Self>) {
        self.rescale(m.shares);
    }
}

impl Handler<SettleLlm> for RateLimiter {
    type Result = ();
    fn handle(&mut self, m: SettleLlm, _: &mut Context<Self>) {
        if let Some(b) = &mut self.llm {
            b.give_back(m.unused);
        }
    }
}

#[derive(Default)]
struct Inner {
    /// What applies: `file` with each tenant's `table` limits laid over its file override.
    limits: RwLock<LimitsConfig>,
    /// The two sources: the limits file, and the tenants table (id → limits).
    sources: Mutex<(LimitsConfig, BTreeMap<String, TenantLimits>)>,
    actors: Mutex<HashMap<String, Addr<RateLimiter>>>,
    arbiter: Mutex<Option<actix::Arbiter>>,
    /// Set once the tenants table is being followed (`keep_refreshed`).
    refreshing: AtomicBool,
    /// Live processes of each kind as last announced (0: not yet known, taken as 1).
    live_gateways: AtomicU32,
    live_workers: AtomicU32,
}

/// The shared handle to every tenant's `RateLimiter`. Cheap to clone.
#[derive(Clone, Default)]
pub struct RateLimiters(Arc<Inner>);

impl std::fmt::Debug for RateLimiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiters").finish_non_exhaustive()
    }
}

impl RateLimiters {
    pub fn new(limits: LimitsConfig) -> Self {
        let r = RateLimiters::default();
        r.set_limits(limits);
        r
    }

    /// Keeps these limits in step with the tenants table of `store` (see
    /// `spawn_limits_refresh`); once per handle, however many parts of a process (its
    /// gateway, its worker) ask. Must be called inside an actix system.
    pub fn keep_refreshed(&self, store: DynStore) {
        if !self.0.refreshing.swap(true, Ordering::SeqCst) {
            spawn_limits_refresh(store, self.clone());
        }
    }

    /// Replaces the limits file at run time; live limiters are dropped and rebuilt on
    /// next use. Limits from the tenants table stay laid over it.
    pub fn set_limits(&self, file: LimitsConfig) {
        let Ok(mut src) = self.0.sources.lock() else {
            return;
        };
        src.0 = file;
        let mut effective = src.0.clone();
        for (t, l) in &src.1 {
            let base = effective.tenants.get(t).cloned().unwrap_or_default();
            effective.tenants.insert(t.clone(), l.over(&base));
        }
        if let Ok(mut g) = self.0.limits.write() {
            *g = effective;
        }
        if let Ok(mut a) = self.0.actors.lock() {
            a.clear();
        }
    }

    /// Sets one tenant's limits from the tenants table, laid over the file's override for
    /// it field by field (a field the table leaves unset keeps the file's value), and
    /// rebuilds its limiter if that changed anything.
    pub fn set_tenant_limits(&self, tenant: &str, limits: TenantLimits) {
        let Ok(mut src) = self.0.sources.lock() else {
            return;
        };
        let base = src.0.tenants.get(tenant).cloned().unwrap_or_default();
        let effective = limits.over(&base);
        src.1.insert(tenant.to_string(), limits);
        if let Ok(mut g) = self.0.limits.write() {
            if g.tenants.get(tenant) == Some(&effective) {
                return;
            }
            g.tenants.insert(tenant.to_string(), effective);
        }
        if let Ok(mut a) = self.0.actors.lock() {
            a.remove(tenant);
        }
    }

    pub fn limits(&self) -> LimitsConfig {
        self.0.limits.read().map(|g| g.clone()).unwrap_or_default()
    }

    fn live(&self, kind: ProcessKind) -> &AtomicU32 {
        match kind {
            ProcessKind::Gateway => &self.0.live_gateways,
            ProcessKind::Worker => &self.0.live_workers,
        }
    }

    /// This process's shares: the file's fixed `share`, else one over the live count.
    fn shares(&self) -> Shares {
        let fixed = self.0.limits.read().ok().and_then(|g| g.share);
        let of =
            |kind| fixed.unwrap_or(1.0 / f64::from(self.live(kind).load(Ordering::Relaxed).max(1)));
        Shares {
            admission: of(ProcessKind::Gateway),
            work: of(ProcessKind::Worker),
        }
    }

    /// This process's share of each limit it enforces as a `kind` (1.0 = the whole limit).
    pub fn share_of(&self, kind: ProcessKind) -> f64 {
        let s = self.shares();
        match kind {
            ProcessKind::Gateway => s.admission,
            ProcessKind::Worker => s.work,
        }
    }

    /// `n` processes of `kind` are live (this one included): resizes every tenant's
    /// buckets to the new share at once.
    pub fn set_live(&self, kind: ProcessKind, n: u32) {
        let n = n.max(1);
        let old = self.live(kind).swap(n, Ordering::Relaxed);
        if old == n {
            return;
        }
        metrics::gauge!(m::LIVE_PROCESSES, "kind" => kind.as_str()).set(f64::from(n));
        let shares = self.shares();
        if let Ok(actors) = self.0.actors.lock() {
            for a in actors.values() {
                a.do_send(Rescale {
                    shares,
                    _queued: ticket(),
                });
            }
        }
    }

    /// The current caps on running jobs, for claims.
    pub fn running_caps(&self) -> aetheris_store::RunningCaps {
        self.0
            .limits
            .read()
            .map(|g| g.running_caps())
            .unwrap_or_default()
    }

    fn count(name: &'static str, tenant: &str, kind: &'static str) {
        metrics::counter!(name, "tenant" => tenant.to_string(), "kind" => kind).increment(1);
    }

    /// The tenant's limiter, started on demand on the limiters' own arbiter (so it
    /// outlives any HTTP worker thread). Must be called inside an actix system.
    fn limiter(&self, tenant: &str) -> Option<Addr<RateLimiter>> {
        let mut actors = self.0.actors.lock().ok()?;
        if let Some(a) = actors.get(tenant).filter(|a| a.connected()) {
            return Some(a.clone());
        }
        let mut arb = self.0.arbiter.lock().ok()?;
        let handle = arb.get_or_insert_with(actix::Arbiter::new).handle();
        let (limits, shares) = (self.limits().for_tenant(tenant), self.shares());
        let addr =
            RateLimiter::start_in_arbiter(&handle, move |_| RateLimiter::new(limits, shares));
        actors.insert(tenant.to_string(), addr.clone());
        Some(addr)
    }

    /// Read under the lock, not from a copy of the whole file: it runs for every tool
    /// call and admission.
    fn unlimited(&self, tenant: &str, f: fn(&TenantLimits) -> bool) -> bool {
        let limits = match self.0.limits.read() {
            Ok(g) => g.for_tenant(tenant),
            Err(_) => LimitsConfig::default().for_tenant(tenant),
        };
        !f(&limits)
    }

    /// Admits one job, or returns the ms after which to retry.
    pub async fn admit(&self, tenant: &str) -> Result<(), u64> {
        if self.unlimited(tenant, |l| l.admissions_per_s.is_some()) {
            return Ok(());
        }
        let Some(l) = self.limiter(tenant) else {
            return Ok(());
        };
        let r = l.send(Admit { _queued: ticket() }).await.unwrap_or(Ok(()));
        if r.is_err() {
            Self::count(m::RATE_LIMIT_REJECTIONS, tenant, "admission");
        }
        r
    }

    /// Waits until a call of `tool` is allowed (a throttled step waits; it never fails).
    pub async fn tool_call(&self, tenant: &str, tool: &str) {
        if self.unlimited(tenant, |l| {
            l.tool_calls_per_s.is_some() || !l.tool_calls_per_s_by_tool.is_empty()
        }) {
            return;
        }
        let Some(l) = self.limiter(tenant) else {
            return;
        };
        let wait = l
            .send(ToolCall {
                tool: tool.to_string(),
                _queued: ticket(),
            })
            .await
            .unwrap_or(0);
        if wait > 0 {
            Self::count(m::RATE_LIMIT_WAITS, tenant, "tool_call");
            metrics::gauge!(m::RATE_LIMIT_WAIT_SECONDS, "tenant" => tenant.to_string(), "kind" => "tool_call")
                .increment(wait as f64 / 1000.0);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    /// Reserves LLM tokens before a call (waiting if needed); settle afterwards with the
    /// tokens actually used.
    pub async fn reserve_llm(&self, tenant: &str, tokens: u64) {
        if self.unlimited(tenant, |l| l.llm_tokens_per_min.is_some()) {
            return;
        }
        let Some(l) = self.limiter(tenant) else {
            return;
        };
        let wait = l
            .send(ReserveLlm {
                tokens: tokens as f64,
                _queued: ticket(),
            })
            .await
            .unwrap_or(0);
        if wait > 0 {
            Self::count(m::RATE_LIMIT_WAITS, tenant, "llm_tokens");
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    pub async fn settle_llm(&self, tenant: &str, reserved: u64, used: u64) {
        // Nothing was reserved without a limit (and no limiter needs to exist for it).
        if self.unlimited(tenant, |l| l.llm_tokens_per_min.is_some()) {
            return;
        }
        if let Some(l) = self.limiter(tenant) {
            let _ = l
                .send(SettleLlm {
                    unused: reserved.saturating_sub(used) as f64,
                    _queued: ticket(),
                })
                .await;
        }
    }
}

/// Keeps `limits` in step with the tenants table: reads every tenant's limits now and
/// every 10 s (so a change made through any gateway reaches every process without a
/// restart). Must be called inside an actix system.
pub fn spawn_limits_refresh(store: aetheris_store::DynStore, limits: RateLimiters) {
    actix::spawn(async move {
        loop {
            match store.list_tenants().await {
                Ok(tenants) => {
                    for t in tenants {
                        match serde_json::from_value::<TenantLimits>(t.limits.clone()) {
                            Ok(l) => limits.set_tenant_limits(&t.id, l),
                            Err(e) => {
                                tracing::warn!(tenant = %t.id, error = %e, "bad stored limits")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading tenant limits failed"),
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
}

/// The announcement lives with presence; re-exported here, where it used to be.
pub use crate::presence::Announcement;

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(v: serde_json::Value) -> LimitsConfig {
        LimitsConfig::parse(&v.to_string()).unwrap()
    }

    #[test]
    fn table_limits_lie_over_the_file_field_by_field() {
        let r = RateLimiters::new(cfg(serde_json::json!({
            "defaults": {"tool_calls_per_s": 100.0, "max_running_jobs": 50},
            "tenants": {"acme": {"admissions_per_s": 5.0, "max_running_jobs": 3}}
        })));
        // An empty row in the tenants table changes nothing.
        r.set_tenant_limits("acme", TenantLimits::default());
        let acme = r.limits().for_tenant("acme");
        assert_eq!(acme.admissions_per_s, Some(5.0));
        assert_eq!(acme.tool_calls_per_s, Some(100.0));
        assert_eq!(acme.max_running_jobs, Some(3));
        // A set field wins; the others keep the file's values.
        r.set_tenant_limits(
            "acme",
            TenantLimits {
                max_running_jobs: Some(7),
                ..TenantLimits::default()
            },
        );
        let acme = r.limits().for_tenant("acme");
        assert_eq!(
            (acme.admissions_per_s, acme.max_running_jobs),
            (Some(5.0), Some(7))
        );
        // Reloading the file keeps the table's layer.
        r.set_limits(cfg(
            serde_json::json!({"tenants": {"acme": {"admissions_per_s": 1.0}}}),
        ));
        let acme = r.limits().for_tenant("acme");
        assert_eq!(
            (acme.admissions_per_s, acme.max_running_jobs),
            (Some(1.0), Some(7))
        );
        assert_eq!(acme.tool_calls_per_s, None, "the new file has no default");
        let caps = r.running_caps();
        assert_eq!(caps.cap("acme"), Some(7));
        assert_eq!(caps.cap("other"), None);
    }

    #[test]
    fn each_kind_takes_one_over_its_live_count_unless_the_share_is_fixed() {
        let r = RateLimiters::new(cfg(serde_json::json!({
            "defaults": {"tool_calls_per_s": 90.0, "admissions_per_s": 10.0}
        })));
        assert_eq!(r.share_of(ProcessKind::Worker), 1.0, "alone until told");
        r.set_live(ProcessKind::Worker, 3);
        assert!((r.share_of(ProcessKind::Worker) - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(
            r.share_of(ProcessKind::Gateway),
            1.0,
            "gateways counted apart"
        );
        r.set_live(ProcessKind::Worker, 0);
        assert_eq!(
            r.share_of(ProcessKind::Worker),
            1.0,
            "never less than itself"
        );
        r.set_live(ProcessKind::Gateway, 4);
        r.set_limits(cfg(serde_json::json!({"share": 0.5})));
        assert_eq!(r.share_of(ProcessKind::Gateway), 0.5, "a fixed share wins");
    }

    #[test]
    fn a_rescaled_limiter_resizes_every_bucket() {
        let limits = TenantLimits {
            admissions_per_s: Some(10.0),
            tool_calls_per_s: Some(90.0),
            tool_calls_per_s_by_tool: [("http".to_string(), 30.0)].into(),
            llm_tokens_per_min: Some(6000.0),
            ..TenantLimits::default()
        };
        let whole = Shares {
            admission: 1.0,
            work: 1.0,
        };
        let mut l = RateLimiter::new(limits, whole);
        l.by_tool
            .insert("http".into(), TokenBucket::new(30.0, 30.0, now_ms()));
        l.rescale(Shares {
            admission: 0.5,
            work: 1.0 / 3.0,
        });
        let rate = |b: &Option<TokenBucket>| b.as_ref().map(|b| b.rate_per_s.round());
        assert_eq!(rate(&l.admission), Some(5.0));
        assert_eq!(rate(&l.tools), Some(30.0));
        assert_eq!(l.by_tool["http"].rate_per_s.round(), 10.0);
        assert_eq!(l.llm.as_ref().map(|b| b.burst.round()), Some(2000.0));
    }

    #[test]
    fn a_zero_cap_is_refused() {
        let e = LimitsConfig::parse(r#"{"defaults": {"max_running_jobs": 0}}"#).unwrap_err();
        assert!(e.contains("max_running_jobs"), "{e}");
    }
}
