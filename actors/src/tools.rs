//! Tools: the `Tool` trait (the extension point for user-written tools), the actor that
//! hosts a tool, the registry mapping names to tool actors, and the built-in `echo`,
//! `http` and `llm` (`crate::llm::tool`) tools. A tool declares a description and the
//! JSON Schema of its arguments, which is what an agent step offers a model.
//!
//! Invariant kept here (G2): a tool learns its invocation key and fencing token with every
//! call, so downstream services can deduplicate and reject zombies; a panic inside a tool
//! is caught and reported as `ToolError::panicked`, never silently lost, so the job actor
//! can record it and be restarted from storage. The catch is counted here, once, with
//! what the panic said (`aetheris_actor_panics_total{kind="tool"}`, supervision.rs), and
//! each call in flight is counted as the tool actor's mailbox depth.

use crate::supervision::{self, ActorKind, Queued};
use actix::prelude::*;
use aetheris_runtime::agent::{AgentTools, ToolDecl};
use aetheris_runtime::{EffectClass, JobId, ToolCatalog, ToolOutcome};
use async_trait::async_trait;
use futures::FutureExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tracing::Instrument;

/// One call of a tool for one step attempt.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub job_id: JobId,
    pub tenant: String,
    pub step: String,
    pub attempt: u32,
    pub invocation_key: String,
    pub fencing_token: u64,
    /// The effect class the step runs with (its own `effect` or the tool's).
    pub effect: EffectClass,
    /// Arguments with every `${…}` reference resolved.
    pub args: Value,
    /// The call's place in its job's trace: `trace.traceparent()` is the W3C header a
    /// tool sends downstream (the `http` tool does); the tool runs inside `trace.span`.
    pub trace: crate::trace::CallTrace,
}

/// How a failed call ended, as far as the tool knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolErrorKind {
    /// Nothing was done (e.g. connection refused): safe to try again per the retry policy.
    Retryable,
    /// The call was answered with a definite failure: the step fails.
    Permanent,
    /// The call may or may not have taken effect (timeout mid-request, panic). A
    /// side_effect step goes to `outcome_unknown`; others are retried with the same key.
    OutcomeUnknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolError {
    pub message: String,
    pub kind: ToolErrorKind,
    /// The tool panicked (always with kind `OutcomeUnknown`).
    pub panicked: bool,
}

impl ToolError {
    pub fn retryable(message: impl Into<String>) -> Self {
        ToolError {
            message: message.into(),
            kind: ToolErrorKind::Retryable,
            panicked: false,
        }
    }
    pub fn permanent(message: impl Into<String>) -> Self {
        ToolError {
            message: message.into(),
            kind: ToolErrorKind::Permanent,
            panicked: false,
        }
    }
    pub fn outcome_unknown(message: impl Into<String>) -> Self {
        ToolError {
            message: message.into(),
            kind: ToolErrorKind::OutcomeUnknown,
            panicked: false,
        }
    }
    pub fn panicked(message: impl Into<String>) -> Self {
        ToolError {
            message: message.into(),
            kind: ToolErrorKind::OutcomeUnknown,
            panicked: true,
        }
    }
}

impl ToolErrorKind {
    /// The `outcome` label of the tool-call counter.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolErrorKind::Retryable => "retryable_error",
            ToolErrorKind::Permanent => "permanent_error",
            ToolErrorKind::OutcomeUnknown => "outcome_unknown",
        }
    }
}

/// A failed call as the pure core's outcome rule (`runtime::outcome`) sees it; whether it
/// panicked matters only to the job actor, which stops as crashed after recording it.
impl From<ToolError> for ToolOutcome {
    fn from(error: ToolError) -> ToolOutcome {
        match error.kind {
            ToolErrorKind::Retryable => ToolOutcome::Retryable(error.message),
            ToolErrorKind::Permanent => ToolOutcome::Permanent(error.message),
            ToolErrorKind::OutcomeUnknown => ToolOutcome::Unknown(error.message),
        }
    }
}

/// A tool. Implement this for your own tool and register it with
/// `ToolRegistry::register`; see `examples/custom_tool.rs` in the repository.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// The declared effect class; a step may override it with `effect`.
    fn effect(&self) -> EffectClass;
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError>;

    /// What the tool does, for a model choosing among tools (agent steps).
    fn description(&self) -> String {
        String::new()
    }

    /// The JSON Schema of the tool's arguments: sent to models, and what an agent's tool
    /// call is checked against before it runs. The default accepts any object.
    fn parameters(&self) -> Value {
        json!({"type": "object"})
    }

    /// Asked after a crash left a call without a recorded result (G2), before the step
    /// is marked `outcome_unknown` for a human: what happened to the call with this
    /// invocation key? `None` (the default) means the tool cannot tell.
    async fn reconcile(&self, _call: Invocation) -> Option<Reconciled> {
        None
    }
}

/// A tool's answer about a call whose outcome was not recorded.
#[derive(Debug, Clone, PartialEq)]
pub enum Reconciled {
    /// It happened, with this output.
    Succeeded(Value),
    /// It did not happen: safe to run again with the same key.
    NotExecuted,
}

/// Ask a tool actor to reconcile a call by its invocation key.
#[derive(Message)]
#[rtype(result = "Option<Reconciled>")]
pub struct Reconcile(pub Invocation);

/// The message a job actor sends to a tool actor.
#[derive(Message)]
#[rtype(result = "Result<Value, ToolError>")]
pub struct Invoke(pub Invocation);

/// Hosts one tool. Calls run concurrently (each is its own future); a panic in one is
/// caught and answered as `ToolError::panicked`, and the actor stays up.
pub struct ToolActor {
    tool: Arc<dyn Tool>,
}

impl Actor for ToolActor {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        supervision::started(ActorKind::Tool);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        supervision::stopped(ActorKind::Tool);
    }
}

/// What a caught panic said.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

impl Handler<Invoke> for ToolActor {
    type Result = ResponseFuture<Result<Value, ToolError>>;
    fn handle(&mut self, msg: Invoke, _: &mut Context<Self>) -> Self::Result {
        let tool = self.tool.clone();
        let in_flight = Queued::new(ActorKind::Tool);
        // Spans the tool makes (a model call of `llm`) are children of the call's span.
        let span = msg.0.trace.span.clone();
        Box::pin(async move {
            let call = tool.invoke(msg.0).instrument(span);
            let answer = match AssertUnwindSafe(call).catch_unwind().await {
                Ok(r) => r,
                Err(p) => {
                    let text = format!("tool panicked: {}", panic_text(p.as_ref()));
                    supervision::panicked(ActorKind::Tool, "panic", Some(&text));
                    Err(ToolError::panicked(text))
                }
            };
            drop(in_flight);
            answer
        })
    }
}

impl Handler<Reconcile> for ToolActor {
    type Result = ResponseFuture<Option<Reconciled>>;
    fn handle(&mut self, msg: Reconcile, _: &mut Context<Self>) -> Self::Result {
        let tool = self.tool.clone();
        let in_flight = Queued::new(ActorKind::Tool);
        Box::pin(async move {
            let answer = match AssertUnwindSafe(tool.reconcile(msg.0)).catch_unwind().await {
                Ok(r) => r,
                Err(p) => {
                    let text = format!("reconcile panicked: {}", panic_text(p.as_ref()));
                    supervision::panicked(ActorKind::Tool, "panic", Some(&text));
                    None
                }
            };
            drop(in_flight);
            answer
        })
    }
}

#[derive(Clone)]
pub struct ToolEntry {
    pub recipient: Recipient<Invoke>,
    pub reconcile: Recipient<Reconcile>,
    pub effect: EffectClass,
    pub description: String,
    /// The JSON Schema of its arguments.
    pub parameters: Value,
}

/// name → tool actor. Built once at start; shared read-only afterwards.
#[derive(Clone, Default)]
pub struct ToolRegistry {
    /// Shared by clones: every job actor's context holds the registry, so starting a job
    /// must not copy every tool's entry (descriptions, JSON schemas, recipients).
    tools: Arc<BTreeMap<String, ToolEntry>>,
    /// The `llm` tool's runtime, set when the worker starts (`attach_llm`).
    llm: crate::llm::tool::LlmSlot,
}

impl ToolRegistry {
    /// A registry with the built-in tools (`echo`, `http`, `llm`). Must be called inside a
    /// running actix system: it starts one actor per tool.
    pub fn with_builtins() -> Self {
        let mut r = ToolRegistry::default();
        r.register("echo", EchoTool);
        r.register("http", HttpTool::new());
        let llm = crate::llm::tool::LlmTool::new(r.llm.clone());
        r.register("llm", llm);
        r
    }

    /// Gives the `llm` tool its runtime (once; later calls change nothing).
    pub fn attach_llm(&self, runtime: crate::llm::LlmRuntime) {
        let _ = self.llm.set(runtime);
    }

    pub fn register(&mut self, name: &str, tool: impl Tool) {
        let effect = tool.effect();
        let (description, parameters) = (tool.description(), tool.parameters());
        let addr = ToolActor {
            tool: Arc::new(tool),
        }
        .start();
        Arc::make_mut(&mut self.tools).insert(
            name.to_string(),
            ToolEntry {
                recipient: addr.clone().recipient(),
                reconcile: addr.recipient(),
                effect,
                description,
                parameters,
            },
        );
    }

    pub fn get(&self, name: &str) -> Option<&ToolEntry> {
        self.tools.get(name)
    }

    pub fn names(&self) -> Vec<String> {
        self.tools.keys().cloned().collect()
    }
}

impl ToolCatalog for ToolRegistry {
    fn effect_class(&self, tool: &str) -> Option<EffectClass> {
        self.tools.get(tool).map(|t| t.effect)
    }
}

/// The tools of a registry as models see them, without their actors: plain data a
/// gateway can share across threads (replay-diff offers a model the same tools).
#[derive(Debug, Clone, Default)]
pub struct ToolDecls(pub BTreeMap<String, (EffectClass, ToolDecl)>);

impl AgentTools for ToolDecls {
    fn effect_class(&self, tool: &str) -> Option<EffectClass> {
        self.0.get(tool).map(|(e, _)| *e)
    }
    fn declaration(&self, tool: &str) -> Option<ToolDecl> {
        self.0.get(tool).map(|(_, d)| d.clone())
    }
}

impl ToolRegistry {
    /// Every tool's effect class and declaration.
    pub fn declarations(&self) -> ToolDecls {
        ToolDecls(
            self.tools
                .keys()
                .filter_map(|name| {
                    let decl = AgentTools::declaration(self, name)?;
                    Some((name.clone(), (self.tools.get(name)?.effect, decl)))
                })
                .collect(),
        )
    }
}

impl AgentTools for ToolRegistry {
    fn effect_class(&self, tool: &str) -> Option<EffectClass> {
        self.tools.get(tool).map(|t| t.effect)
    }
    fn declaration(&self, tool: &str) -> Option<ToolDecl> {
        self.tools.get(tool).map(|t| ToolDecl {
            name: tool.to_string(),
            description: t.description.clone(),
            parameters: t.parameters.clone(),
        })
    }
}

/// `echo`: returns its arguments. Pure.
pub struct EchoTool;

#[async_trait]
impl Tool for EchoTool {
    fn effect(&self) -> EffectClass {
        EffectClass::Pure
    }
    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        Ok(call.args)
    }
    fn description(&self) -> String {
        "Returns its arguments unchanged.".into()
    }
}

/// `http`: one HTTP request. Args: `method` (default GET), `url`, optional `headers`
/// (object of strings), optional `body` (JSON). Sends `Idempotency-Key`,
/// `Aetheris-Fencing-Token` and the call's W3C `traceparent` (a `traceparent` among the
/// args' headers is replaced by it: one call, one span). Output: `{status, headers, body}` with a JSON body when the
/// response parses as JSON, else text. A refused connection is retryable (nothing was
/// sent); 4xx is permanent; 5xx is retryable for pure/idempotent calls and permanent for
/// side_effect ones (the server may have acted); a failure after the request may have been
/// sent is `OutcomeUnknown`. Declared `side_effect` (a step may say `idempotent` or `pure`).
pub struct HttpTool {
    client: reqwest::Client,
}

impl HttpTool {
    pub fn new() -> Self {
        HttpTool {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
        }
    }
}

impl Default for HttpTool {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Tool for HttpTool {
    fn effect(&self) -> EffectClass {
        EffectClass::SideEffect
    }

    fn description(&self) -> String {
        "Makes one HTTP request and returns its status, headers and body.".into()
    }

    fn parameters(&self) -> Value {
        json!({"type": "object", "properties": {
            "url": {"type": "string", "description": "http:// or https:// URL"},
            "method": {"enum": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD",
                                "get", "post", "put", "patch", "delete", "head"]},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "body": {"description": "JSON body"}},
            "required": ["url"]})
    }

    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        let args = &call.args;
        let url = args
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::permanent("http: args.url (string) is required"))?;
        let method = args.get("method").and_then(Value::as_str).unwrap_or("GET");
        let method = reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| ToolError::permanent(format!("http: bad method {method:?}")))?;
        let mut req = self
            .client
            .request(method, url)
            .header("Idempotency-Key", &call.invocation_key)
            .header("Aetheris-Fencing-Token", call.fencing_token.to_string())
            .header("traceparent", call.trace.traceparent());
        if let Some(h) = args.get("headers").and_then(Value::as_object) {
            for (k, v) in h {
                if k.eq_ignore_ascii_case("traceparent") {
                    continue;
                }
                if let Some(v) = v.as_str() {
                    req = req.header(k.as_str(), v);
                }
            }
        }
        if let Some(body) = args.get("body") {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_connect() || e.is_builder() {
                ToolError::retryable(format!("http: {e}"))
            } else {
                ToolError::outcome_unknown(format!("http: {e}"))
            }
        })?;
        let status = resp.status();
        let headers: serde_json::Map<String, Value> = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (k.as_str().to_string(), Value::String(v.to_string())))
            })
            .collect();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ToolError::outcome_unknown(format!("http: reading body: {e}")))?;
        let body = serde_json::from_slice::<Value>(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        let out = json!({"status": status.as_u16(), "headers": headers, "body": body});
        if status.is_server_error() {
            let msg = format!("http: server answered {status}");
            return Err(if call.effect.reinvocable() {
                ToolError::retryable(msg)
            } else {
                ToolError::permanent(msg)
            });
        }
        if status.is_client_error() {
            return Err(ToolError::permanent(format!(
                "http: server answered {status}: {}",
                out["body"]
            )));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_error_maps_to_the_outcome_of_its_kind_with_its_message() {
        assert_eq!(
            ToolOutcome::from(ToolError::retryable("refused")),
            ToolOutcome::Retryable("refused".into())
        );
        assert_eq!(
            ToolOutcome::from(ToolError::permanent("404")),
            ToolOutcome::Permanent("404".into())
        );
        assert_eq!(
            ToolOutcome::from(ToolError::outcome_unknown("timed out")),
            ToolOutcome::Unknown("timed out".into())
        );
        // A panic may have happened after the effect: its outcome is unknown.
        assert_eq!(
            ToolOutcome::from(ToolError::panicked("boom")),
            ToolOutcome::Unknown("boom".into())
        );
    }

    #[test]
    fn each_error_kind_has_its_own_label() {
        let kinds = [
            ToolErrorKind::Retryable,
            ToolErrorKind::Permanent,
            ToolErrorKind::OutcomeUnknown,
        ];
        let labels: std::collections::BTreeSet<_> = kinds.iter().map(|k| k.as_str()).collect();
        assert_eq!(labels.len(), kinds.len());
    }
}
