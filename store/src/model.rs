//! The data the store contract speaks in: jobs, events' heads, leases, ledger rows,
//! commands, tenants, users, audit rows, claim caps and live processes. Plain values, the
//! same for every backend; `Scope` is how a read names its tenant (G6).

use aetheris_runtime::{EffectClass, JobId, JobStatus, LedgerStatus, Plan, RecordedEvent};
use serde::Serialize;
use serde_json::Value;

/// A fenced append: `events` get seqs `expected_last_seq + 1 ..` (planned by
/// `aetheris_runtime::plan_append`, the same in every backend).
pub use aetheris_runtime::Append;

/// Which tenant a read is for. `System` is for workers and operators of the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    Tenant(&'a str),
    System,
}

impl Scope<'_> {
    pub fn allows(&self, tenant: &str) -> bool {
        match self {
            Scope::System => true,
            Scope::Tenant(t) => *t == tenant,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewJob {
    pub tenant: String,
    pub idempotency_key: Option<String>,
    pub plan: Plan,
    pub input: Value,
}

/// The projection row of a job, kept in the same transaction as its events.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct JobSummary {
    pub job_id: JobId,
    pub tenant: String,
    pub status: JobStatus,
    pub idempotency_key: Option<String>,
    pub last_seq: u64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub status: Option<JobStatus>,
    /// Return jobs older than this id (ids are time-ordered; lists are newest first).
    pub before: Option<JobId>,
    pub limit: usize,
}

/// What a job actor starts from (`JobLog::load_job`): the newest snapshot, the events after
/// it (at most the limit asked for, oldest first) and the commands not yet applied, all as
/// of one point in time, so the events continue the snapshot without a gap.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JobLoad {
    /// `(seq, blob)` of the newest snapshot, if any.
    pub snapshot: Option<(u64, Vec<u8>)>,
    /// Events with `seq >` the snapshot's seq (or from seq 1 without one).
    pub events: Vec<RecordedEvent>,
    pub commands: Vec<StoredCommand>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub job_id: JobId,
    pub tenant: String,
    pub token: u64,
    pub expires_at_ms: i64,
}

/// One invocation of a tool step: its key, attempt, effect class and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct LedgerEntry {
    pub invocation_key: String,
    pub job_id: JobId,
    pub step: String,
    pub attempt: u32,
    pub effect: EffectClass,
    pub status: LedgerStatus,
    pub updated_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusCount {
    pub tenant: String,
    pub status: JobStatus,
    pub count: u64,
}

/// A command for a job, stored durably before the gateway answers (G1), then applied by
/// the worker holding the job's lease, which turns it into an event under its fencing
/// token. Serialized as JSON in both stores.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CommandBody {
    Cancel {
        by: String,
        reason: String,
    },
    /// A signal (e.g. an approval) for `wait` steps named `signal`; applied once per
    /// `signal_id`.
    Signal {
        signal: String,
        signal_id: String,
        payload: serde_json::Value,
        by: Option<String>,
    },
    /// A human's answer for an `outcome_unknown` step.
    Confirm {
        step: String,
        outcome: aetheris_runtime::ConfirmOutcome,
        output: Option<serde_json::Value>,
        by: String,
        note: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredCommand {
    /// Unique per store, increasing.
    pub id: u64,
    pub job_id: JobId,
    pub body: CommandBody,
    pub created_at_ms: i64,
}

/// A tenant as data: its id (the `tenant` claim of tokens), a display name, and its rate
/// limits (a JSON object in the shape of `TenantLimits`, applied without restart).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    pub limits: serde_json::Value,
    pub created_at_ms: i64,
}

/// A user of a tenant as data: the token `sub` it matches, the roles it may hold, and
/// whether it is disabled. A token for a user with a row acts with the roles it carries
/// that the row also grants, and not at all while the row is disabled; a token for a
/// user without a row acts with its own roles (the issuer vouches for them).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct User {
    pub tenant: String,
    pub id: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// What a request's credentials meet in the store: whether the token's tenant exists and
/// the user row of its `sub`, if any. Read in one round trip per request.
#[derive(Debug, Clone, PartialEq)]
pub struct Access {
    pub tenant_exists: bool,
    pub user: Option<User>,
}

/// One row of the access audit log, as the caller describes it: who (`actor`, the token's
/// `sub`) did what (`action`, e.g. `job.cancel`) to which `target` in which `tenant`, and
/// the `result` (`ok`, `existing` for an idempotent repeat, `denied` for a refused
/// permission). The store adds the id and the time (its own clock).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub tenant: String,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub result: String,
}

impl AuditEntry {
    /// An entry with result `ok` (the store writes it only if the change commits).
    pub fn ok(tenant: &str, actor: &str, action: &str, target: impl Into<String>) -> Self {
        AuditEntry {
            tenant: tenant.to_string(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.into(),
            result: "ok".into(),
        }
    }
}

/// A stored audit row: ids increase in commit order within a store.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct AuditRecord {
    pub id: u64,
    pub at_ms: i64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Which audit rows to read: oldest first, after `after_id`, at most `limit`, optionally
/// of one `action` only.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub after_id: u64,
    pub limit: usize,
    pub action: Option<String>,
}

/// Caps on the number of running jobs per tenant, held across all workers: a job counts
/// as running while it is claimable (queued, running, or woken to apply a command) and
/// holds a live lease. `claim_within` never grants a lease that would take a tenant past
/// its cap. `default` applies to tenants without an entry in `tenants`; `None` = no cap.
///
/// `this_claim` (`this_claim_default` for tenants without an entry) limits one claim
/// only: at most that many jobs of the tenant, whatever the caps allow. A worker passes
/// what is left of its own per-tenant share there (it knows its leases, so the store
/// counts nothing), so one tenant's backlog cannot take every slot of a worker and leave
/// another tenant's new job waiting for one (W6).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunningCaps {
    pub default: Option<u64>,
    pub tenants: std::collections::BTreeMap<String, u64>,
    pub this_claim: std::collections::BTreeMap<String, u64>,
    pub this_claim_default: Option<u64>,
}

impl RunningCaps {
    pub fn cap(&self, tenant: &str) -> Option<u64> {
        self.tenants.get(tenant).copied().or(self.default)
    }

    /// The most jobs of `tenant` this claim may lease, caps aside (`None` = no limit).
    pub fn claim_limit(&self, tenant: &str) -> Option<u64> {
        self.this_claim
            .get(tenant)
            .copied()
            .or(self.this_claim_default)
    }

    /// No cap across workers (`this_claim` aside): a claim needs no running count.
    pub fn is_unlimited(&self) -> bool {
        self.default.is_none() && self.tenants.is_empty()
    }
}

/// What a live process does, for sharing a tenant's global limits among the processes
/// that enforce them: gateways share admission limits, workers tool-call and LLM limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProcessKind {
    Gateway,
    Worker,
}

impl ProcessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessKind::Gateway => "gateway",
            ProcessKind::Worker => "worker",
        }
    }

    /// The kind named `s` (`gateway` or `worker`).
    pub fn parse(s: &str) -> Option<ProcessKind> {
        [ProcessKind::Gateway, ProcessKind::Worker]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// One announced process as the presence table has it (see `Presence::list_processes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessStatus {
    pub kind: ProcessKind,
    pub id: String,
    /// Its announcement has not expired.
    pub live: bool,
    /// Since its last announcement (store clock); `None` for a row an older version wrote.
    pub heartbeat_age_ms: Option<u64>,
    /// How long one announcement keeps it live; `None` as above.
    pub ttl_ms: Option<u64>,
    /// What it said about itself with its last announcement (JSON text; `{}` if nothing).
    pub report: String,
}

/// One tenant's backlog and unknown outcomes (see `Operations::operational_figures`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantBacklog {
    pub tenant: String,
    /// Jobs runnable now (queued, running, or woken) that no live lease holds.
    pub runnable: u64,
    /// Since the oldest of them last changed (0 with none).
    pub runnable_oldest_ms: u64,
    /// Steps whose outcome is unknown, waiting for a human confirmation.
    pub outcome_unknown: u64,
    /// Since the oldest of them became unknown (0 with none).
    pub outcome_unknown_oldest_ms: u64,
}

/// The stored figures an operator watches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationalFigures {
    /// Every tenant with at least one job, by id.
    pub tenants: Vec<TenantBacklog>,
    /// Migrations recorded as applied (`None`: the store has no migrations, e.g. redb).
    pub migrations_applied: Option<u64>,
}

/// One leaf of a tenant's transparency log: the job that finished, the RFC 9162 leaf hash
/// of its id, last seq and chain head (`aetheris_proof::checkpoint::job_leaf_hash`), and
/// the store time of its terminal event. Leaves are numbered 0, 1, 2, … per tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLeaf {
    pub index: u64,
    pub job_id: JobId,
    pub leaf_hash: [u8; 32],
    pub appended_at_ms: i64,
}

/// One rule of a tenant's evidence redaction policy: a redaction path
/// (`input`, `output`, `steps.<id>.output`, `signals.<name>.payload`, `*` for any id or
/// name) and why, applied to every export of the tenant's jobs. Stored as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// What to redact: `input`, `output`, `steps.<id>.output` or `signals.<name>.payload`
    /// (`*` for any step id or signal name).
    pub path: String,
    /// Why, listed in the manifest with each redaction (1-256 bytes).
    pub reason: String,
}

/// The protocol an LLM provider speaks (docs/agents.md).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LlmProviderKind {
    /// OpenAI Chat Completions: `POST {base_url}/v1/chat/completions`.
    Openai,
    /// Anthropic Messages: `POST {base_url}/v1/messages`.
    Anthropic,
    /// Built in, offline: answers from a script (`base_url` is a script file, or empty for
    /// the built-in one). For tries and tests.
    Scripted,
}

impl LlmProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LlmProviderKind::Openai => "openai",
            LlmProviderKind::Anthropic => "anthropic",
            LlmProviderKind::Scripted => "scripted",
        }
    }
    pub fn parse(s: &str) -> Option<LlmProviderKind> {
        [
            LlmProviderKind::Openai,
            LlmProviderKind::Anthropic,
            LlmProviderKind::Scripted,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// An LLM provider of a tenant. Its API key is never stored, written to events or logged:
/// only where the workers read it (an environment variable or a file on the worker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LlmProvider {
    /// 1-64 characters of `[A-Za-z0-9_.-]`: what an agent step's `provider` names.
    pub name: String,
    pub kind: LlmProviderKind,
    /// `http(s)://host[:port][/prefix]`; the protocol's path is appended.
    pub base_url: String,
    /// The models agent steps may ask for; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// The environment variable of the workers that holds the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// The file on the workers that holds the API key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_file: Option<String>,
}

/// Tokens reserved against a tenant's daily budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlmReservation {
    /// The UTC day (days since the Unix epoch, store clock) the tokens count against.
    pub day: i64,
    /// The day's tokens, this reservation included.
    pub used: u64,
}

/// How long each tenant's finished jobs are kept (see `Retention`): `default` for tenants
/// without an entry, `tenants` per tenant; `None` keeps them forever. The workers build it
/// from the tenants' limits (`retention`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub default_ms: Option<u64>,
    pub tenants: std::collections::BTreeMap<String, Option<u64>>,
}

impl RetentionPolicy {
    /// How long `tenant`'s finished jobs are kept (`None`: forever).
    pub fn keep_ms(&self, tenant: &str) -> Option<u64> {
        match self.tenants.get(tenant) {
            Some(keep) => *keep,
            None => self.default_ms,
        }
    }

    /// No tenant's jobs are ever deleted under this policy.
    pub fn keeps_everything(&self) -> bool {
        self.default_ms.is_none() && self.tenants.values().all(Option::is_none)
    }
}

/// A finished job past its tenant's retention (`Retention::due_jobs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueJob {
    pub job_id: JobId,
    pub tenant: String,
    /// When it finished (its terminal event's store time).
    pub finished_at_ms: i64,
    /// How long past its tenant's retention it is (ms, at the store clock of the read).
    pub overdue_ms: u64,
}
