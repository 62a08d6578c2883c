//! `aetheris evidence keygen|export|verify|checkpoint` (docs/evidence.md), and the
//! evidence signing key of `server` and `dev` (`--evidence-signing-key-file`; `dev` makes
//! one in its data dir).
//!
//! Invariants kept here:
//! - `verify` needs no server and no database: the package and public keys only. It exits
//!   0 only when every check holds; any failure — a missing file, a bad key, a hostile or
//!   tampered zip — is one `error:` line naming the first failing file inside the package
//!   (or the first failing seq) and a non-zero exit (G8).
//! - A signing key file is created readable by its owner only and never overwritten; a
//!   kept checkpoint is never overwritten either.
//! - `checkpoint --verify-consistency` trusts nothing the server says: both checkpoints'
//!   signatures and the server's proof are checked here, against the given public keys.

use crate::client::{block_on, path_segment, Api};
use crate::ServerConn;
use aetheris_proof::checkpoint::{verify_consistency, Checkpoint, ConsistencyProof};
use aetheris_proof::evidence::{read_package, Limits, Manifest, RedactPath};
use aetheris_proof::{keys, SigningKey};
use clap::Subcommand;
use serde::Deserialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Subcommand)]
pub enum EvidenceCommand {
    /// Make an evidence signing key: `<out>.key` (the signing key, mode 0600: give it to
    /// servers with --evidence-signing-key-file) and `<out>.pub` (the public key: give it
    /// to auditors, who verify with --public-key).
    Keygen {
        /// Path prefix: writes `<out>.key` and `<out>.pub`; never overwrites a file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Export a finished job's evidence package from a server (permission
    /// `evidence:export`: roles admin and auditor). Exporting the same job twice gives the
    /// same bytes.
    Export {
        /// Job id.
        job: String,
        /// Where to write the zip (default: `<job>.evidence.zip`; `-` for stdout).
        #[arg(short = 'o', long)]
        out: Option<PathBuf>,
        /// Redact payloads: `input`, `output`, `steps.<id>.output` or
        /// `signals.<name>.payload` (`*` for any id or name); repeat for several.
        #[arg(long = "redact", value_name = "PATH")]
        redact: Vec<String>,
        #[command(flatten)]
        conn: ServerConn,
    },
    /// Verify a package offline (no server, no database): the signature, every file's
    /// digest, the whole hash chain, and the transparency proof. Exit 0 only if all hold.
    Verify {
        /// The package (a zip from `aetheris evidence export`).
        file: PathBuf,
        /// A public key that may have signed it: a `.pub` file from `evidence keygen` (or
        /// the key itself, `base64:…`/`hex:…`). Repeat for rotated keys.
        #[arg(long = "public-key", value_name = "KEY", required = true)]
        public_keys: Vec<String>,
        /// Print the result as JSON (`verdict` `valid` or `invalid`).
        #[arg(long)]
        json: bool,
    },
    /// Print the signed checkpoint of your tenant's transparency log (its size and Merkle
    /// root); keep it. With --verify-consistency OLD NEW: check that the log only grew
    /// between two kept checkpoints.
    Checkpoint {
        /// Write the checkpoint to this file (never overwritten) instead of printing it.
        #[arg(short = 'o', long, conflicts_with = "verify_consistency")]
        out: Option<PathBuf>,
        /// Two checkpoints, older first: files from `evidence checkpoint -o`, or evidence
        /// packages (each carries one). Fetches the server's consistency proof between
        /// their sizes and checks it here: exit 0 only if the log at NEW extends the log
        /// at OLD, with nothing removed or rewritten.
        #[arg(long, num_args = 2, value_names = ["OLD", "NEW"], requires = "public_keys")]
        verify_consistency: Option<Vec<PathBuf>>,
        /// A public key the checkpoints may be signed with (a `.pub` file or the key);
        /// repeat for rotated keys. Without --verify-consistency, checks the server's
        /// checkpoint before printing it.
        #[arg(long = "public-key", value_name = "KEY")]
        public_keys: Vec<String>,
        #[command(flatten)]
        conn: ServerConn,
    },
}

pub fn run(cmd: EvidenceCommand) -> Result<ExitCode, String> {
    match cmd {
        EvidenceCommand::Keygen { out } => keygen(&out),
        EvidenceCommand::Export {
            job,
            out,
            redact,
            conn,
        } => export(&job, out, &redact, &conn),
        EvidenceCommand::Verify {
            file,
            public_keys,
            json,
        } => verify(&file, &public_keys, json),
        EvidenceCommand::Checkpoint {
            out,
            verify_consistency,
            public_keys,
            conn,
        } => match verify_consistency.as_deref() {
            Some([old, new]) => consistency(old, new, &public_keys, &conn),
            Some(_) => Err("--verify-consistency takes two files, OLD and NEW".into()),
            None => checkpoint(out, &public_keys, &conn),
        },
    }
}

fn with_ext(base: &Path, ext: &str) -> PathBuf {
    let mut p = base.as_os_str().to_owned();
    p.push(ext);
    PathBuf::from(p)
}

fn keygen(out: &Path) -> Result<ExitCode, String> {
    let (key_path, pub_path) = (with_ext(out, ".key"), with_ext(out, ".pub"));
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(format!("{} exists; not overwriting a key", p.display()));
        }
    }
    let key = SigningKey::generate().map_err(|e| e.to_string())?;
    write_key_pair(&key, &key_path, &pub_path)?;
    println!(
        "signing key: {} (keep it secret; for the server: --evidence-signing-key-file)\n\
         public key:  {} (for auditors: aetheris evidence verify --public-key)\nkey id: {}",
        key_path.display(),
        pub_path.display(),
        key.keyid()
    );
    Ok(ExitCode::SUCCESS)
}

fn write_key_pair(key: &SigningKey, key_path: &Path, pub_path: &Path) -> Result<(), String> {
    crate::token::write_private(key_path, &key.to_key_file())?;
    std::fs::write(pub_path, keys::public_key_file(&key.public_key()))
        .map_err(|e| format!("writing {}: {e}", pub_path.display()))
}

/// Reads a signing key file (`--evidence-signing-key-file`).
pub fn load_signing_key(path: &Path) -> Result<Arc<SigningKey>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--evidence-signing-key-file {}: {e}", path.display()))?;
    SigningKey::from_key_file(&text)
        .map(Arc::new)
        .map_err(|e| format!("--evidence-signing-key-file {}: {e}", path.display()))
}

/// `dev`'s key: the file given, else `<data-dir>/evidence.key` (made with its `.pub` on
/// first start). Returns the key and where its public key is, if known.
pub fn dev_signing_key(
    key_file: Option<&Path>,
    data_dir: &Path,
) -> Result<(Arc<SigningKey>, Option<PathBuf>), String> {
    if let Some(p) = key_file {
        return Ok((load_signing_key(p)?, None));
    }
    let key_path = data_dir.join("evidence.key");
    let pub_path = data_dir.join("evidence.pub");
    let key = if key_path.exists() {
        load_signing_key(&key_path)?
    } else {
        let key = SigningKey::generate().map_err(|e| e.to_string())?;
        crate::token::write_private(&key_path, &key.to_key_file())?;
        Arc::new(key)
    };
    if !pub_path.exists() {
        std::fs::write(&pub_path, keys::public_key_file(&key.public_key()))
            .map_err(|e| format!("writing {}: {e}", pub_path.display()))?;
    }
    Ok((key, Some(pub_path)))
}

/// The public keys of `--public-key` options: each a file holding a key, or a key.
fn public_keys(args: &[String]) -> Result<Vec<[u8; 32]>, String> {
    args.iter()
        .map(|a| match std::fs::read_to_string(a) {
            Ok(text) => {
                keys::decode_public_key(&text).map_err(|e| format!("--public-key {a}: {e}"))
            }
            Err(file) => keys::decode_public_key(a).map_err(|_| {
                format!(
                    "--public-key {a}: cannot read it as a file ({file}), and it is not a key \
                     (base64:… or hex:…) either"
                )
            }),
        })
        .collect()
}

/// A package file, refused before reading when it is larger than any package may be.
fn read_package_file(file: &Path) -> Result<Vec<u8>, String> {
    let max = Limits::default().max_archive_bytes;
    let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if meta.len() > max {
        return Err(format!(
            "{}: {} bytes; a package is at most {max} bytes",
            file.display(),
            meta.len()
        ));
    }
    std::fs::read(file).map_err(|e| format!("reading {}: {e}", file.display()))
}

fn verify(file: &Path, keys: &[String], json: bool) -> Result<ExitCode, String> {
    let keys = public_keys(keys)?;
    let zip = read_package_file(file)?;
    match aetheris_proof::verify(&zip, &keys) {
        Ok(report) => {
            if json {
                let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
                println!("{text}");
            } else {
                print!("{}", report.summary());
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "verdict": "invalid",
                        "file": e.failing_file(),
                        "seq": e.failing_seq(),
                        "error": e.to_string(),
                    })
                );
            }
            Err(format!("INVALID package {}: {e}", file.display()))
        }
    }
}

fn export(
    job: &str,
    out: Option<PathBuf>,
    redact: &[String],
    conn: &ServerConn,
) -> Result<ExitCode, String> {
    for p in redact {
        RedactPath::parse(p).map_err(|e| format!("--redact {p}: {e}"))?;
    }
    let api = Api::from_args(&conn.server, conn.token.as_deref())?;
    let query: Vec<(&str, &str)> = redact.iter().map(|p| ("redact", p.as_str())).collect();
    let path = format!("/v1/jobs/{}/evidence", path_segment(job));
    let zip = block_on(api.send_bytes(api.get(&path).query(&query)))??;
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{job}.evidence.zip")));
    if out.as_os_str() == "-" {
        std::io::stdout()
            .write_all(&zip)
            .map_err(|e| format!("writing to stdout: {e}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    write_replacing(&out, &zip)?;
    println!(
        "wrote {} ({} bytes, sha256 {}); check it with: aetheris evidence verify {} \
         --public-key <the server's evidence .pub>",
        out.display(),
        zip.len(),
        hex_sha256(&zip),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Lower-case hex SHA-256 of `bytes`, for the record of what was exported.
fn hex_sha256(bytes: &[u8]) -> String {
    aetheris_proof::payload_digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` to `path` through a temporary file beside it, so an interrupted export
/// never leaves half a package under the final name.
fn write_replacing(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = with_ext(path, &format!(".partial-{}", std::process::id()));
    std::fs::write(&tmp, bytes).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

fn fetch_checkpoint(api: &Api) -> Result<String, String> {
    let bytes = block_on(api.send_bytes(api.get("/v1/evidence/checkpoint")))??;
    String::from_utf8(bytes).map_err(|_| "the server's checkpoint is not UTF-8 text".to_string())
}

fn checkpoint(
    out: Option<PathBuf>,
    keys: &[String],
    conn: &ServerConn,
) -> Result<ExitCode, String> {
    let keys = public_keys(keys)?;
    let api = Api::from_args(&conn.server, conn.token.as_deref())?;
    let text = fetch_checkpoint(&api)?;
    let checked = if keys.is_empty() {
        None
    } else {
        Some(
            Checkpoint::verify(&text, &keys)
                .map_err(|e| format!("the server's checkpoint does not verify: {e}"))?,
        )
    };
    match out {
        None => print!("{text}"),
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| {
                    format!(
                        "creating {} (a kept checkpoint is never overwritten): {e}",
                        path.display()
                    )
                })?;
            f.write_all(text.as_bytes())
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            let size = text.lines().nth(1).unwrap_or("?");
            println!(
                "wrote {} (tree size {size}{})",
                path.display(),
                match &checked {
                    Some(c) => format!(", signed by key {}", c.signer_keyid),
                    None => String::new(),
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A kept checkpoint: a checkpoint file, or the one an evidence package carries.
fn load_checkpoint(path: &Path) -> Result<String, String> {
    let bytes = read_package_file(path)?;
    if !bytes.starts_with(b"PK") {
        return String::from_utf8(bytes).map_err(|_| {
            format!(
                "{}: neither a checkpoint (text) nor an evidence package (zip)",
                path.display()
            )
        });
    }
    let files =
        read_package(&bytes, &Limits::default()).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: Manifest = serde_json::from_slice(&files.manifest)
        .map_err(|e| format!("{}: manifest.json: {e}", path.display()))?;
    manifest
        .transparency
        .map(|t| t.checkpoint)
        .ok_or_else(|| format!("{}: the package carries no checkpoint", path.display()))
}

/// `GET /v1/evidence/consistency` as the CLI reads it.
#[derive(Deserialize)]
struct ServerProof {
    origin: String,
    old_size: u64,
    new_size: u64,
    proof: Vec<String>,
}

fn consistency(
    old: &Path,
    new: &Path,
    keys: &[String],
    conn: &ServerConn,
) -> Result<ExitCode, String> {
    let keys = public_keys(keys)?;
    let (old_text, new_text) = (load_checkpoint(old)?, load_checkpoint(new)?);
    let o = Checkpoint::verify(&old_text, &keys)
        .map_err(|e| format!("OLD {}: {e}", old.display()))?
        .checkpoint;
    let n = Checkpoint::verify(&new_text, &keys)
        .map_err(|e| format!("NEW {}: {e}", new.display()))?
        .checkpoint;
    if o.origin != n.origin {
        return Err(format!(
            "the checkpoints are of different logs: OLD {:?}, NEW {:?}",
            o.origin, n.origin
        ));
    }
    if o.size > n.size {
        return Err(format!(
            "OLD has {} leaves and NEW {}: the log shrank (or OLD and NEW are swapped)",
            o.size, n.size
        ));
    }
    let api = Api::from_args(&conn.server, conn.token.as_deref())?;
    let path = format!("/v1/evidence/consistency?old={}&new={}", o.size, n.size);
    let (_, body) = block_on(api.send(api.get(&path)))??;
    let got: ServerProof = serde_json::from_value(body)
        .map_err(|e| format!("the server's consistency proof is malformed: {e}"))?;
    if got.origin != o.origin {
        return Err(format!(
            "the server answers for log {:?} (your token's tenant), the checkpoints are of {:?}",
            got.origin, o.origin
        ));
    }
    let proof = ConsistencyProof {
        old_size: got.old_size,
        new_size: got.new_size,
        proof: got.proof,
    };
    let report = verify_consistency(&old_text, &new_text, &proof, &keys).map_err(|e| {
        format!("INCONSISTENT: {e} (a job in the log at OLD was deleted or its history rewritten)")
    })?;
    println!(
        "consistent: log {} grew from {} to {} leaves; none of the first {} changed \
         (root {} -> {}, signed by key {})",
        report.origin,
        report.old_size,
        report.new_size,
        report.old_size,
        report.old_root,
        report.new_root,
        report.signer_keyid
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_are_files_or_keys_and_anything_else_is_one_clear_error() {
        let key = SigningKey::from_seed([3; 32]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("k.pub");
        std::fs::write(&file, keys::public_key_file(&key.public_key())).unwrap();
        let text = keys::public_key_file(&key.public_key()).trim().to_string();
        let got = public_keys(&[file.display().to_string(), text]).unwrap();
        assert_eq!(got, vec![key.public_key(); 2]);
        let e = public_keys(&[dir.path().join("missing.pub").display().to_string()]).unwrap_err();
        assert!(
            e.contains("cannot read it as a file") && !e.contains('\n'),
            "{e}"
        );
        std::fs::write(&file, "base64:AAAA").unwrap();
        let e = public_keys(&[file.display().to_string()]).unwrap_err();
        assert!(e.contains("32"), "{e}");
    }
}
