//! `aetheris token issue`: signs a JWT for a tenant and roles with a configured key (an
//! HS256 secret or an Ed25519 signing key), for clients of a server started with the
//! matching verification key; `aetheris token keygen`: makes an Ed25519 key pair, or with
//! `--hs256` an HS256 secret file.
//!
//! Invariants: a key file is created readable by its owner only and never overwritten; a
//! token's lifetime is within `TTL_BOUNDS` (an expired-on-arrival or practically eternal
//! token is refused before anything is signed).

use aetheris_api::auth::{self, Claims, Role};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct IssueArgs {
    /// File holding the HS256 secret (`hex:…` or `base64:…`, at least 32 bytes).
    #[arg(
        long,
        env = "AETHERIS_AUTH_HS256_SECRET_FILE",
        required_unless_present = "ed25519_signing_key_file",
        conflicts_with = "ed25519_signing_key_file"
    )]
    pub secret_file: Option<PathBuf>,
    /// File holding an Ed25519 signing key (from `aetheris token keygen`): issues an EdDSA
    /// token, verified by a server given the matching `.pub` file.
    #[arg(long)]
    pub ed25519_signing_key_file: Option<PathBuf>,
    /// Tenant the token acts for (it must exist on the server; `default` is the system
    /// tenant, whose admins manage tenants).
    #[arg(long)]
    pub tenant: String,
    /// Role(s): admin, operator, submitter, viewer, auditor; repeat for several.
    #[arg(long = "role", required = true)]
    pub roles: Vec<String>,
    /// Lifetime: a number and a unit (s, m, h, d), from 1s to 365d; e.g. 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    pub ttl: String,
    /// Subject: who the token is for (recorded as the author of cancels, signals and
    /// confirmations).
    #[arg(long, default_value = "cli")]
    pub sub: String,
}

#[derive(Args)]
pub struct KeygenArgs {
    /// Path prefix: writes `<out>.key` (and `<out>.pub` for an Ed25519 pair); never
    /// overwrites a file.
    #[arg(long)]
    pub out: PathBuf,
    /// Make an HS256 secret (`<out>.key` only, 32 random bytes) instead of an Ed25519
    /// pair: the server verifies with it (`--auth-hs256-secret-file`) and `token issue
    /// --secret-file` signs with it.
    #[arg(long)]
    pub hs256: bool,
}

/// The lifetimes `token issue` accepts, in seconds: at least one second (a shorter
/// token is expired before it is used), at most 365 days.
pub const TTL_BOUNDS: std::ops::RangeInclusive<u64> = 1..=365 * 86_400;

/// Parses `--ttl` into whole seconds within `TTL_BOUNDS`.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let ttl = aetheris_runtime::duration::HumanDuration::parse(text).map_err(|_| {
        format!("--ttl {text:?}: expected a number and a unit (s, m, h, d), e.g. 1h")
    })?;
    let ms = ttl.as_millis();
    if ms % 1000 != 0 || !TTL_BOUNDS.contains(&(ms / 1000)) {
        return Err(format!(
            "--ttl {text:?}: a token lives from 1s to 365d, in whole seconds"
        ));
    }
    Ok(ms / 1000)
}

fn read_key(p: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(p)
        .map(|t| t.trim().to_string())
        .map_err(|e| format!("reading {}: {e}", p.display()))
}

enum SigningKey {
    Hs256(Vec<u8>),
    Ed25519([u8; 32]),
}

pub fn issue(a: IssueArgs) -> Result<ExitCode, String> {
    let key = match (&a.secret_file, &a.ed25519_signing_key_file) {
        (Some(p), None) => SigningKey::Hs256(
            auth::decode_hs256_secret(&read_key(p)?)
                .map_err(|e| format!("{}: {e}", p.display()))?,
        ),
        (None, Some(p)) => SigningKey::Ed25519(
            auth::decode_ed25519_signing_key(&read_key(p)?)
                .map_err(|e| format!("{}: {e}", p.display()))?,
        ),
        _ => return Err("give exactly one of --secret-file and --ed25519-signing-key-file".into()),
    };
    let roles: Vec<Role> = a
        .roles
        .iter()
        .map(|r| {
            Role::parse(r).ok_or_else(|| {
                format!("unknown role {r:?}: use admin, operator, submitter, viewer or auditor")
            })
        })
        .collect::<Result<_, _>>()?;
    let ttl_s = parse_ttl(&a.ttl)?;
    if a.tenant.is_empty() {
        return Err("--tenant must not be empty".into());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims::new(&a.sub, &a.tenant, &roles, now, ttl_s);
    let token = match key {
        SigningKey::Hs256(secret) => auth::issue_hs256(&secret, &claims),
        SigningKey::Ed25519(seed) => auth::issue_ed25519(seed, &claims),
    };
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

pub fn keygen(a: KeygenArgs) -> Result<ExitCode, String> {
    let with_ext = |ext: &str| {
        let mut p = a.out.clone().into_os_string();
        p.push(ext);
        PathBuf::from(p)
    };
    let key_path = with_ext(".key");
    let pub_path = (!a.hs256).then(|| with_ext(".pub"));
    for p in std::iter::once(&key_path).chain(pub_path.as_ref()) {
        if p.exists() {
            return Err(format!("{} exists; not overwriting a key", p.display()));
        }
    }
    let Some(pub_path) = pub_path else {
        let secret = auth::generate_hs256_secret().map_err(|e| e.to_string())?;
        write_private(&key_path, &format!("{}\n", auth::encode_key_hex(&secret)))?;
        println!(
            "HS256 secret: {} (keep it secret; for the server: --auth-hs256-secret-file; \
             for `aetheris token issue`: --secret-file)\nkey id: {}",
            key_path.display(),
            auth::key_id_hs256(&secret)
        );
        return Ok(ExitCode::SUCCESS);
    };
    let seed = auth::generate_ed25519_signing_key().map_err(|e| e.to_string())?;
    let public = auth::ed25519_public_key(&seed);
    write_private(&key_path, &format!("{}\n", auth::encode_key_base64(&seed)))?;
    std::fs::write(&pub_path, format!("{}\n", auth::encode_key_base64(&public)))
        .map_err(|e| format!("writing {}: {e}", pub_path.display()))?;
    println!(
        "signing key: {} (keep it secret)\npublic key:  {} (give it to the server: --auth-ed25519-public-key-file)\nkey id: {}",
        key_path.display(),
        pub_path.display(),
        auth::key_id_ed25519(&public)
    );
    Ok(ExitCode::SUCCESS)
}

/// Creates `p` readable by its owner only (a signing key), failing if it exists.
pub(crate) fn write_private(p: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o
        .open(p)
        .map_err(|e| format!("creating {}: {e}", p.display()))?;
    f.write_all(text.as_bytes())
        .map_err(|e| format!("writing {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_must_be_whole_seconds_from_one_second_to_a_year() {
        assert_eq!(parse_ttl("1s"), Ok(1));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("365d"), Ok(365 * 86_400));
        for bad in [
            "0s", "0d", "500ms", "1500ms", "366d", "9999999d", "1y", "", "h",
        ] {
            let e = parse_ttl(bad).unwrap_err();
            assert!(e.starts_with("--ttl"), "{bad}: {e}");
        }
    }
}
