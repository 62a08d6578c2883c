//! `aetheris token issue`: signs a JWT for a tenant and roles with a configured key, for
//! clients of a server started with the matching verification key.

use aetheris_api::auth::{self, Claims, Role};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct IssueArgs {
    /// File holding the HS256 secret (`hex:…` or `base64:…`, at least 32 bytes).
    #[arg(long, env = "AETHERIS_AUTH_HS256_SECRET_FILE")]
    pub secret_file: PathBuf,
    #[arg(long)]
    pub tenant: String,
    /// Role(s): admin, operator, submitter, viewer, auditor.
    #[arg(long = "role", required = true)]
    pub roles: Vec<String>,
    /// Lifetime, e.g. 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Subject (who the token is for).
    #[arg(long, default_value = "cli")]
    pub sub: String,
}

pub fn issue(a: IssueArgs) -> Result<ExitCode, String> {
    let text = std::fs::read_to_string(&a.secret_file)
        .map_err(|e| format!("reading {}: {e}", a.secret_file.display()))?;
    let secret = auth::decode_hs256_secret(text.trim())
        .map_err(|e| format!("{}: {e}", a.secret_file.display()))?;
    let roles: Vec<Role> = a
        .roles
        .iter()
        .map(|r| {
            Role::parse(r).ok_or_else(|| {
                format!("unknown role {r:?}: use admin, operator, submitter, viewer or auditor")
            })
        })
        .collect::<Result<_, _>>()?;
    let ttl =
        aetheris_runtime::duration::HumanDuration::parse(&a.ttl).map_err(|e| e.to_string())?;
    if a.tenant.is_empty() {
        return Err("--tenant must not be empty".into());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims::new(&a.sub, &a.tenant, &roles, now, ttl.duration.as_secs());
    println!("{}", auth::issue_hs256(&secret, &claims));
    Ok(ExitCode::SUCCESS)
}
