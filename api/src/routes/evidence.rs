//! Evidence packages and transparency checkpoints (docs/evidence.md): export of a finished
//! job's signed package (`GET /v1/jobs/{id}/evidence`, an audit row per export), the
//! signed checkpoint of the caller's tenant's transparency log and consistency proofs
//! between two of its sizes (permission `evidence:export`), and each tenant's redaction
//! policy (admins of the system tenant).
//!
//! Invariants: every read is scoped by the caller's tenant (G6: another tenant's job is a
//! 404); the package is built by the store-level exporter (`aetheris_store::evidence`),
//! off the HTTP workers; an export answers only after its `evidence.export` audit row is
//! written; without a signing key the export and checkpoint routes answer 503 and the
//! rest of the gateway works. An export that fails on the server's side is counted by
//! stage (`aetheris_evidence_export_failures_total{stage}`).

use super::{parse_id, schema, Access, Answer, AppState, Caller, HttpMethod, RouteSpec};
use crate::auth::Permission;
use crate::body::Presence;
use crate::problem::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_proof::evidence::RedactPath;
use aetheris_proof::{EvidenceError, SigningKey};
use aetheris_store::evidence::{JobEvidence, TenantLog};
use aetheris_store::{AuditEntry, PolicyRule, Scope};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most redaction paths one export or one tenant policy may name.
pub const MAX_REDACTIONS: usize = 64;
/// Longest redaction path, and longest reason of a policy rule.
pub const MAX_REDACTION_BYTES: usize = 256;

pub const EXPORT: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/jobs/{id}/evidence",
    Access::Requires(Permission::EvidenceExport),
    "exportEvidence",
    "A finished job's evidence package: one signed, deterministic zip, verifiable offline \
     (docs/evidence.md)",
    Answer::text(
        200,
        "the evidence package (`Content-Disposition: attachment; filename=\"<job>.evidence.zip\"`)",
        "application/zip",
    ),
    |r| r.to(export),
)
.query(schema::<ExportQuery>)
.errors(&[404, 409]);

pub const CHECKPOINT: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/evidence/checkpoint",
    Access::Requires(Permission::EvidenceExport),
    "evidenceCheckpoint",
    "The signed checkpoint (tree size, Merkle root) of the tenant's transparency log",
    Answer::text(200, "a C2SP signed note", "text/plain"),
    |r| r.to(checkpoint),
);

pub const CONSISTENCY: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/evidence/consistency",
    Access::Requires(Permission::EvidenceExport),
    "evidenceConsistency",
    "The RFC 9162 proof that the tenant's log at size `old` is a prefix of its log at size \
     `new`",
    Answer::json(200, "the consistency proof", schema::<ConsistencyView>),
    |r| r.to(consistency),
)
.query(schema::<ConsistencyQuery>);

pub const GET_POLICY: RouteSpec = RouteSpec::new(
    HttpMethod::Get,
    "/v1/tenants/{id}/evidence-policy",
    Access::System(Permission::TenantAdmin),
    "getEvidencePolicy",
    "A tenant's evidence redaction policy",
    Answer::json(200, "the policy", schema::<EvidencePolicy>),
    |r| r.to(get_policy),
)
.errors(&[404]);

pub const SET_POLICY: RouteSpec = RouteSpec::new(
    HttpMethod::Put,
    "/v1/tenants/{id}/evidence-policy",
    Access::System(Permission::TenantAdmin),
    "setEvidencePolicy",
    "Replace a tenant's evidence redaction policy (applied to every later export)",
    Answer::json(200, "the policy", schema::<EvidencePolicy>),
    |r| r.to(set_policy),
)
.body(Presence::Required, schema::<EvidencePolicy>)
.errors(&[404]);

/// `GET /v1/jobs/{id}/evidence` query.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// Redact these payloads (repeat the parameter): `input`, `output`,
    /// `steps.<id>.output` or `signals.<name>.payload`, `*` for any id or name. A path
    /// that matches nothing in the job is a 400.
    #[schemars(inner(regex(
        pattern = r"^(input|output|steps\.[^.]+\.output|signals\.[^.]+\.payload)$"
    )))]
    pub redact: Option<Vec<String>>,
}

/// `GET /v1/evidence/consistency` query.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyQuery {
    /// The older tree size (a kept checkpoint's).
    #[schemars(range(max = i64::MAX))]
    pub old: u64,
    /// The newer tree size, at most the log's size.
    #[schemars(range(max = i64::MAX))]
    pub new: u64,
}

/// An RFC 9162 consistency proof between two sizes of the tenant's log.
#[derive(Serialize, JsonSchema)]
pub struct ConsistencyView {
    /// The log the proof is of: `aetheris/tenant/<tenant>`, a checkpoint's first line.
    pub origin: String,
    pub old_size: u64,
    pub new_size: u64,
    /// Lower-case hex SHA-256 hashes, in the RFC's order.
    pub proof: Vec<String>,
}

/// A tenant's evidence redaction policy: each rule redacts what its path names in every
/// export of the tenant's jobs, and the manifest lists the rule's reason.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidencePolicy {
    /// At most 64 rules.
    pub redact: Vec<PolicyRule>,
}

/// The exporter named in every manifest.
pub fn exporter() -> String {
    format!("aetheris {}", env!("CARGO_PKG_VERSION"))
}

fn signing_key(st: &AppState) -> Result<Arc<SigningKey>, ApiError> {
    st.evidence_key.clone().ok_or_else(|| {
        ApiError::Unavailable(
            "no evidence signing key configured (start the server with \
             --evidence-signing-key-file; see docs/evidence.md)"
                .into(),
        )
    })
}

/// Checks a redaction path's shape (400 otherwise).
fn check_path(path: &str) -> Result<(), ApiError> {
    if path.len() > MAX_REDACTION_BYTES {
        return Err(ApiError::BadRequest(format!(
            "a redaction path is at most {MAX_REDACTION_BYTES} bytes"
        )));
    }
    RedactPath::parse(path)
        .map(drop)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The `redact` parameters of a query string (repeatable; nothing else is accepted).
fn redactions(query: &str) -> Result<Vec<String>, ApiError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(query)
        .map_err(|e| ApiError::BadRequest(format!("bad query string: {e}")))?
        .into_inner();
    let mut out = Vec::new();
    for (name, value) in pairs {
        if name != "redact" {
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {:?}: only `redact` is accepted",
                crate::problem::clip(&name, 64)
            )));
        }
        check_path(&value)?;
        out.push(value);
    }
    if out.len() > MAX_REDACTIONS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_REDACTIONS} redact parameters"
        )));
    }
    Ok(out)
}

/// An export that was refused after the store's data was read.
fn refused(e: EvidenceError) -> ApiError {
    match e {
        e @ EvidenceError::Redaction { .. } => ApiError::BadRequest(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

async fn export(
    req: HttpRequest,
    p: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let redact = redactions(req.query_string())?;
    let zip = export_package(&st, &p, id, &redact).await?;
    Ok(HttpResponse::Ok()
        .content_type("application/zip")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{id}.evidence.zip\""),
        ))
        .body(zip))
}

/// The one export of a job's package for `caller` (the API route and the trace UI): read
/// in the caller's tenant (404 across tenants, 409 while the job runs), built and signed
/// off the async threads, and handed out only once its `evidence.export` audit row is
/// written.
pub async fn export_package(
    st: &AppState,
    p: &crate::auth::Principal,
    id: aetheris_runtime::JobId,
    redact: &[String],
) -> Result<Vec<u8>, ApiError> {
    let key = signing_key(st).map_err(failed("key"))?;
    let evidence = JobEvidence::gather(
        st.store.as_ref(),
        Scope::Tenant(&p.tenant),
        id,
        redact,
        &exporter(),
    )
    .await
    .map_err(|e| failed("store")(e.into()))?;
    let zip = web::block(move || evidence.build(&key))
        .await
        .map_err(|e| ApiError::Internal(format!("building the package: {e}")))
        .and_then(|built| built.map_err(refused))
        .map_err(failed("build"))?;
    // The package is handed out only once its export is on the record.
    st.store
        .record_audit(&AuditEntry::ok(
            &p.tenant,
            &p.sub,
            "evidence.export",
            id.to_string(),
        ))
        .await
        .map_err(|e| failed("audit")(e.into()))?;
    Ok(zip)
}

/// The stages of an export that can fail on the server's side (the `stage` label of
/// `aetheris_evidence_export_failures_total`).
pub const EXPORT_STAGES: [&str; 4] = ["key", "store", "build", "audit"];

/// Counts an export that failed at `stage` on the server's side (a 5xx); the caller's own
/// mistakes (an unknown job, a running job, a bad redaction) are not failures.
fn failed(stage: &'static str) -> impl Fn(ApiError) -> ApiError {
    move |e| {
        if actix_web::ResponseError::status_code(&e).is_server_error() {
            metrics::counter!(aetheris_actors::metrics::EVIDENCE_EXPORT_FAILURES, "stage" => stage)
                .increment(1);
        }
        e
    }
}

/// The trace UI's evidence: the gateway's own export, verified with its own public key.
pub struct GatewayEvidence {
    pub public_key: [u8; 32],
}

impl crate::ui::EvidenceExport for GatewayEvidence {
    fn export<'a>(
        &'a self,
        st: &'a AppState,
        caller: &'a crate::auth::Principal,
        id: aetheris_runtime::JobId,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<u8>, ApiError>> + 'a>> {
        Box::pin(export_package(st, caller, id, &[]))
    }

    fn public_keys(&self) -> Vec<[u8; 32]> {
        vec![self.public_key]
    }
}

async fn checkpoint(p: Caller, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let key = signing_key(&st)?;
    let log = TenantLog::read(st.store.as_ref(), &p.tenant).await?;
    let text = web::block(move || log.checkpoint(&key))
        .await
        .map_err(|e| ApiError::Internal(format!("signing the checkpoint: {e}")))?
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(text))
}

async fn consistency(
    p: Caller,
    q: web::Query<ConsistencyQuery>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (old, new) = (q.old, q.new);
    if old > new {
        return Err(ApiError::BadRequest(format!(
            "old ({old}) must not be larger than new ({new})"
        )));
    }
    let log = TenantLog::read(st.store.as_ref(), &p.tenant).await?;
    if new > log.size() {
        return Err(ApiError::BadRequest(format!(
            "the log {} has {} leaves; new ({new}) must not be larger",
            aetheris_proof::checkpoint::origin_for(&p.tenant),
            log.size()
        )));
    }
    let proof = web::block(move || log.consistency(old, new))
        .await
        .map_err(|e| ApiError::Internal(format!("proving consistency: {e}")))?
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(HttpResponse::Ok().json(ConsistencyView {
        origin: aetheris_proof::checkpoint::origin_for(&p.tenant),
        old_size: proof.old_size,
        new_size: proof.new_size,
        proof: proof.proof,
    }))
}

async fn get_policy(
    _p: Caller,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // A malformed id names no tenant: 404, as for any unknown one.
    let id = path.into_inner();
    if st.store.get_tenant(&id).await?.is_none() {
        return Err(ApiError::NotFound(format!("tenant {id:?} not found")));
    }
    Ok(HttpResponse::Ok().json(EvidencePolicy {
        redact: st.store.evidence_policy(&id).await?,
    }))
}

/// Checks every rule of a policy (400 naming the first bad one).
fn check_policy(policy: &EvidencePolicy) -> Result<(), ApiError> {
    if policy.redact.len() > MAX_REDACTIONS {
        return Err(ApiError::BadRequest(format!(
            "redact: at most {MAX_REDACTIONS} rules"
        )));
    }
    for (i, rule) in policy.redact.iter().enumerate() {
        check_path(&rule.path)
            .map_err(|e| ApiError::BadRequest(format!("redact[{i}].path: {e}")))?;
        if rule.reason.trim().is_empty() || rule.reason.len() > MAX_REDACTION_BYTES {
            return Err(ApiError::BadRequest(format!(
                "redact[{i}].reason must be 1-{MAX_REDACTION_BYTES} bytes of text"
            )));
        }
    }
    Ok(())
}

async fn set_policy(
    req: HttpRequest,
    p: Caller,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // A malformed id names no tenant: the store answers 404, as for any unknown one.
    let id = path.into_inner();
    let policy: EvidencePolicy =
        crate::body::json_required(&req, payload, st.body, "evidence policy").await?;
    check_policy(&policy)?;
    let rules = st
        .store
        .set_evidence_policy(
            &id,
            policy.redact,
            Some(&AuditEntry::ok(
                &p.tenant,
                &p.sub,
                "tenant.set_evidence_policy",
                &id,
            )),
        )
        .await?;
    Ok(HttpResponse::Ok().json(EvidencePolicy { redact: rules }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_parameters_are_checked_before_anything_is_read() {
        assert_eq!(
            redactions("redact=input&redact=steps.a.output").unwrap(),
            vec!["input".to_string(), "steps.a.output".to_string()]
        );
        assert!(redactions("").unwrap().is_empty());
        for bad in [
            "redact=bogus",
            "redact=steps..output",
            "other=1",
            "redact=input&x=y",
        ] {
            assert!(
                matches!(redactions(bad), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
        let many = vec!["redact=input"; MAX_REDACTIONS + 1].join("&");
        assert!(matches!(redactions(&many), Err(ApiError::BadRequest(_))));
    }

    #[test]
    fn policies_are_checked_rule_by_rule() {
        let rule = |path: &str, reason: &str| PolicyRule {
            path: path.into(),
            reason: reason.into(),
        };
        assert!(check_policy(&EvidencePolicy {
            redact: vec![rule("input", "PII"), rule("steps.*.output", "secrets")]
        })
        .is_ok());
        for bad in [rule("inputs", "PII"), rule("input", " "), rule("input", "")] {
            assert!(check_policy(&EvidencePolicy { redact: vec![bad] }).is_err());
        }
    }
}
