//! Checking a setting's value against its `Kind`, whether it came as text (a flag, an
//! environment variable) or as a TOML value (the config file). Owns the wording of "what
//! is wrong with this value" — `expected …, got …` — that every error names after its
//! source; a PostgreSQL URL is never echoed (it may hold a password).

use super::settings::{Kind, Value};
use std::path::{Path, PathBuf};
use toml::de::DeValue;

/// Checks text given on the command line (each occurrence of a flag) or in a variable.
pub fn from_text(kind: Kind, raws: &[String]) -> Result<Value, String> {
    let raw = raws.last().map(|s| s.trim()).unwrap_or("");
    match kind {
        Kind::Switch => match raw {
            "true" | "1" => Ok(Value::Switch(true)),
            "false" | "0" => Ok(Value::Switch(false)),
            other => Err(format!("expected true or false, got {other:?}")),
        },
        Kind::Number { min, max } => match raw.parse::<u64>() {
            Ok(n) => number(n, min, max),
            Err(_) => Err(format!("{}, got {raw:?}", expected_number(min, max))),
        },
        Kind::Paths => {
            let paths: Vec<PathBuf> = raws
                .iter()
                .flat_map(|r| r.split(','))
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect();
            if paths.is_empty() {
                return Err("expected one or more file names".into());
            }
            Ok(Value::Paths(paths))
        }
        Kind::Path => non_empty(raw).map(|p| Value::Path(PathBuf::from(p))),
        Kind::Text
        | Kind::Address
        | Kind::PostgresUrl
        | Kind::LogFilter
        | Kind::Retention
        | Kind::HttpUrl => text(kind, raw).map(Value::Text),
    }
}

/// Checks a value of the config file; relative paths are taken from `base` (the config
/// file's directory).
pub fn from_toml(kind: Kind, v: &DeValue<'_>, base: &Path) -> Result<Value, String> {
    let wrong = |expected: &str| Err(format!("{expected}, got {}", shown(v)));
    match (kind, v) {
        (Kind::Switch, DeValue::Boolean(b)) => Ok(Value::Switch(*b)),
        (Kind::Switch, _) => wrong("expected true or false"),
        (Kind::Number { min, max }, DeValue::Integer(i)) => {
            match u64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => number(n, min, max),
                Err(_) => wrong(&expected_number(min, max)),
            }
        }
        (Kind::Number { min, max }, _) => wrong(&expected_number(min, max)),
        (Kind::Path, DeValue::String(s)) => {
            non_empty(s).map(|p| Value::Path(relative_to(base, Path::new(p))))
        }
        (Kind::Path, _) => wrong("expected a path (a string)"),
        (Kind::Paths, DeValue::String(s)) => {
            non_empty(s).map(|p| Value::Paths(vec![relative_to(base, Path::new(p))]))
        }
        (Kind::Paths, DeValue::Array(items)) => {
            let mut paths = Vec::new();
            for item in items.iter() {
                match item.get_ref() {
                    DeValue::String(s) => paths.push(relative_to(base, Path::new(non_empty(s)?))),
                    other => {
                        return Err(format!(
                            "expected an array of paths (strings), got {} in it",
                            shown(other)
                        ))
                    }
                }
            }
            Ok(Value::Paths(paths))
        }
        (Kind::Paths, _) => wrong("expected an array of paths (strings)"),
        (_, DeValue::String(s)) => text(kind, s).map(Value::Text),
        (Kind::Address, _) => wrong("expected \"HOST:PORT\" (a string)"),
        (_, _) => wrong("expected a string"),
    }
}

/// A TOML value as an error shows it: strings quoted, tables and arrays by what they are.
pub fn shown(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("{:?}", s.as_ref()),
        DeValue::Integer(i) => i.to_string(),
        DeValue::Float(f) => f.to_string(),
        DeValue::Boolean(b) => b.to_string(),
        DeValue::Datetime(d) => d.to_string(),
        DeValue::Array(_) => "an array".into(),
        DeValue::Table(_) => "a table".into(),
    }
}

fn relative_to(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn expected_number(min: u64, max: u64) -> String {
    format!("expected a whole number from {min} to {max}")
}

fn number(n: u64, min: u64, max: u64) -> Result<Value, String> {
    if (min..=max).contains(&n) {
        Ok(Value::Number(n))
    } else {
        Err(format!("{}, got {n}", expected_number(min, max)))
    }
}

fn non_empty(s: &str) -> Result<&str, String> {
    if s.trim().is_empty() {
        Err("expected a non-empty value".into())
    } else {
        Ok(s)
    }
}

/// Checks text-like kinds; the text is kept as given.
fn text(kind: Kind, s: &str) -> Result<String, String> {
    non_empty(s)?;
    match kind {
        Kind::Address if !is_host_port(s) => Err(format!("expected HOST:PORT, got {s:?}")),
        Kind::PostgresUrl => s
            .parse::<tokio_postgres::Config>()
            .map(|_| s.to_string())
            .map_err(|e| {
                format!(
                    "not a PostgreSQL URL ({e}); expected \
                     postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
                )
            }),
        Kind::Retention => aetheris_actors::gc::parse_retention(s).map(|_| s.to_string()),
        Kind::LogFilter => tracing_subscriber::EnvFilter::try_new(s)
            .map(|_| s.to_string())
            .map_err(|e| {
                format!("not a log filter ({e}): expected e.g. \"info\" or \"aetheris_actors=debug,warn\", got {s:?}")
            }),
        Kind::HttpUrl => aetheris_actors::trace::export::check_endpoint(s).map(|()| s.to_string()),
        _ => Ok(s.to_string()),
    }
}

/// `HOST:PORT` with a port number (the host is resolved when listening).
fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// `url` with any password replaced by `***`: in the user part of a URL, and in a
/// `password=` parameter (of a URL's query or a key=value connection string).
pub fn without_password(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let user_info = &out[rest_start..rest_start + at];
            if let Some(colon) = user_info.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    let mut masked = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("password=") {
        let value_start = i + "password=".len();
        masked.push_str(&rest[..value_start]);
        masked.push_str("***");
        let value_end = rest[value_start..]
            .find(['&', ' '])
            .map_or(rest.len(), |e| value_start + e);
        rest = &rest[value_end..];
    }
    masked.push_str(rest);
    masked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(kind: Kind, raw: &str) -> Result<Value, String> {
        from_text(kind, &[raw.to_string()])
    }

    fn toml_value(kind: Kind, text: &str) -> Result<Value, String> {
        let doc = format!("v = {text}");
        let table = toml::de::DeTable::parse(&doc).unwrap();
        let v = table.get_ref().get("v").unwrap();
        from_toml(kind, v.get_ref(), Path::new("/etc/aetheris"))
    }

    #[test]
    fn numbers_are_checked_against_their_range_from_text_and_from_toml() {
        let kind = Kind::Number { min: 1, max: 10 };
        assert_eq!(t(kind, "7"), Ok(Value::Number(7)));
        assert_eq!(
            t(kind, "fast").unwrap_err(),
            "expected a whole number from 1 to 10, got \"fast\""
        );
        assert_eq!(
            t(kind, "0").unwrap_err(),
            "expected a whole number from 1 to 10, got 0"
        );
        assert_eq!(toml_value(kind, "0x0a"), Ok(Value::Number(10)));
        assert_eq!(toml_value(kind, "1_0"), Ok(Value::Number(10)));
        assert_eq!(
            toml_value(kind, "\"fast\"").unwrap_err(),
            "expected a whole number from 1 to 10, got \"fast\""
        );
        assert!(toml_value(kind, "-3").unwrap_err().ends_with("got -3"));
        assert!(toml_value(kind, "1.5").unwrap_err().ends_with("got 1.5"));
        assert!(toml_value(kind, "[1]")
            .unwrap_err()
            .ends_with("got an array"));
    }

    #[test]
    fn switches_paths_addresses_urls_and_filters() {
        assert_eq!(t(Kind::Switch, "false"), Ok(Value::Switch(false)));
        assert_eq!(t(Kind::Switch, "1"), Ok(Value::Switch(true)));
        assert!(t(Kind::Switch, "yes").unwrap_err().contains("got \"yes\""));
        assert_eq!(toml_value(Kind::Switch, "true"), Ok(Value::Switch(true)));
        assert!(toml_value(Kind::Switch, "\"true\"").is_err());

        assert_eq!(
            from_text(Kind::Paths, &["a,b".into(), "c".into()]),
            Ok(Value::Paths(vec!["a".into(), "b".into(), "c".into()]))
        );
        assert_eq!(
            toml_value(Kind::Paths, r#"["k.key", "/abs.key"]"#),
            Ok(Value::Paths(vec![
                "/etc/aetheris/k.key".into(),
                "/abs.key".into()
            ]))
        );
        assert_eq!(
            toml_value(Kind::Path, "\"limits.json\""),
            Ok(Value::Path("/etc/aetheris/limits.json".into()))
        );
        assert!(toml_value(Kind::Paths, "[1]")
            .unwrap_err()
            .contains("got 1 in it"));

        assert!(t(Kind::Address, "127.0.0.1:0").is_ok());
        assert!(t(Kind::Address, "[::1]:7420").is_ok());
        assert_eq!(
            t(Kind::Address, "not-an-address").unwrap_err(),
            "expected HOST:PORT, got \"not-an-address\""
        );
        assert!(t(Kind::Address, "h:99999").is_err());

        let e = t(Kind::PostgresUrl, "postgres://ada:s3cret@[bad").unwrap_err();
        assert!(e.starts_with("not a PostgreSQL URL"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        assert!(t(Kind::PostgresUrl, "postgres://ada@db/x").is_ok());

        assert!(t(Kind::LogFilter, "aetheris_actors=debug,warn").is_ok());
        assert!(t(Kind::LogFilter, "x=notalevel")
            .unwrap_err()
            .starts_with("not a log filter"));
        assert!(t(Kind::Text, " ").is_err());
    }

    #[test]
    fn passwords_are_masked_wherever_a_url_holds_them() {
        assert_eq!(
            without_password("postgres://ada:s3cret@db:5432/jobs"),
            "postgres://ada:***@db:5432/jobs"
        );
        assert_eq!(
            without_password("postgres://ada@db/jobs?password=s3cret&sslmode=disable"),
            "postgres://ada@db/jobs?password=***&sslmode=disable"
        );
        assert_eq!(
            without_password("host=db password=s3cret user=ada"),
            "host=db password=*** user=ada"
        );
        assert_eq!(
            without_password("postgres://a:b:c@d@h/x"),
            "postgres://a:***@h/x"
        );
        assert_eq!(without_password("postgres://db/x"), "postgres://db/x");
    }
}
