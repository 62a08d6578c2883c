//! Reading aetheris.toml: every table and key is checked against `SETTINGS` — an unknown
//! one, or a value of the wrong kind, is an error naming the file, the line, the table and
//! the key — and every key is checked whichever command reads the file, so a file shared
//! by `dev`, `server` and `worker` is valid for all or for none. `[limits]` may hold the
//! limits file's format inline (docs/limits.md), checked by the same parser as a limits
//! file; relative paths are taken from the file's directory.

use super::settings::{Key, Value, SETTINGS, TABLES};
use super::value;
use aetheris_actors::ratelimit::LimitsConfig;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::de::{DeTable, DeValue};

/// The settings a config file gives, each with the line it is on.
#[derive(Debug, Default)]
pub struct ConfigFile {
    /// As named by `--config` or `AETHERIS_CONFIG` (how errors and sources show it).
    pub path: PathBuf,
    pub values: BTreeMap<Key, (Value, usize)>,
    /// Limits given inline in `[limits]`, and the line of that table.
    pub limits: Option<(LimitsConfig, usize)>,
}

/// Reads and checks the file at `path`.
pub fn read(path: &Path) -> Result<ConfigFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    parse(path, &text)
}

/// Checks `text`, the contents of the config file `path`.
pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, String> {
    let name = path.display();
    let doc = DeTable::parse(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        let (line, column) = position(text, at);
        format!("{name}:{line}:{column}: not valid TOML: {}", e.message())
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    let mut file = ConfigFile {
        path: path.to_path_buf(),
        ..ConfigFile::default()
    };
    for (table_key, table_value) in doc.get_ref().iter() {
        let table = table_key.get_ref().as_ref();
        let line = position(text, table_key.span().start).0;
        let at = |what: String| format!("{name}:{line}: {what}");
        let is_table = matches!(table_value.get_ref(), DeValue::Table(_));
        if !TABLES.contains(&table) {
            return Err(at(unknown_table(table, is_table)));
        }
        let DeValue::Table(entries) = table_value.get_ref() else {
            return Err(at(format!("[{table}] must be a table")));
        };
        read_table(&mut file, text, base, (table, line), entries)?;
    }
    Ok(file)
}

/// What to say of a top-level key that is not one of `TABLES`: the table a setting of
/// that name is in, if there is one.
fn unknown_table(name: &str, is_table: bool) -> String {
    let tables = TABLES.map(|t| format!("[{t}]")).join(", ");
    if is_table {
        return format!("unknown table [{name}]; the tables are {tables}");
    }
    match SETTINGS.iter().find(|s| s.name == name) {
        Some(s) => format!("{name}: unknown key here; did you mean {}?", s.toml_name()),
        None => format!("{name}: unknown key; every setting is in one of the tables {tables}"),
    }
}

/// The settings of one table (and the inline limits of `[limits]`); `table` is its name
/// and the line that opens it.
fn read_table(
    file: &mut ConfigFile,
    text: &str,
    base: &Path,
    (table, table_line): (&str, usize),
    entries: &DeTable<'_>,
) -> Result<(), String> {
    let name = file.path.display().to_string();
    let mut inline_limits = serde_json::Map::new();
    for (key, value) in entries.iter() {
        let key_name = key.get_ref().as_ref();
        let line = position(text, key.span().start).0;
        if table == "limits" && key_name != "file" {
            inline_limits.insert(key_name.to_string(), to_json(value.get_ref())?);
            continue;
        }
        let Some(setting) = SETTINGS
            .iter()
            .find(|s| s.table == table && s.name == key_name)
        else {
            let known: Vec<&str> = SETTINGS
                .iter()
                .filter(|s| s.table == table)
                .map(|s| s.name)
                .collect();
            return Err(format!(
                "{name}:{line}: [{table}] {key_name}: unknown key; [{table}] has {}",
                known.join(", ")
            ));
        };
        let v = value::from_toml(setting.kind, value.get_ref(), base)
            .map_err(|e| format!("{name}:{line}: [{table}] {key_name}: {e}"))?;
        file.values.insert(setting.key, (v, line));
    }
    if inline_limits.is_empty() {
        return Ok(());
    }
    let line = table_line;
    if file.values.contains_key(&Key::LimitsFile) {
        return Err(format!(
            "{name}:{line}: [limits] has both `file` and inline limits (defaults, tenants, \
             share): give one of them"
        ));
    }
    let limits = inline(serde_json::Value::Object(inline_limits))
        .map_err(|e| format!("{name}:{line}: [limits] {e}"))?;
    file.limits = Some((limits, line));
    Ok(())
}

/// Inline limits, checked as a limits file would be (the same parser).
fn inline(json: serde_json::Value) -> Result<LimitsConfig, String> {
    // The shape first, for a message without the JSON text's positions.
    serde_json::from_value::<LimitsConfig>(json.clone()).map_err(|e| e.to_string())?;
    LimitsConfig::parse(&json.to_string())
        .map_err(|e| e.strip_prefix("limits: ").unwrap_or(&e).to_string())
}

/// A TOML value as JSON (for the limits parser).
fn to_json(v: &DeValue<'_>) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    Ok(match v {
        DeValue::String(s) => J::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
            .map(J::from)
            .map_err(|_| format!("{i} is out of range"))?,
        DeValue::Float(f) => f
            .as_str()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(J::Number)
            .ok_or_else(|| format!("{f} is not a finite number"))?,
        DeValue::Boolean(b) => J::Bool(*b),
        DeValue::Datetime(d) => J::String(d.to_string()),
        DeValue::Array(items) => J::Array(
            items
                .iter()
                .map(|i| to_json(i.get_ref()))
                .collect::<Result<_, _>>()?,
        ),
        DeValue::Table(t) => J::Object(
            t.iter()
                .map(|(k, v)| Ok((k.get_ref().to_string(), to_json(v.get_ref())?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// 1-based line and column of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<ConfigFile, String> {
        parse(Path::new("conf/aetheris.toml"), text)
    }

    #[test]
    fn keys_are_read_with_their_line_and_paths_from_the_file_directory() {
        let f = parsed(
            "# a comment\n[worker]\nlease_ttl_ms = 3000\n\n[auth]\nhs256_secret_files = [\"a.key\"]\n",
        )
        .unwrap();
        assert_eq!(f.values[&Key::LeaseTtlMs], (Value::Number(3000), 3));
        assert_eq!(
            f.values[&Key::Hs256SecretFiles],
            (Value::Paths(vec!["conf/a.key".into()]), 6)
        );
        assert!(f.limits.is_none());
        let dotted = parsed("worker.max_jobs = 7\n").unwrap();
        assert_eq!(dotted.values[&Key::MaxJobs], (Value::Number(7), 1));
    }

    #[test]
    fn unknown_and_invalid_keys_name_file_line_table_and_key() {
        let cases = [
            (
                "[worker]\nlease_ttl_ms = \"fast\"\n",
                "conf/aetheris.toml:2: [worker] lease_ttl_ms: expected a whole number from 100 \
                 to 86400000, got \"fast\"",
            ),
            (
                "[worker]\n\nlease_ttl = 5\n",
                "conf/aetheris.toml:3: [worker] lease_ttl: unknown key; [worker] has \
                 lease_ttl_ms, heartbeat_ms, max_jobs, snapshot_every, drain_grace_ms, admin_bind",
            ),
            (
                "[wrker]\nmax_jobs = 1\n",
                "conf/aetheris.toml:1: unknown table [wrker]; the tables are [database], \
                 [gateway], [auth], [worker], [limits], [llm], [evidence], [retention], [dev], [log]",
            ),
            (
                "bind = \"x:1\"\n",
                "conf/aetheris.toml:1: bind: unknown key here; did you mean [gateway] bind?",
            ),
            (
                "speed = 1\n",
                "conf/aetheris.toml:1: speed: unknown key; every setting is in",
            ),
            (
                "database = 5\n",
                "conf/aetheris.toml:1: [database] must be a table",
            ),
            (
                "[gateway]\nbind = \"nowhere\"\n",
                "conf/aetheris.toml:2: [gateway] bind: expected HOST:PORT, got \"nowhere\"",
            ),
            (
                "[database]\nno_migrate = \"yes\"\n",
                "conf/aetheris.toml:2: [database] no_migrate: expected true or false, got \"yes\"",
            ),
            (
                "[worker]\nmax_jobs = 5\nmax_jobs = 6\n",
                "conf/aetheris.toml:3:1: not valid TOML",
            ),
            ("[worker\n", "conf/aetheris.toml:1:8: not valid TOML"),
        ];
        for (text, want) in cases {
            let e = parsed(text).unwrap_err();
            assert!(e.starts_with(want), "{text:?}:\n got  {e}\n want {want}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn limits_may_be_inline_in_the_limits_file_format() {
        let f = parsed(
            "[limits]\nshare = 0.5\n[limits.defaults]\nadmissions_per_s = 50\n\
             [limits.tenants.acme]\ntool_calls_per_s_by_tool = { http = 20 }\nmax_running_jobs = 3\n",
        )
        .unwrap();
        let (limits, line) = f.limits.unwrap();
        assert_eq!(line, 1);
        assert_eq!(limits.share, Some(0.5));
        assert_eq!(limits.defaults.admissions_per_s, Some(50.0));
        let acme = limits.for_tenant("acme");
        assert_eq!(acme.tool_calls_per_s_by_tool["http"], 20.0);
        assert_eq!(acme.max_running_jobs, Some(3));
        assert_eq!(acme.admissions_per_s, Some(50.0));

        for (text, want) in [
            (
                "[limits.defaults]\nadmissions_per_s = -1\n",
                "[limits] defaults: every limit must be a positive number",
            ),
            ("[limits.defaults]\nspeed = 1\n", "unknown field `speed`"),
            (
                "[limits]\nfile = \"l.json\"\nshare = 1.0\n",
                "[limits] has both `file` and inline limits",
            ),
        ] {
            let e = parsed(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.starts_with("conf/aetheris.toml:"), "{e}");
        }
    }
}
