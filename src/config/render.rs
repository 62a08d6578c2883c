//! Texts derived from `SETTINGS`: each flag's `--help` line, the settings reference of
//! docs/configuration.md (a test fails when the committed file differs), and
//! `--print-config`'s effective configuration — valid TOML, each value followed by where
//! it came from, with key files by path and a database password as `***`.

use super::settings::{Cmd, Fallback, Kind, Setting, Value, SETTINGS, TABLES};
use super::value::without_password;
use super::{Effective, Limits, Source};
use aetheris_actors::ratelimit::{LimitsConfig, TenantLimits};

/// A flag's help: the setting's help, then its key, variable and default for `cmd`.
pub fn help_for(s: &Setting, cmd: Cmd) -> String {
    let default = match s.default_for(cmd) {
        Fallback::Required => " [required]".to_string(),
        Fallback::Number(n) => format!(" [default: {n}]"),
        Fallback::Text(t) => format!(" [default: {t}]"),
        Fallback::Unset | Fallback::Off => String::new(),
    };
    format!(
        "{} [config: {}] [env: {}]{default}",
        s.help,
        s.dotted(),
        s.env
    )
}

/// A default as the reference shows it.
#[cfg(test)]
fn fallback_md(f: Fallback) -> String {
    match f {
        Fallback::Required => "required".into(),
        Fallback::Unset => "unset".into(),
        Fallback::Number(n) => format!("`{n}`"),
        Fallback::Text(t) => format!("`\"{t}\"`"),
        Fallback::Off => "`false`".into(),
    }
}

/// What the reference says a key takes.
#[cfg(test)]
fn kind_md(kind: Kind) -> String {
    match kind {
        Kind::Text => "string".into(),
        Kind::Address => "string `HOST:PORT`".into(),
        Kind::PostgresUrl => "string (URL)".into(),
        Kind::Path => "string (path)".into(),
        Kind::Paths => "array of paths".into(),
        Kind::Number { min, max } => format!("integer {min}–{max}"),
        Kind::Switch => "boolean".into(),
        Kind::LogFilter => "string (filter)".into(),
        Kind::Retention => "string (`30d`, `12h`, `forever`)".into(),
        Kind::HttpUrl => "string (URL)".into(),
    }
}

/// The settings reference of docs/configuration.md: one table per TOML table.
#[cfg(test)]
pub fn reference_markdown() -> String {
    let mut out = String::new();
    for table in TABLES {
        out.push_str(&format!(
            "\n### `[{table}]`\n\n\
             | key | type | default | flag | variable | commands | meaning |\n\
             |---|---|---|---|---|---|---|\n"
        ));
        for s in SETTINGS.iter().filter(|s| s.table == table) {
            let mut default = fallback_md(s.default);
            for (cmd, f) in s.command_defaults {
                default.push_str(&format!("; {}: {}", cmd.name(), fallback_md(*f)));
            }
            let commands: Vec<&str> = s.commands.iter().map(|c| c.name()).collect();
            out.push_str(&format!(
                "| `{}` | {} | {default} | `--{}` | `{}` | {} | {} |\n",
                s.name,
                kind_md(s.kind),
                s.flag,
                s.env,
                commands.join(", "),
                s.help.replace('|', "\\|")
            ));
        }
    }
    out
}

/// `--print-config`: the settings `e.cmd` reads, as TOML with their sources.
pub fn effective_toml(e: &Effective) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let note = |lines: &mut Vec<(String, String)>, text: String| lines.push((text, String::new()));
    note(
        &mut lines,
        format!(
            "# aetheris {}: effective configuration (each value's source after it)",
            e.cmd.name()
        ),
    );
    note(
        &mut lines,
        match &e.config_file {
            Some(c) => format!("# config file: {} ({})", c.path.display(), c.named_by),
            None => "# config file: none (--config FILE or AETHERIS_CONFIG)".into(),
        },
    );
    for table in TABLES {
        let settings: Vec<&Setting> = SETTINGS
            .iter()
            .filter(|s| s.table == table && s.used_by(e.cmd))
            .collect();
        if settings.is_empty() {
            continue;
        }
        note(&mut lines, String::new());
        note(&mut lines, format!("[{table}]"));
        for s in settings {
            let source = e.source(s.key).map_or("unset".into(), Source::to_string);
            lines.push((assignment(s, e.value(s.key)), format!("# {source}")));
        }
        if table == "limits" {
            if let Limits::Inline(limits) = e.limits() {
                note(
                    &mut lines,
                    format!("# inline limits, {}:", e.limits_source()),
                );
                for line in limits_toml(limits).lines() {
                    note(&mut lines, line.to_string());
                }
            }
        }
    }
    let width = lines
        .iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (line, source) in lines {
        if source.is_empty() {
            out.push_str(&line);
        } else {
            out.push_str(&format!("{line:width$}  {source}"));
        }
        out.push('\n');
    }
    out
}

/// `key = value` in TOML (a comment when unset).
fn assignment(s: &Setting, v: &Value) -> String {
    let value = match v {
        Value::Unset => return format!("# {} = (not set)", s.name),
        Value::Text(t) if s.kind == Kind::PostgresUrl => quoted(&without_password(t)),
        Value::Text(t) => quoted(t),
        Value::Path(p) => quoted(&p.display().to_string()),
        Value::Paths(ps) => {
            let items: Vec<String> = ps
                .iter()
                .map(|p| quoted(&p.display().to_string()))
                .collect();
            format!("[{}]", items.join(", "))
        }
        Value::Number(n) => n.to_string(),
        Value::Switch(b) => b.to_string(),
    };
    format!("{} = {value}", s.name)
}

/// A TOML basic string (JSON's escapes are valid TOML).
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A TOML key: bare when it can be.
fn key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        quoted(k)
    }
}

/// Inline limits as the `[limits]` tables that give them.
fn limits_toml(l: &LimitsConfig) -> String {
    let mut out = String::new();
    if let Some(share) = l.share {
        out.push_str(&format!("share = {}\n", number(share)));
    }
    out.push_str("[limits.defaults]\n");
    out.push_str(&tenant_limits_toml(&l.defaults));
    for (tenant, limits) in &l.tenants {
        out.push_str(&format!("[limits.tenants.{}]\n", key(tenant)));
        out.push_str(&tenant_limits_toml(limits));
    }
    out
}

fn tenant_limits_toml(l: &TenantLimits) -> String {
    let mut out = String::new();
    let fields = [
        ("admissions_per_s", l.admissions_per_s),
        ("admission_burst", l.admission_burst),
        ("tool_calls_per_s", l.tool_calls_per_s),
        ("llm_tokens_per_min", l.llm_tokens_per_min),
    ];
    for (name, v) in fields {
        if let Some(v) = v {
            out.push_str(&format!("{name} = {}\n", number(v)));
        }
    }
    if !l.tool_calls_per_s_by_tool.is_empty() {
        let tools: Vec<String> = l
            .tool_calls_per_s_by_tool
            .iter()
            .map(|(t, v)| format!("{} = {}", key(t), number(*v)))
            .collect();
        out.push_str(&format!(
            "tool_calls_per_s_by_tool = {{ {} }}\n",
            tools.join(", ")
        ));
    }
    if let Some(n) = l.max_running_jobs {
        out.push_str(&format!("max_running_jobs = {n}\n"));
    }
    out
}

/// A finite limit as TOML writes it (`50.0`, `0.5`).
fn number(v: f64) -> String {
    serde_json::Number::from_f64(v).map_or_else(|| "0".into(), |n| n.to_string())
}
