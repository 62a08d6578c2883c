//! The one description of every setting of `dev`, `server`, `worker` and `migrate`: its
//! key in aetheris.toml, its flag, its environment variable, what values it takes, its
//! default, its help text and the commands that read it. The flags and their `--help`
//! (flags.rs), the config file parser (file.rs), `--print-config` and
//! docs/configuration.md (render.rs) are all derived from `SETTINGS`, so none of them can
//! name a setting the others do not know or disagree on its default. Invariants (tested):
//! `SETTINGS` is in `Key` order, and every variable is `AETHERIS_` + the flag's name.

use std::path::PathBuf;

/// The commands that read settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cmd {
    Dev,
    Server,
    Worker,
    Migrate,
}

impl Cmd {
    #[cfg(test)]
    pub const ALL: [Cmd; 4] = [Cmd::Dev, Cmd::Server, Cmd::Worker, Cmd::Migrate];

    pub fn name(self) -> &'static str {
        match self {
            Cmd::Dev => "dev",
            Cmd::Server => "server",
            Cmd::Worker => "worker",
            Cmd::Migrate => "migrate",
        }
    }
}

/// Every setting, in the order of `SETTINGS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    DatabaseUrl,
    PoolSize,
    NoMigrate,
    Bind,
    MaxConnections,
    BodyTimeoutMs,
    WithWorker,
    Hs256SecretFiles,
    Ed25519PublicKeyFiles,
    Audience,
    InsecureNoAuth,
    LeaseTtlMs,
    HeartbeatMs,
    MaxJobs,
    SnapshotEvery,
    DrainGraceMs,
    AdminBind,
    LimitsFile,
    LlmProvidersFile,
    EvidenceKeyFile,
    RetentionDefault,
    RetentionBatchSize,
    RetentionIntervalMs,
    RetentionArchiveDir,
    DataDir,
    LogFilter,
    OtlpEndpoint,
}

/// What values a setting takes (and so how flags, variables and TOML values are checked).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Any non-empty text.
    Text,
    /// `HOST:PORT`.
    Address,
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`; shown without its password.
    PostgresUrl,
    /// A file or directory; relative paths in the config file are relative to its directory.
    Path,
    /// Any number of files (a flag repeated or comma-separated, a TOML array).
    Paths,
    /// A whole number in `min..=max`.
    Number { min: u64, max: u64 },
    /// On or off (a flag without value; `true`/`false` elsewhere).
    Switch,
    /// A log filter (`warn`, `info`, `aetheris_actors=debug,warn`).
    LogFilter,
    /// A retention: `90s`, `45m`, `12h`, `30d` or `forever`.
    Retention,
    /// `http://HOST:PORT[/PATH]`: an OTLP/HTTP endpoint.
    HttpUrl,
}

/// A setting's value when no flag, variable or config file gives one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The command refuses to start without it.
    Required,
    /// Not set (the help text says what that means).
    Unset,
    Number(u64),
    Text(&'static str),
    Off,
}

/// One setting.
#[derive(Debug)]
pub struct Setting {
    pub key: Key,
    /// TOML table and key: `[worker] lease_ttl_ms`.
    pub table: &'static str,
    pub name: &'static str,
    /// `--lease-ttl-ms`, without the dashes.
    pub flag: &'static str,
    pub env: &'static str,
    /// How `--help` names the flag's value.
    pub value_name: &'static str,
    pub kind: Kind,
    pub default: Fallback,
    /// Commands whose default differs from `default`.
    pub command_defaults: &'static [(Cmd, Fallback)],
    /// The commands that read it (every command accepts every key in the file).
    pub commands: &'static [Cmd],
    pub help: &'static str,
}

impl Setting {
    pub fn default_for(&self, cmd: Cmd) -> Fallback {
        self.command_defaults
            .iter()
            .find(|(c, _)| *c == cmd)
            .map_or(self.default, |(_, f)| *f)
    }

    pub fn used_by(&self, cmd: Cmd) -> bool {
        self.commands.contains(&cmd)
    }

    /// `[worker] lease_ttl_ms`, as errors name a key of the file.
    pub fn toml_name(&self) -> String {
        format!("[{}] {}", self.table, self.name)
    }

    /// `worker.lease_ttl_ms`, the dotted form (also valid TOML).
    pub fn dotted(&self) -> String {
        format!("{}.{}", self.table, self.name)
    }
}

/// A value of a setting, checked against its `Kind`.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Unset,
    Text(String),
    Path(PathBuf),
    Paths(Vec<PathBuf>),
    Number(u64),
    Switch(bool),
}

impl Fallback {
    pub fn value(self) -> Value {
        match self {
            Fallback::Required | Fallback::Unset => Value::Unset,
            Fallback::Number(n) => Value::Number(n),
            Fallback::Text(t) => Value::Text(t.to_string()),
            Fallback::Off => Value::Switch(false),
        }
    }
}

/// The tables of aetheris.toml, in the order the docs list them. `[limits]` also holds the
/// inline limits (`defaults`, `tenants`, `share`: the limits file's format).
pub const TABLES: [&str; 11] = [
    "database",
    "gateway",
    "auth",
    "worker",
    "limits",
    "llm",
    "evidence",
    "retention",
    "dev",
    "log",
    "tracing",
];

const DSW: &[Cmd] = &[Cmd::Dev, Cmd::Server, Cmd::Worker];
const DS: &[Cmd] = &[Cmd::Dev, Cmd::Server];
const S: &[Cmd] = &[Cmd::Server];
const SW: &[Cmd] = &[Cmd::Server, Cmd::Worker];
const W: &[Cmd] = &[Cmd::Worker];

/// Every setting, in `Key` order.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: Key::DatabaseUrl,
        table: "database",
        name: "url",
        flag: "database-url",
        env: "AETHERIS_DATABASE_URL",
        value_name: "URL",
        kind: Kind::PostgresUrl,
        default: Fallback::Required,
        command_defaults: &[(Cmd::Dev, Fallback::Unset)],
        commands: &[Cmd::Dev, Cmd::Server, Cmd::Worker, Cmd::Migrate],
        help: "PostgreSQL URL: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE. `dev` uses \
               its embedded store unless it is set.",
    },
    Setting {
        key: Key::PoolSize,
        table: "database",
        name: "pool_size",
        flag: "pool-size",
        env: "AETHERIS_POOL_SIZE",
        value_name: "N",
        kind: Kind::Number {
            min: 1,
            max: u16::MAX as u64,
        },
        default: Fallback::Number(16),
        command_defaults: &[],
        commands: DSW,
        help: "Connections in the PostgreSQL pool.",
    },
    Setting {
        key: Key::NoMigrate,
        table: "database",
        name: "no_migrate",
        flag: "no-migrate",
        env: "AETHERIS_NO_MIGRATE",
        value_name: "",
        kind: Kind::Switch,
        default: Fallback::Off,
        command_defaults: &[],
        commands: DSW,
        help: "Do not apply the database migrations at start (apply them with `aetheris \
               migrate` first).",
    },
    Setting {
        key: Key::Bind,
        table: "gateway",
        name: "bind",
        flag: "bind",
        env: "AETHERIS_BIND",
        value_name: "HOST:PORT",
        kind: Kind::Address,
        default: Fallback::Text("127.0.0.1:7420"),
        command_defaults: &[],
        commands: DS,
        help: "Address the HTTP gateway listens on. Port 0 picks a free port (printed at \
               start).",
    },
    Setting {
        key: Key::MaxConnections,
        table: "gateway",
        name: "max_connections",
        flag: "max-connections",
        env: "AETHERIS_MAX_CONNECTIONS",
        value_name: "N",
        kind: Kind::Number {
            min: 1,
            max: u32::MAX as u64,
        },
        default: Fallback::Number(aetheris_api::conn::DEFAULT_MAX_CONNECTIONS as u64),
        command_defaults: &[],
        commands: DS,
        help: "Connections the gateway serves at once; a connection beyond them is answered \
               503 (`Retry-After: 1`) at its first request. Lowered to fit the process's \
               file-descriptor limit.",
    },
    Setting {
        key: Key::BodyTimeoutMs,
        table: "gateway",
        name: "body_timeout_ms",
        flag: "body-timeout-ms",
        env: "AETHERIS_BODY_TIMEOUT_MS",
        value_name: "MS",
        kind: Kind::Number {
            min: 1,
            max: 300_000,
        },
        default: Fallback::Number(10_000),
        command_defaults: &[],
        commands: DS,
        help: "Milliseconds a client has to send a whole request body; a slower one is \
               answered 408 and its connection closed.",
    },
    Setting {
        key: Key::WithWorker,
        table: "gateway",
        name: "with_worker",
        flag: "with-worker",
        env: "AETHERIS_WITH_WORKER",
        value_name: "",
        kind: Kind::Switch,
        default: Fallback::Off,
        command_defaults: &[],
        commands: S,
        help: "Also run a worker in the server's process, with the [worker] and \
               [retention] settings. Its idle slots then take the jobs this server stores \
               at their submission, leased in the submission's own commit, with no claim \
               (hand-off; not while running caps are set). SIGTERM drains it. Any number \
               of such servers and of plain workers may share the database.",
    },
    Setting {
        key: Key::Hs256SecretFiles,
        table: "auth",
        name: "hs256_secret_files",
        flag: "auth-hs256-secret-file",
        env: "AETHERIS_AUTH_HS256_SECRET_FILE",
        value_name: "FILE",
        kind: Kind::Paths,
        default: Fallback::Unset,
        command_defaults: &[],
        commands: S,
        help: "Verify HS256 tokens with the secret in this file (`hex:…`/`base64:…`, at least \
               32 bytes). Repeat the flag (or separate files with commas) for key rotation.",
    },
    Setting {
        key: Key::Ed25519PublicKeyFiles,
        table: "auth",
        name: "ed25519_public_key_files",
        flag: "auth-ed25519-public-key-file",
        env: "AETHERIS_AUTH_ED25519_PUBLIC_KEY_FILE",
        value_name: "FILE",
        kind: Kind::Paths,
        default: Fallback::Unset,
        command_defaults: &[],
        commands: S,
        help: "Verify EdDSA tokens with the Ed25519 public key in this file (32 bytes, \
               `hex:…`/`base64:…`; `aetheris token keygen` writes one). Repeat (or separate \
               with commas) for rotation.",
    },
    Setting {
        key: Key::Audience,
        table: "auth",
        name: "audience",
        flag: "auth-audience",
        env: "AETHERIS_AUTH_AUDIENCE",
        value_name: "AUD",
        kind: Kind::Text,
        default: Fallback::Unset,
        command_defaults: &[],
        commands: S,
        help: "Require this `aud` in every token (unset: any or none).",
    },
    Setting {
        key: Key::InsecureNoAuth,
        table: "auth",
        name: "insecure_no_auth",
        flag: "insecure-no-auth",
        env: "AETHERIS_INSECURE_NO_AUTH",
        value_name: "",
        kind: Kind::Switch,
        default: Fallback::Off,
        command_defaults: &[],
        commands: DS,
        help: "Run without authentication: every caller is an admin of tenant `default`. \
               `server` refuses to start without a key unless this is on; `dev` makes its own \
               key and token unless this is on.",
    },
    Setting {
        key: Key::LeaseTtlMs,
        table: "worker",
        name: "lease_ttl_ms",
        flag: "lease-ttl-ms",
        env: "AETHERIS_LEASE_TTL_MS",
        value_name: "MS",
        kind: Kind::Number {
            min: 100,
            max: 86_400_000,
        },
        default: Fallback::Number(5_000),
        command_defaults: &[],
        commands: DSW,
        help: "How long a job stays with a worker that stopped renewing its lease, in \
               milliseconds (`dev` renews every fifth of it).",
    },
    Setting {
        key: Key::HeartbeatMs,
        table: "worker",
        name: "heartbeat_ms",
        flag: "heartbeat-ms",
        env: "AETHERIS_HEARTBEAT_MS",
        value_name: "MS",
        kind: Kind::Number {
            min: 1,
            max: 86_400_000,
        },
        default: Fallback::Number(1_000),
        command_defaults: &[],
        commands: SW,
        help: "How often the worker renews all its leases (one round trip), in milliseconds; \
               below lease_ttl_ms.",
    },
    Setting {
        key: Key::MaxJobs,
        table: "worker",
        name: "max_jobs",
        flag: "max-jobs",
        env: "AETHERIS_MAX_JOBS",
        value_name: "N",
        kind: Kind::Number {
            min: 1,
            max: 1_000_000,
        },
        default: Fallback::Number(64),
        command_defaults: &[(Cmd::Dev, Fallback::Number(256))],
        commands: DSW,
        help: "Jobs the worker runs at once. More than the database can commit for at once \
               only adds latency: with W6 on a 2-core machine, 64 gave tenant B a p99 queue \
               wait of 83 ms and A 954 jobs/s, where 256 gave 265 ms and 883 jobs/s.",
    },
    Setting {
        key: Key::SnapshotEvery,
        table: "worker",
        name: "snapshot_every",
        flag: "snapshot-every",
        env: "AETHERIS_SNAPSHOT_EVERY",
        value_name: "N",
        kind: Kind::Number {
            min: 1,
            max: u32::MAX as u64,
        },
        default: Fallback::Number(100),
        command_defaults: &[],
        commands: DSW,
        help: "Write a job snapshot every N events.",
    },
    Setting {
        key: Key::DrainGraceMs,
        table: "worker",
        name: "drain_grace_ms",
        flag: "drain-grace-ms",
        env: "AETHERIS_DRAIN_GRACE_MS",
        value_name: "MS",
        kind: Kind::Number {
            min: 0,
            max: 3_600_000,
        },
        default: Fallback::Number(10_000),
        command_defaults: &[],
        commands: SW,
        help: "How long a drain (SIGTERM, Ctrl-C) waits for in-flight calls before releasing \
               the leases anyway, in milliseconds.",
    },
    Setting {
        key: Key::AdminBind,
        table: "worker",
        name: "admin_bind",
        flag: "admin-bind",
        env: "AETHERIS_ADMIN_BIND",
        value_name: "HOST:PORT",
        kind: Kind::Address,
        default: Fallback::Text("127.0.0.1:7421"),
        command_defaults: &[],
        commands: W,
        help: "The worker's admin listener: GET /healthz, /readyz (the database answers) and \
               /metrics (Prometheus text). It has NO authentication: keep it on loopback or a \
               private network. Port 0 picks a free port (printed at start).",
    },
    Setting {
        key: Key::LimitsFile,
        table: "limits",
        name: "file",
        flag: "limits",
        env: "AETHERIS_LIMITS",
        value_name: "FILE",
        kind: Kind::Path,
        default: Fallback::Unset,
        command_defaults: &[],
        commands: DSW,
        help: "Per-tenant rate limits, a JSON file (docs/limits.md); the config file may hold \
               them inline in [limits] instead. Unset: no limits.",
    },
    Setting {
        key: Key::LlmProvidersFile,
        table: "llm",
        name: "providers_file",
        flag: "llm-providers",
        env: "AETHERIS_LLM_PROVIDERS",
        value_name: "FILE",
        kind: Kind::Path,
        default: Fallback::Unset,
        command_defaults: &[],
        commands: DSW,
        help: "LLM providers for agent steps, a JSON file: {\"providers\": [...], \"tenants\": \
               {\"acme\": [...]}} (docs/agents.md). `--llm-provider NAME=KIND:BASE_URL` and \
               `--llm-api-key-file NAME=FILE` add or replace providers on the command line. \
               Unset: none (`dev` always has the offline `scripted` provider).",
    },
    Setting {
        key: Key::EvidenceKeyFile,
        table: "evidence",
        name: "signing_key_file",
        flag: "evidence-signing-key-file",
        env: "AETHERIS_EVIDENCE_SIGNING_KEY_FILE",
        value_name: "FILE",
        kind: Kind::Path,
        default: Fallback::Unset,
        command_defaults: &[],
        commands: DSW,
        help: "Sign evidence packages and checkpoints with the Ed25519 key in this file (from \
               `aetheris evidence keygen`; docs/evidence.md). Unset: a server answers its \
               evidence export and checkpoint routes with 503; `dev` makes \
               `<data-dir>/evidence.key` on first start. A worker needs it only to archive \
               jobs before retention deletes them (`[retention] archive_dir`).",
    },
    Setting {
        key: Key::RetentionDefault,
        table: "retention",
        name: "default",
        flag: "retention",
        env: "AETHERIS_RETENTION",
        value_name: "DURATION",
        kind: Kind::Retention,
        default: Fallback::Text("forever"),
        command_defaults: &[],
        commands: DSW,
        help: "How long finished jobs (succeeded, failed, cancelled) are kept before the \
               workers delete them: `90s`, `45m`, `12h`, `30d` or `forever`. A tenant's own \
               `retention` (its limits, set through the tenants API or the limits file) \
               wins (docs/operations.md, \"Retention and GC\").",
    },
    Setting {
        key: Key::RetentionBatchSize,
        table: "retention",
        name: "batch_size",
        flag: "retention-batch-size",
        env: "AETHERIS_RETENTION_BATCH_SIZE",
        value_name: "N",
        kind: Kind::Number {
            min: 1,
            max: 100_000,
        },
        default: Fallback::Number(500),
        command_defaults: &[],
        commands: DSW,
        help: "Finished jobs deleted per store transaction by retention; smaller batches \
               hold locks for less time, larger ones cost less per job.",
    },
    Setting {
        key: Key::RetentionIntervalMs,
        table: "retention",
        name: "interval_ms",
        flag: "retention-interval-ms",
        env: "AETHERIS_RETENTION_INTERVAL_MS",
        value_name: "MS",
        kind: Kind::Number {
            min: 100,
            max: 86_400_000,
        },
        default: Fallback::Number(30_000),
        command_defaults: &[],
        commands: DSW,
        help: "Pause between retention passes, in milliseconds; a pass deletes batch after \
               batch until nothing is due.",
    },
    Setting {
        key: Key::RetentionArchiveDir,
        table: "retention",
        name: "archive_dir",
        flag: "retention-archive-dir",
        env: "AETHERIS_RETENTION_ARCHIVE_DIR",
        value_name: "DIR",
        kind: Kind::Path,
        default: Fallback::Unset,
        command_defaults: &[],
        commands: DSW,
        help: "Before deleting a job, write its signed evidence package to \
               `DIR/<tenant>/<job>.zip` (needs `[evidence] signing_key_file`); a job whose \
               package cannot be written is kept. Unset: jobs are deleted without an archive.",
    },
    Setting {
        key: Key::DataDir,
        table: "dev",
        name: "data_dir",
        flag: "data-dir",
        env: "AETHERIS_DATA_DIR",
        value_name: "DIR",
        kind: Kind::Path,
        default: Fallback::Text(".aetheris"),
        command_defaults: &[],
        commands: &[Cmd::Dev],
        help: "Directory of the embedded store's file, the auth key and the admin token \
               (created if missing).",
    },
    Setting {
        key: Key::LogFilter,
        table: "log",
        name: "filter",
        flag: "log",
        env: "AETHERIS_LOG",
        value_name: "FILTER",
        kind: Kind::LogFilter,
        default: Fallback::Text("warn"),
        command_defaults: &[],
        commands: DSW,
        help: "What is logged to stderr: a level (`error`, `warn`, `info`, `debug`, `trace`) \
               or directives like `aetheris_actors=debug,warn`.",
    },
    Setting {
        key: Key::OtlpEndpoint,
        table: "tracing",
        name: "otlp_endpoint",
        flag: "otlp-endpoint",
        env: "AETHERIS_OTLP_ENDPOINT",
        value_name: "URL",
        kind: Kind::HttpUrl,
        default: Fallback::Unset,
        command_defaults: &[],
        commands: DSW,
        help: "Export the spans of jobs, steps, tool calls and model calls over OTLP/HTTP \
               (JSON) to this collector: `http://HOST:4318` (`/v1/traces` is added) or the \
               full URL of its traces route; plain HTTP only, so point it at a local \
               OpenTelemetry Collector, Jaeger or Tempo (docs/operations.md, Tracing). Unset: \
               no span is exported or kept.",
    },
];

/// The description of `key`.
pub fn setting(key: Key) -> &'static Setting {
    // SETTINGS is in Key order (tested), so this is an index.
    &SETTINGS[key as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_in_key_order_and_their_names_follow_one_rule() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert_eq!(s.key as usize, i, "{:?} is out of order", s.key);
            assert_eq!(
                s.env,
                format!("AETHERIS_{}", s.flag.replace('-', "_").to_uppercase()),
                "{:?}",
                s.key
            );
            assert!(TABLES.contains(&s.table), "{:?}", s.key);
            assert!(!s.commands.is_empty() && !s.help.is_empty(), "{:?}", s.key);
            assert_eq!(
                s.value_name.is_empty(),
                s.kind == Kind::Switch,
                "{:?}",
                s.key
            );
            for (cmd, _) in s.command_defaults {
                assert!(s.used_by(*cmd), "{:?}: default for {cmd:?}", s.key);
            }
        }
        let mut names: Vec<_> = SETTINGS.iter().map(Setting::dotted).collect();
        let mut flags: Vec<_> = SETTINGS.iter().map(|s| s.flag).collect();
        names.sort();
        names.dedup();
        flags.sort();
        flags.dedup();
        assert_eq!(names.len(), SETTINGS.len());
        assert_eq!(flags.len(), SETTINGS.len());
    }
}
