//! The OpenAPI 3.1 document of the gateway, generated from the route table
//! ([`crate::routes::ROUTES`]) and the request and response types' own JSON Schemas
//! (`schemars`, from the same serde types the handlers use), so it cannot drift from what
//! the server does. Served at `GET /v1/openapi.json`; CI fuzzes the server against it.
//!
//! What each operation documents, besides its own answer and statuses: 401/403 and the
//! bearer scheme when it needs a token, 400/408/413/415 when it takes a body, 400 when it
//! takes a query, 503 (connection limit or store unavailable) everywhere but `/healthz`;
//! every error is `application/problem+json` ([`Problem`]). A route that creates something
//! links to the routes that take its id; a step's `tool` lists the node's own tools.

use crate::routes::{Access, RouteSpec, ROUTES};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// An RFC 9457 problem, as every error of the API is answered.
#[derive(serde::Serialize, JsonSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong, in words, naming the JSON path of bad input.
    pub detail: String,
    /// Invalid plans only: the first 20 problems, each with its JSON path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<PlanProblem>>,
    /// Invalid plans only: how many problems there were in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_count: Option<usize>,
}

/// One problem of a plan.
#[derive(serde::Serialize, JsonSchema)]
pub struct PlanProblem {
    /// e.g. `plan.steps[2].needs[0]`.
    pub path: String,
    pub message: String,
}

/// Builds the document of a node whose tools are `tools`.
pub fn document(tools: &[&str]) -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let problem = g.subschema_for::<Problem>();
    let mut paths = Map::new();
    for r in ROUTES {
        let op = operation(r, &mut g, &problem);
        let item = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        item[r.method.as_str().to_ascii_lowercase()] = op;
    }
    let mut schemas = Value::Object(g.take_definitions(true));
    if let Some(tool) = schemas.pointer_mut("/StepSpec/properties/tool") {
        let mut names: Vec<Value> = tools.iter().map(|t| json!(t)).collect();
        names.push(Value::Null);
        tool["enum"] = Value::Array(names);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Aetheris",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Durable execution runtime for AI-agent jobs. Every error is an \
                RFC 9457 problem (application/problem+json). See docs/ in the repository \
                for plans, limits and authentication.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": schemas,
        },
    })
}

fn operation(r: &RouteSpec, g: &mut SchemaGenerator, problem: &Schema) -> Value {
    let mut op = json!({
        "operationId": r.operation,
        "summary": r.summary,
        "tags": [tag(r.path)],
    });
    if r.access == Access::Public {
        op["security"] = json!([]);
    }
    if let Some(p) = r.access.permission() {
        op["description"] = json!(format!(
            "Needs permission `{p}`{}.",
            if matches!(r.access, Access::System(_)) {
                " in the system tenant"
            } else {
                ""
            }
        ));
    }
    let mut params: Vec<Value> = r
        .path_params()
        .map(|name| {
            json!({"name": name, "in": "path", "required": true, "schema": path_param(r.path, name)})
        })
        .collect();
    if let Some(q) = r.query {
        params.extend(query_params(q(g), g));
    }
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    if let Some(b) = r.body {
        op["requestBody"] = json!({
            "required": b.presence == crate::body::Presence::Required,
            "content": {"application/json": {"schema": (b.schema)(g)}},
        });
    }
    let mut responses = Map::new();
    let ok_schema = (r.answer.schema)(g);
    let mut content = json!({r.answer.media: {"schema": ok_schema}});
    if r.answer.event_stream {
        content["text/event-stream"] = json!({"schema": {"type": "string"}});
    }
    let mut ok = json!({"description": r.answer.description, "content": content});
    if let Some(links) = links(r) {
        ok["links"] = links;
    }
    responses.insert(r.answer.status.to_string(), ok);
    for status in r.error_statuses() {
        let answer = if status < 400 {
            // Another success with the same body (an idempotent repeat).
            json!({"description": reason(status), "content": {r.answer.media: {"schema": ok_schema}}})
        } else {
            json!({
                "description": reason(status),
                "content": {"application/problem+json": {"schema": problem}},
            })
        };
        responses.insert(status.to_string(), answer);
    }
    op["responses"] = Value::Object(responses);
    op
}

/// Links from a creating route to every route under what it creates, passing the id.
fn links(r: &RouteSpec) -> Option<Value> {
    let (prefix, pointer) = r.creates?;
    let mut out = Map::new();
    for target in ROUTES.iter().filter(|t| t.path.starts_with(prefix)) {
        out.insert(
            target.operation.to_string(),
            json!({
                "operationId": target.operation,
                "parameters": {"id": format!("$response.body#{pointer}")},
            }),
        );
    }
    Some(Value::Object(out))
}

/// The schema of a path parameter: what the handler accepts (anything else is a 400, or a
/// 404 for ids that cannot name a job).
fn path_param(path: &str, name: &str) -> Value {
    match (path.split('/').nth(2), name) {
        (Some("jobs"), "id") => json!({"type": "string", "format": "uuid"}),
        (Some("jobs"), "name") => json!({"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,128}$"}),
        (Some("jobs"), "step") => json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}),
        (Some("tenants"), "id") => json!({"type": "string", "pattern": "^[a-z0-9_-]{1,64}$"}),
        (Some("users"), "id") => json!({"type": "string", "pattern": "^[A-Za-z0-9_.@+-]{1,256}$"}),
        _ => json!({"type": "string"}),
    }
}

/// Query parameters from a query struct's (inline) schema: one parameter per property.
fn query_params(schema: Schema, g: &SchemaGenerator) -> Vec<Value> {
    let obj = resolve(schema, g);
    let required: Vec<String> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let Some(props) = obj.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    props
        .iter()
        .map(|(name, s)| {
            let mut s = s.clone();
            let description = s
                .as_object_mut()
                .and_then(|o| o.remove("description"))
                .unwrap_or(Value::Null);
            strip_null(&mut s);
            let mut p = json!({
                "name": name,
                "in": "query",
                "required": required.contains(name),
                "schema": s,
            });
            if !description.is_null() {
                p["description"] = description;
            }
            p
        })
        .collect()
}

/// Follows a `$ref` into the generator's definitions (query structs are referenced).
fn resolve(schema: Schema, g: &SchemaGenerator) -> Map<String, Value> {
    let v = schema.to_value();
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        if let Some(name) = r.rsplit('/').next() {
            if let Some(Value::Object(o)) = g.definitions().get(name) {
                return o.clone();
            }
        }
    }
    v.as_object().cloned().unwrap_or_default()
}

/// A query parameter is absent, never `null`: drop `null` from its type.
fn strip_null(s: &mut Value) {
    if let Some(Value::Array(types)) = s.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types[0].clone();
            s["type"] = only;
        }
    }
}

/// The first path segment after `/v1` names the resource.
fn tag(path: &str) -> &str {
    let mut segs = path.trim_start_matches('/').split('/');
    match segs.next() {
        Some("v1") => segs.next().unwrap_or("v1").trim_end_matches(".json"),
        Some(other) => other,
        None => "ops",
    }
}

fn reason(status: u16) -> &'static str {
    actix_web::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_its_statuses() {
        let doc = document(&["echo"]);
        assert_eq!(doc["openapi"], "3.1.0");
        for r in ROUTES {
            let op = &doc["paths"][r.path][r.method.as_str().to_ascii_lowercase()];
            assert_eq!(op["operationId"], r.operation, "{} {}", r.method, r.path);
            let responses = op["responses"].as_object().expect("responses");
            assert!(responses.contains_key(&r.answer.status.to_string()));
            for s in r.error_statuses() {
                assert!(responses.contains_key(&s.to_string()), "{} {s}", r.path);
            }
            if r.access != Access::Public {
                assert!(responses.contains_key("401"), "{}", r.path);
            }
        }
        let text = doc.to_string();
        // Every $ref points at a schema the document defines.
        for part in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling $ref {name}"
            );
        }
    }

    #[test]
    fn creating_routes_link_to_what_takes_their_id() {
        let doc = document(&["echo", "http"]);
        let links = &doc["paths"]["/v1/jobs"]["post"]["responses"]["201"]["links"];
        assert_eq!(
            links["getJob"]["parameters"]["id"],
            "$response.body#/job_id"
        );
        assert!(links.get("confirmStep").is_some());
        let tool = &doc["components"]["schemas"]["StepSpec"]["properties"]["tool"];
        assert_eq!(tool["enum"], json!(["echo", "http", null]));
    }

    #[test]
    fn query_structs_become_parameters() {
        let doc = document(&["echo"]);
        let params = doc["paths"]["/v1/jobs"]["get"]["parameters"]
            .as_array()
            .expect("parameters");
        let names: Vec<&str> = params.iter().filter_map(|p| p["name"].as_str()).collect();
        assert_eq!(names, vec!["cursor", "limit", "state"]);
        assert!(params.iter().all(|p| p["in"] == "query"));
    }
}
