//! `aetheris user put|list` and `aetheris audit list`: the CLI side of a tenant's user
//! admin API (`PUT /v1/users/{id}`, `GET /v1/users`, permission `tenant:admin`) and of its
//! access audit log (`GET /v1/audit`, permission `audit:read`). Both act on the tenant of
//! the caller's token. Roles are checked locally before anything is sent (a bad command
//! changes nothing, G8); the server checks them again and answers problem+json, which
//! `client.rs` turns into one line and a non-zero exit.

use crate::client::{block_on, path_segment, Api};
use aetheris_api::auth::Role;
use clap::Subcommand;
use serde_json::{json, Value};
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create or replace a user of your tenant: the roles its tokens may use (a token
    /// then acts only with roles both it and the user row grant), or `--disabled` to
    /// refuse its tokens without rotating keys. Takes effect on the next request.
    Put {
        /// User id: the `sub` claim of its tokens.
        id: String,
        /// A role (admin, operator, submitter, viewer, auditor); repeat or separate with
        /// commas. None: the user may act with no role.
        #[arg(long = "role", value_delimiter = ',')]
        roles: Vec<String>,
        /// Refuse every token of this user (401) until it is put again without this flag.
        #[arg(long)]
        disabled: bool,
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// List your tenant's users.
    List {
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Your tenant's access audit log, oldest first: who did what to which target, with
    /// what result (every mutating call and every refused one).
    List {
        /// Only entries after this id (the `next_after` of a previous page).
        #[arg(long)]
        after: Option<u64>,
        /// At most this many entries (1-1000; the server's default is 100).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: Option<u16>,
        /// Only this action, e.g. `job.cancel`, or a permission (`job:create`) for denials.
        #[arg(long)]
        action: Option<String>,
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
}

/// Checks role names before anything is sent.
fn check_roles(roles: &[String]) -> Result<(), String> {
    for r in roles {
        if Role::parse(r).is_none() {
            return Err(format!(
                "unknown role {r:?}: use admin, operator, submitter, viewer or auditor"
            ));
        }
    }
    Ok(())
}

pub fn user(server: &str, token: Option<&str>, cmd: UserCommand) -> Result<ExitCode, String> {
    if let UserCommand::Put { roles, .. } = &cmd {
        check_roles(roles)?;
    }
    let api = Api::from_args(server, token)?;
    block_on(async move {
        match cmd {
            UserCommand::Put {
                id,
                roles,
                disabled,
                json,
            } => {
                let (_, u) = api
                    .send(
                        api.put(&format!("/v1/users/{}", path_segment(&id)))
                            .json(&json!({"roles": roles, "disabled": disabled})),
                    )
                    .await?;
                if json {
                    println!("{u}");
                } else {
                    println!("user {}", user_line(&u));
                }
            }
            UserCommand::List { json } => {
                let (_, page) = api.send(api.get("/v1/users")).await?;
                if json {
                    println!("{page}");
                } else {
                    println!("{:<32} {:<9} ROLES", "USER", "STATE");
                    for u in page["users"].as_array().into_iter().flatten() {
                        println!("{}", user_line(u));
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })?
}

pub fn audit(server: &str, token: Option<&str>, cmd: AuditCommand) -> Result<ExitCode, String> {
    let AuditCommand::List {
        after,
        limit,
        action,
        json,
    } = cmd;
    let api = Api::from_args(server, token)?;
    block_on(async move {
        let mut query: Vec<(&str, String)> = Vec::new();
        if let Some(a) = after {
            query.push(("after", a.to_string()));
        }
        if let Some(l) = limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(a) = action {
            query.push(("action", a));
        }
        let (_, page) = api.send(api.get("/v1/audit").query(&query)).await?;
        if json {
            println!("{page}");
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:>6}  {:<24} {:<20} {:<20} {:<8} TARGET",
            "ID", "TIME (UTC, ms)", "ACTOR", "ACTION", "RESULT"
        );
        for e in page["entries"].as_array().into_iter().flatten() {
            println!(
                "{:>6}  {:<24} {:<20} {:<20} {:<8} {}",
                e["id"].as_u64().unwrap_or(0),
                e["at_ms"].as_i64().map(utc_ms).unwrap_or_default(),
                e["actor"].as_str().unwrap_or(""),
                e["action"].as_str().unwrap_or(""),
                e["result"].as_str().unwrap_or(""),
                e["target"].as_str().unwrap_or(""),
            );
        }
        if let Some(n) = page["next_after"].as_u64() {
            println!("more: --after {n}");
        }
        Ok(ExitCode::SUCCESS)
    })?
}

fn user_line(u: &Value) -> String {
    let roles: Vec<&str> = u["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let state = if u["disabled"].as_bool() == Some(true) {
        "disabled"
    } else {
        "active"
    };
    let roles = if roles.is_empty() {
        "(none)".to_string()
    } else {
        roles.join(",")
    };
    format!(
        "{:<32} {:<9} {}",
        u["id"].as_str().unwrap_or(""),
        state,
        roles
    )
}

/// RFC 3339 UTC with milliseconds.
fn utc_ms(ms: i64) -> String {
    let secs = aetheris_api::auth::rfc3339(u64::try_from(ms.div_euclid(1000)).unwrap_or(0));
    match secs.strip_suffix('Z') {
        Some(s) => format!("{s}.{:03}Z", ms.rem_euclid(1000)),
        None => secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_checked_locally() {
        assert!(check_roles(&["admin".into(), "viewer".into()]).is_ok());
        let e = check_roles(&["root".into()]).unwrap_err();
        assert!(e.contains("unknown role \"root\""), "{e}");
    }

    #[test]
    fn audit_times_keep_their_milliseconds() {
        assert_eq!(utc_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(utc_ms(0), "1970-01-01T00:00:00.000Z");
    }
}
