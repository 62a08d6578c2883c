//! `aetheris tenant create|list|set-limits`: the CLI side of the tenant admin API
//! (`POST/GET /v1/tenants`, `PUT /v1/tenants/{id}/limits`, permission `tenant:admin`).
//! Owns the `--limits` convention — inline JSON, or `@FILE` for a file holding it — and the
//! human output of tenants. Token, runtime and problem+json handling are `client.rs`'s.
//!
//! Local input (unparseable JSON, a missing file) is checked before any request is sent,
//! so a bad command changes nothing on the server (G8); the server still checks the
//! limits themselves (known fields, positive numbers) and answers problem+json.

use crate::client::{block_on, path_segment, Api};
use clap::Subcommand;
use serde_json::{json, Value};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (409 if the id exists).
    Create {
        /// Tenant id: the `tenant` claim of its tokens.
        id: String,
        /// Display name (default: the id).
        #[arg(long)]
        name: Option<String>,
        /// Rate limits as inline JSON, or `@FILE` to read them from a file (docs/limits.md).
        #[arg(long)]
        limits: Option<String>,
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// List every tenant.
    List {
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// Replace a tenant's rate limits (applied without a restart).
    SetLimits {
        /// Tenant id.
        id: String,
        /// Rate limits as inline JSON, or `@FILE` to read them from a file; `{}` clears them.
        #[arg(long)]
        limits: String,
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
}

/// Reads a `--limits` value: `@FILE` is a file's contents, anything else is the JSON
/// itself. Limits are a JSON object; the server checks its fields.
fn parse_limits(arg: &str) -> Result<Value, String> {
    let (text, what) = match arg.strip_prefix('@') {
        Some("") => return Err("--limits @FILE needs a file name after @".into()),
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| format!("reading --limits {path}: {e}"))?,
            path.to_string(),
        ),
        None => (arg.to_string(), "--limits".to_string()),
    };
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("{what} is not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err(format!(
            "{what} must be a JSON object such as {{\"admissions_per_s\": 50}}"
        ));
    }
    Ok(v)
}

pub fn run(server: &str, token: Option<&str>, cmd: TenantCommand) -> Result<ExitCode, String> {
    // Local input first: nothing is sent for a command that cannot be right.
    let limits = match &cmd {
        TenantCommand::Create {
            limits: Some(l), ..
        }
        | TenantCommand::SetLimits { limits: l, .. } => Some(parse_limits(l)?),
        _ => None,
    };
    let api = Api::from_args(server, token)?;
    block_on(run_async(&api, cmd, limits))?
}

async fn run_async(
    api: &Api,
    cmd: TenantCommand,
    limits: Option<Value>,
) -> Result<ExitCode, String> {
    match cmd {
        TenantCommand::Create { id, name, json, .. } => {
            let mut body = json!({ "id": id });
            if let Some(n) = name {
                body["name"] = Value::String(n);
            }
            if let Some(l) = limits {
                body["limits"] = l;
            }
            let (_, t) = api.send(api.post("/v1/tenants").json(&body)).await?;
            if json {
                println!("{t}");
            } else {
                println!(
                    "created tenant {} ({}), limits {}",
                    t["id"].as_str().unwrap_or(""),
                    t["name"].as_str().unwrap_or(""),
                    limits_text(&t["limits"])
                );
            }
        }
        TenantCommand::List { json } => {
            let (_, page) = api.send(api.get("/v1/tenants")).await?;
            if json {
                println!("{page}");
            } else {
                println!(
                    "{:<24} {:<24} {:<20}  LIMITS",
                    "TENANT", "NAME", "CREATED (UTC)"
                );
                for t in page["tenants"].as_array().into_iter().flatten() {
                    println!(
                        "{:<24} {:<24} {:<20}  {}",
                        t["id"].as_str().unwrap_or(""),
                        t["name"].as_str().unwrap_or(""),
                        t["created_at_ms"].as_i64().map(utc).unwrap_or_default(),
                        limits_text(&t["limits"])
                    );
                }
            }
        }
        TenantCommand::SetLimits { id, json, .. } => {
            let body = limits.unwrap_or_else(|| json!({}));
            let path = format!("/v1/tenants/{}/limits", path_segment(&id));
            let (_, t) = api.send(api.put(&path).json(&body)).await?;
            if json {
                println!("{t}");
            } else {
                println!(
                    "limits of tenant {} set: {}",
                    t["id"].as_str().unwrap_or(&id),
                    limits_text(&t["limits"])
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Limits for a human: the JSON without the fields that are unset (null or an empty map:
/// unlimited), which the server spells out.
fn limits_text(l: &Value) -> String {
    match l.as_object() {
        Some(m) => {
            let set: serde_json::Map<String, Value> = m
                .iter()
                .filter(|(_, v)| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if set.is_empty() {
                "none (unlimited)".into()
            } else {
                Value::Object(set).to_string()
            }
        }
        None => "none (unlimited)".into(),
    }
}

/// The RFC 3339 UTC time of ms since the epoch (the formatter the gateway's token errors
/// use).
pub fn utc(ms: i64) -> String {
    aetheris_api::auth::rfc3339(u64::try_from(ms.div_euclid(1000)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_inline_file_and_bad_input() {
        assert_eq!(
            parse_limits(r#"{"admissions_per_s": 5}"#).unwrap(),
            json!({"admissions_per_s": 5})
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("l.json");
        std::fs::write(&f, r#"{"tool_calls_per_s": 7}"#).unwrap();
        assert_eq!(
            parse_limits(&format!("@{}", f.display())).unwrap(),
            json!({"tool_calls_per_s": 7})
        );
        assert!(parse_limits("{nope")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(parse_limits("[1]").unwrap_err().contains("JSON object"));
        assert!(parse_limits("@").is_err());
        let missing = dir.path().join("missing.json");
        assert!(parse_limits(&format!("@{}", missing.display()))
            .unwrap_err()
            .contains("reading --limits"));
    }

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14T22:13:20Z");
    }
}
