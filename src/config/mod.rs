//! The settings of `dev`, `server`, `worker` and `migrate`, resolved once at start from,
//! highest first: a flag, an `AETHERIS_*` environment variable, the config file
//! (`--config FILE` or `AETHERIS_CONFIG`; never found implicitly), the default. Every
//! setting is described once, in `settings::SETTINGS`; flags, file, `--print-config` and
//! docs/configuration.md derive from it. Invariant: a command starts only with every
//! setting it reads checked — an unknown key or a bad value anywhere in the file, in a
//! variable the command reads, or in a flag stops it with one message that names the key
//! and where it came from (`aetheris.toml:7: [worker] lease_ttl_ms: …`, `AETHERIS_MAX_JOBS:
//! …`, `--max-jobs: …`).

mod file;
mod flags;
pub mod render;
pub mod settings;
mod value;

pub use flags::{Flags, ForCommand, ForDev, ForMigrate, ForServer, ForWorker};
pub use settings::{Cmd, Key};

use aetheris_actors::ratelimit::LimitsConfig;
use settings::{setting, Fallback, Setting, Value, SETTINGS};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where a value came from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    Default,
    File { path: PathBuf, line: usize },
    Env(&'static str),
    Flag(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::File { path, line } => write!(f, "{}:{line}", path.display()),
            Source::Env(name) => f.write_str(name),
            Source::Flag(flag) => write!(f, "--{flag}"),
        }
    }
}

/// Per-tenant rate limits, from a limits file or inline in the config file.
#[derive(Clone, Debug, PartialEq)]
pub enum Limits {
    None,
    File(PathBuf),
    Inline(LimitsConfig),
}

/// A setting that stops the start; `from_flag` when a flag was wrong (a usage error).
#[derive(Debug, PartialEq)]
pub struct ConfigError {
    pub message: String,
    pub from_flag: bool,
    /// Which of several errors is reported: a wrong flag (0), a wrong variable or file
    /// (1), a missing setting (2).
    rank: u8,
}

impl ConfigError {
    fn new(message: String) -> Self {
        ConfigError {
            message,
            from_flag: false,
            rank: 1,
        }
    }

    fn from_flag(message: String) -> Self {
        ConfigError {
            message,
            from_flag: true,
            rank: 0,
        }
    }

    fn missing(message: String) -> Self {
        ConfigError {
            message,
            from_flag: false,
            rank: 2,
        }
    }
}

/// The config file in use and what named it (`--config` or `AETHERIS_CONFIG`).
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigFileRef {
    pub path: PathBuf,
    pub named_by: &'static str,
}

/// The settings of one command, each with its source.
#[derive(Debug)]
pub struct Effective {
    pub cmd: Cmd,
    pub config_file: Option<ConfigFileRef>,
    values: BTreeMap<Key, (Value, Source)>,
    limits: (Limits, Source),
}

/// What the command line gave: the settings' flags (raw text, checked by `resolve`) and
/// `--config`.
#[derive(Clone, Debug, Default)]
pub struct Given {
    pub values: BTreeMap<Key, Vec<String>>,
    pub config: Option<PathBuf>,
}

/// Resolves `cmd`'s settings from `given`, the process's environment and the config file.
pub fn resolve(cmd: Cmd, given: &Given) -> Result<Effective, ConfigError> {
    resolve_with(cmd, given, &|name| std::env::var(name).ok())
}

/// `resolve` with `env` in place of the process's environment. An empty variable counts
/// as unset.
pub fn resolve_with(
    cmd: Cmd,
    given: &Given,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Effective, ConfigError> {
    let env = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    let config_file = match (&given.config, env("AETHERIS_CONFIG")) {
        (Some(p), _) => Some(ConfigFileRef {
            path: p.clone(),
            named_by: "--config",
        }),
        (None, Some(p)) => Some(ConfigFileRef {
            path: PathBuf::from(p),
            named_by: "AETHERIS_CONFIG",
        }),
        (None, None) => None,
    };
    let file = match &config_file {
        Some(c) => file::read(&c.path).map_err(|e| {
            ConfigError::new(if e.starts_with("cannot read") {
                format!("{} {}: {e}", c.named_by, c.path.display())
            } else {
                e
            })
        })?,
        None => file::ConfigFile::default(),
    };
    let mut values = BTreeMap::new();
    let mut errors = Vec::new();
    for s in SETTINGS.iter().filter(|s| s.used_by(cmd)) {
        match resolve_one(s, cmd, given, &env, &file) {
            Ok(v) => {
                values.insert(s.key, v);
            }
            Err(e) => errors.push(e),
        }
    }
    // A wrong flag first (what was just typed), then a wrong variable, then a missing one.
    errors.sort_by_key(|e| e.rank);
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    let limits = if cmd_reads_limits(cmd) {
        limits(&values, &file)
    } else {
        (Limits::None, Source::Default)
    };
    let effective = Effective {
        cmd,
        config_file,
        values,
        limits,
    };
    effective.check_together()?;
    Ok(effective)
}

/// One setting: the flag, else the variable, else the file, else the default.
fn resolve_one(
    s: &'static Setting,
    cmd: Cmd,
    given: &Given,
    env: &dyn Fn(&str) -> Option<String>,
    file: &file::ConfigFile,
) -> Result<(Value, Source), ConfigError> {
    if let Some(raws) = given.values.get(&s.key) {
        return value::from_text(s.kind, raws)
            .map(|v| (v, Source::Flag(s.flag)))
            .map_err(|e| ConfigError::from_flag(format!("--{}: {e}", s.flag)));
    }
    if let Some(raw) = env(s.env) {
        return value::from_text(s.kind, &[raw])
            .map(|v| (v, Source::Env(s.env)))
            .map_err(|e| ConfigError::new(format!("{}: {e}", s.env)));
    }
    if let Some((v, line)) = file.values.get(&s.key) {
        let source = Source::File {
            path: file.path.clone(),
            line: *line,
        };
        return Ok((v.clone(), source));
    }
    match s.default_for(cmd) {
        Fallback::Required => Err(ConfigError::missing(format!(
            "{} is required: give --{}, {}, or `{}` under [{}] in the config file (--config)",
            s.dotted(),
            s.flag,
            s.env,
            s.name,
            s.table
        ))),
        fallback => Ok((fallback.value(), Source::Default)),
    }
}

fn cmd_reads_limits(cmd: Cmd) -> bool {
    setting(Key::LimitsFile).used_by(cmd)
}

/// The limits in use: a limits file (from any source) wins over the file's inline limits
/// only by precedence; the file itself cannot give both (file.rs refuses it).
fn limits(values: &BTreeMap<Key, (Value, Source)>, file: &file::ConfigFile) -> (Limits, Source) {
    match values.get(&Key::LimitsFile) {
        Some((Value::Path(p), source)) => (Limits::File(p.clone()), source.clone()),
        _ => match &file.limits {
            Some((inline, line)) => (
                Limits::Inline(inline.clone()),
                Source::File {
                    path: file.path.clone(),
                    line: *line,
                },
            ),
            None => (Limits::None, Source::Default),
        },
    }
}

impl Effective {
    /// The value of `key` (`Unset` for a setting this command does not read).
    pub fn value(&self, key: Key) -> &Value {
        self.values.get(&key).map_or(&Value::Unset, |(v, _)| v)
    }

    pub fn source(&self, key: Key) -> Option<&Source> {
        self.values.get(&key).map(|(_, s)| s)
    }

    pub fn number(&self, key: Key) -> u64 {
        match self.value(key) {
            Value::Number(n) => *n,
            _ => 0,
        }
    }

    /// A number used as a count or size (settings' ranges fit a `usize`).
    pub fn count(&self, key: Key) -> usize {
        usize::try_from(self.number(key)).unwrap_or(usize::MAX)
    }

    pub fn switch(&self, key: Key) -> bool {
        matches!(self.value(key), Value::Switch(true))
    }

    pub fn text(&self, key: Key) -> Option<&str> {
        match self.value(key) {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    pub fn path(&self, key: Key) -> Option<&Path> {
        match self.value(key) {
            Value::Path(p) => Some(p),
            Value::Text(t) => Some(Path::new(t)),
            _ => None,
        }
    }

    pub fn paths(&self, key: Key) -> &[PathBuf] {
        match self.value(key) {
            Value::Paths(p) => p,
            _ => &[],
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits.0
    }

    pub fn limits_source(&self) -> &Source {
        &self.limits.1
    }

    /// `[worker] heartbeat_ms 6000 (AETHERIS_HEARTBEAT_MS)`: a value with its source.
    fn shown(&self, key: Key) -> String {
        let source = self.source(key).map_or("unset".into(), |s| s.to_string());
        format!(
            "{} {} ({source})",
            setting(key).toml_name(),
            self.number(key)
        )
    }

    /// Rules between settings.
    fn check_together(&self) -> Result<(), ConfigError> {
        let runs_worker =
            self.cmd == Cmd::Worker || (self.cmd == Cmd::Server && self.switch(Key::WithWorker));
        if self.cmd == Cmd::Server && !runs_worker {
            // A worker's flag on a server without its worker would do nothing. (The file
            // and the environment may carry them: servers and workers share them.)
            let worker_flag = SETTINGS.iter().find(|s| {
                matches!(s.table, "worker" | "retention")
                    && s.used_by(Cmd::Server)
                    && matches!(self.source(s.key), Some(Source::Flag(_)))
            });
            if let Some(s) = worker_flag {
                return Err(ConfigError::new(format!(
                    "--{} is a worker's setting: add --with-worker to run a worker in this \
                     server, or give it to `aetheris worker`",
                    s.flag
                )));
            }
        }
        if runs_worker && self.number(Key::HeartbeatMs) >= self.number(Key::LeaseTtlMs) {
            return Err(ConfigError::new(format!(
                "{} must be below {}",
                self.shown(Key::HeartbeatMs),
                self.shown(Key::LeaseTtlMs)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
