//! A job's evidence package in the UI: download it, and see its verification (the same
//! offline check as `aetheris evidence verify`: `aetheris_proof::verify` with the node's
//! public keys) as a checklist — archive, signature, manifest, hash chain, files,
//! inclusion proof — naming the first check that failed and where.
//!
//! The UI does not build packages: an [`EvidenceExport`] gives it the bytes that
//! `GET /v1/jobs/{id}/evidence` serves (the same export, audit row and permission
//! `evidence:export`). A node without one offers no evidence in the UI.

use super::error::UiError;
use super::layout::{self, Nav};
use super::session::Viewer;
use super::time::format_ms;
use super::UiState;
use crate::auth::{Permission, Principal};
use crate::problem::ApiError;
use crate::routes::{parse_id, Access, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_proof::{EvidenceError, VerifyReport};
use aetheris_runtime::JobId;
use maud::{html, Markup};
use std::future::Future;
use std::pin::Pin;

/// The access the evidence pages need: that of the API's evidence export.
pub const ACCESS: Access = Access::Requires(Permission::EvidenceExport);

/// A package export, as `GET /v1/jobs/{id}/evidence` does it.
pub trait EvidenceExport: Send + Sync {
    /// The package of job `id`, exported for `caller` (scoped to its tenant: 404 for
    /// another tenant's job; 409 for a job that has not finished).
    fn export<'a>(
        &'a self,
        st: &'a AppState,
        caller: &'a Principal,
        id: JobId,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, ApiError>> + 'a>>;

    /// The public keys packages are verified with.
    fn public_keys(&self) -> Vec<[u8; 32]>;
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Passed(String),
    Failed(String),
    NotReached,
}

/// The checks, in the order `verify` makes them.
pub const CHECKS: [&str; 6] = [
    "Archive is a well-formed package",
    "Signature (DSSE envelope, Ed25519)",
    "Manifest matches the signed statement",
    "Hash chain of every event",
    "Files match their digests and the events",
    "Inclusion proof against the signed checkpoint",
];

/// Which check an error is the failure of.
fn failed_check(e: &EvidenceError) -> usize {
    match e {
        EvidenceError::Archive(_) => 0,
        EvidenceError::Key(_) => 1,
        EvidenceError::File { file, .. } if file == aetheris_proof::evidence::ENVELOPE => 1,
        EvidenceError::File { file, .. } if file == aetheris_proof::evidence::MANIFEST => 2,
        EvidenceError::Event { .. } => 3,
        EvidenceError::File { .. } => 4,
        EvidenceError::Checkpoint(_) | EvidenceError::Merkle(_) => 5,
        EvidenceError::Input(_) | EvidenceError::Redaction { .. } => 4,
    }
}

/// The checklist of a verification.
pub fn checklist(result: &Result<VerifyReport, EvidenceError>) -> Vec<(&'static str, Check)> {
    match result {
        Ok(r) => {
            let details = [
                "a zip with the six files in order".to_string(),
                format!("signed by key {}", r.signer_keyid),
                format!(
                    "job {} of tenant {}, status {}",
                    r.job_id,
                    r.tenant,
                    r.status.as_str()
                ),
                format!("{} events, head {}", r.events, r.chain_head),
                format!("{} ledger rows, {} approvals", r.ledger_rows, r.approvals),
                match &r.checkpoint {
                    Some(c) => format!(
                        "leaf {} of a tree of {} (root {}), checkpoint of {}",
                        c.leaf_index,
                        c.tree_size,
                        c.root_hash,
                        format_ms(c.time_ms)
                    ),
                    None => "the package carries no inclusion proof".into(),
                },
            ];
            CHECKS
                .iter()
                .zip(details)
                .enumerate()
                .map(|(i, (name, d))| {
                    let c = if i == 5 && r.checkpoint.is_none() {
                        Check::NotReached
                    } else {
                        Check::Passed(d)
                    };
                    (*name, c)
                })
                .collect()
        }
        Err(e) => {
            let at = failed_check(e);
            CHECKS
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    let c = match i.cmp(&at) {
                        std::cmp::Ordering::Less => Check::Passed(String::new()),
                        std::cmp::Ordering::Equal => Check::Failed(e.to_string()),
                        std::cmp::Ordering::Greater => Check::NotReached,
                    };
                    (*name, c)
                })
                .collect()
        }
    }
}

fn render_checklist(items: &[(&'static str, Check)]) -> Markup {
    html! {
        ol.checklist {
            @for (name, c) in items {
                @match c {
                    Check::Passed(d) => li.pass { span.mark aria-hidden="true" { "✓" } strong { (name) } " — passed" @if !d.is_empty() { br; span.muted { (d) } } },
                    Check::Failed(d) => li.fail { span.mark aria-hidden="true" { "✗" } strong { (name) } " — FAILED" br; span { (d) } },
                    Check::NotReached => li.unchecked { span.mark aria-hidden="true" { "–" } strong { (name) } " — not checked" },
                }
            }
        }
    }
}

async fn export(
    req: &HttpRequest,
    st: &AppState,
    ui: &UiState,
    raw_id: &str,
) -> Result<(Viewer, JobId, Vec<u8>, Vec<[u8; 32]>), UiError> {
    let viewer = Viewer::of(req, st, ACCESS).await?;
    let id = parse_id(raw_id)?;
    let Some(source) = &ui.config.evidence else {
        return Err(
            ApiError::NotFound("this gateway does not export evidence packages".into()).into(),
        );
    };
    let zip = source.export(st, &viewer.principal, id).await?;
    Ok((viewer, id, zip, source.public_keys()))
}

/// `GET /ui/jobs/{id}/evidence`: the verification checklist and the download.
pub async fn page(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
    ui: web::Data<UiState>,
) -> Result<HttpResponse, UiError> {
    let (viewer, id, zip, keys) = export(&req, &st, &ui, &path).await?;
    let size = zip.len();
    // Verification reads the whole package: off the HTTP workers.
    let result = web::block(move || aetheris_proof::verify(&zip, &keys))
        .await
        .map_err(|e| ApiError::Internal(format!("verifying: {e}")))?;
    let valid = result.is_ok();
    let body = html! {
        h1 { "Evidence of job " a.mono href={ "/ui/jobs/" (id) } { (id) } }
        p.verdict.(if valid { "ok" } else { "bad" }) role="status" {
            @if valid { "VALID: the package verifies offline with this gateway's public key." }
            @else { "INVALID: the package does not verify." }
        }
        (render_checklist(&checklist(&result)))
        p {
            a.button href={ "/ui/jobs/" (id) "/evidence.zip" } download { "Download the package (" (super::json::size(size)) ")" }
        }
        p.muted { "Check it anywhere with " code { "aetheris evidence verify FILE --public-key KEY" } " (docs/evidence.md)." }
    };
    Ok(layout::ok(layout::page(
        "Evidence",
        &viewer,
        Nav::Jobs,
        body,
    )))
}

/// `GET /ui/jobs/{id}/evidence.zip`: the package itself.
pub async fn download(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
    ui: web::Data<UiState>,
) -> Result<HttpResponse, UiError> {
    let (_, id, zip, _) = export(&req, &st, &ui, &path).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/zip")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"evidence-{id}.zip\""),
        ))
        .insert_header(("Cache-Control", "no-store"))
        .body(zip))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aetheris_proof::{build, testkit, EvidenceInput, SigningKey};

    fn package(key: &SigningKey) -> Vec<u8> {
        let job = testkit::realistic_job(JobId::new(), "acme").unwrap();
        let ledger = job.ledger();
        build(
            &EvidenceInput {
                job_id: job.job_id,
                tenant: "acme",
                events: &job.events,
                ledger: &ledger,
                exporter: "test",
                redactions: &[],
                transparency: None,
            },
            key,
        )
        .unwrap()
    }

    #[test]
    fn a_real_package_checks_out_and_a_tampered_one_names_its_failure() {
        let key = SigningKey::generate().unwrap();
        let zip = package(&key);
        let ok = checklist(&aetheris_proof::verify(&zip, &[key.public_key()]));
        assert!(
            ok[..5].iter().all(|(_, c)| matches!(c, Check::Passed(_))),
            "{ok:?}"
        );
        assert_eq!(ok[5].1, Check::NotReached, "no transparency material given");

        let other = SigningKey::generate().unwrap();
        let wrong_key = checklist(&aetheris_proof::verify(&zip, &[other.public_key()]));
        assert!(matches!(wrong_key[0].1, Check::Passed(_)));
        assert!(matches!(wrong_key[1].1, Check::Failed(_)), "{wrong_key:?}");
        assert_eq!(wrong_key[2].1, Check::NotReached);

        let garbage = checklist(&aetheris_proof::verify(b"not a zip", &[key.public_key()]));
        assert!(matches!(garbage[0].1, Check::Failed(_)), "{garbage:?}");
        let html = render_checklist(&garbage).into_string();
        assert!(html.contains("FAILED") && html.contains("not checked"));
    }
}
