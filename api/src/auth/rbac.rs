//! RBAC: permissions, roles, the single role → permission table, and the [`Principal`]
//! a verified token becomes. A permission needs a token role that grants it and, when the
//! user has a row in the users table, a granted role that includes it too.

use super::jwt::Claims;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use std::fmt;
use std::str::FromStr;

/// What a request may do. Written `job:create` etc. in docs and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    JobCreate,
    JobRead,
    JobSignal,
    JobCancel,
    JobConfirm,
    EvidenceExport,
    TenantAdmin,
    AuditRead,
    SystemRead,
}

impl Permission {
    pub const ALL: [Permission; 9] = [
        Permission::JobCreate,
        Permission::JobRead,
        Permission::JobSignal,
        Permission::JobCancel,
        Permission::JobConfirm,
        Permission::EvidenceExport,
        Permission::TenantAdmin,
        Permission::AuditRead,
        Permission::SystemRead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Permission::JobCreate => "job:create",
            Permission::JobRead => "job:read",
            Permission::JobSignal => "job:signal",
            Permission::JobCancel => "job:cancel",
            Permission::JobConfirm => "job:confirm",
            Permission::EvidenceExport => "evidence:export",
            Permission::TenantAdmin => "tenant:admin",
            Permission::AuditRead => "audit:read",
            Permission::SystemRead => "system:read",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Permission::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown permission {s:?}"))
    }
}

/// A named set of permissions, granted by the token's `roles` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Admin,
    Operator,
    Submitter,
    Viewer,
    Auditor,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Submitter,
        Role::Viewer,
        Role::Auditor,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Submitter => "submitter",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    /// The role named exactly `s` (lower case), if any.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    pub fn permissions(self) -> &'static [Permission] {
        permissions(self)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::parse(s).ok_or_else(|| format!("unknown role {s:?}"))
    }
}

/// The single role → permission table.
pub fn permissions(role: Role) -> &'static [Permission] {
    use Permission::*;
    match role {
        Role::Admin => &Permission::ALL,
        Role::Operator => &[
            JobCreate, JobRead, JobSignal, JobCancel, JobConfirm, SystemRead,
        ],
        Role::Submitter => &[JobCreate, JobRead, JobSignal],
        Role::Viewer => &[JobRead],
        Role::Auditor => &[JobRead, AuditRead, EvidenceExport],
    }
}

/// Who is calling: the verified subject, the tenant it acts for and its known roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
    pub tenant: String,
    /// Known roles from the token, deduplicated, in token order.
    pub roles: Vec<Role>,
    /// The roles the deployment grants this user (its row in the users table), if it has
    /// one: a permission needs both a token role and a granted role that include it.
    pub granted: Option<Vec<Role>>,
}

impl Principal {
    /// Builds the principal of verified claims; unknown role names are dropped.
    pub fn from_claims(claims: &Claims) -> Principal {
        let mut roles: Vec<Role> = Vec::new();
        for r in claims.roles.iter().filter_map(|s| Role::parse(s)) {
            if !roles.contains(&r) {
                roles.push(r);
            }
        }
        Principal {
            sub: claims.sub.clone(),
            tenant: claims.tenant.clone(),
            roles,
            granted: None,
        }
    }

    pub fn can(&self, permission: Permission) -> bool {
        let grants = |roles: &[Role]| roles.iter().any(|r| permissions(*r).contains(&permission));
        grants(&self.roles) && self.granted.as_deref().is_none_or(grants)
    }

    /// `Ok` if [`Principal::can`], else a 403 [`PermissionDenied`].
    pub fn require(&self, permission: Permission) -> Result<(), PermissionDenied> {
        if self.can(permission) {
            Ok(())
        } else {
            Err(PermissionDenied { permission })
        }
    }
}

/// An authenticated principal lacks the permission a route needs: 403 problem+json.
/// (Cross-tenant access is not this: it answers 404, G6.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("permission {permission} is required; the token's roles do not grant it")]
pub struct PermissionDenied {
    pub permission: Permission,
}

impl ResponseError for PermissionDenied {
    fn status_code(&self) -> StatusCode {
        StatusCode::FORBIDDEN
    }

    fn error_response(&self) -> HttpResponse {
        let body = json!({
            "type": "https://aetheris.dev/problems/forbidden",
            "title": "Forbidden",
            "status": 403,
            "detail": self.to_string(),
        });
        HttpResponse::build(StatusCode::FORBIDDEN)
            .content_type("application/problem+json")
            .body(body.to_string())
    }
}

/// The role × permission table as markdown.
pub fn render_role_table() -> String {
    let mut out = String::from("| permission |");
    for r in Role::ALL {
        out.push_str(&format!(" {r} |"));
    }
    out.push_str("\n|---|");
    for _ in Role::ALL {
        out.push_str(":-:|");
    }
    out.push('\n');
    for p in Permission::ALL {
        out.push_str(&format!("| `{p}` |"));
        for r in Role::ALL {
            out.push_str(if permissions(r).contains(&p) {
                " ✓ |"
            } else {
                "   |"
            });
        }
        out.push('\n');
    }
    out
}
