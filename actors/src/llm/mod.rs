//! LLM providers: configuration, API keys, the two wire protocols, the built-in scripted
//! provider, budgets and the GenAI telemetry of every model call (user docs:
//! docs/agents.md).
//!
//! - `LlmSettings`: providers for every tenant (`--llm-provider NAME=KIND:BASE_URL`, a
//!   providers file) and per tenant (the file's `tenants`); the store's per-tenant table
//!   (`LlmStore`) lies over them, by name.
//! - `LlmRuntime`: resolves a tenant's provider, reads its API key at call time (from an
//!   environment variable or a file, never from events, logs or evidence), checks the
//!   model allow-list, reserves the tenant's daily tokens (store) and per-minute tokens
//!   (rate limiter) before a call and settles both after, and calls the protocol adapter
//!   ([`openai`], [`anthropic`], [`scripted`]) inside a `chat {model}` span.
//! - [`tool`]: the `llm` tool, one model call as a plan step.
//!
//! Invariant kept here: a provider failure is classified, never swallowed — retryable
//! (connection refused, 5xx, 429 with its `Retry-After`, a malformed or empty answer),
//! permanent (other 4xx, a bad configuration) or unknown (timed out: the model may have
//! answered) — so the runtime's outcome rules decide what happens next.

pub mod anthropic;
pub mod openai;
pub mod scripted;
pub mod tool;

use crate::metrics as metric;
use crate::ratelimit::RateLimiters;
use aetheris_runtime::agent::{BudgetScope, ModelAnswer, ModelOutcome, ModelRequest};
use aetheris_runtime::ToolOutcome;
use aetheris_store::DynStore;
pub use aetheris_store::{LlmProvider, LlmProviderKind};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a tenant's providers read from the store are used before they are read again.
const TENANT_CACHE: Duration = Duration::from_secs(5);

/// Providers from configuration: for every tenant, and per tenant (the providers file's
/// `tenants`). The store's per-tenant providers lie over both, by name.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSettings {
    #[serde(default)]
    pub providers: Vec<LlmProvider>,
    #[serde(default)]
    pub tenants: BTreeMap<String, Vec<LlmProvider>>,
}

/// The environment variable a flag-configured provider's key is read from:
/// `AETHERIS_LLM_API_KEY_<NAME>`, the name upper-cased with every other character `_`.
pub fn key_env_var(name: &str) -> String {
    let up: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("AETHERIS_LLM_API_KEY_{up}")
}

/// Checks a provider as configured (file, flag or API): its name, base URL, models and
/// key references.
pub fn check_provider(p: &LlmProvider) -> Result<(), String> {
    let name_ok = !p.name.is_empty()
        && p.name.len() <= aetheris_runtime::agent::MAX_PROVIDER_NAME
        && p.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if !name_ok {
        return Err(format!(
            "provider name {:?} must be 1-64 characters of [A-Za-z0-9_.-]",
            aetheris_runtime::error::shorten(&p.name)
        ));
    }
    let url_ok = p.base_url.starts_with("http://") || p.base_url.starts_with("https://");
    if p.kind != LlmProviderKind::Scripted && !url_ok {
        return Err(format!(
            "provider {:?}: base_url must start with http:// or https://",
            p.name
        ));
    }
    if p.base_url.len() > 2048 || p.base_url.chars().any(char::is_whitespace) {
        return Err(format!("provider {:?}: base_url is not a URL", p.name));
    }
    if p.models.len() > 256
        || p.models
            .iter()
            .any(|m| m.trim().is_empty() || m.len() > aetheris_runtime::agent::MAX_MODEL_NAME)
    {
        return Err(format!(
            "provider {:?}: models must be at most 256 names of 1-256 bytes",
            p.name
        ));
    }
    if p.api_key_env.is_some() && p.api_key_file.is_some() {
        return Err(format!(
            "provider {:?}: give api_key_env or api_key_file, not both",
            p.name
        ));
    }
    if let Some(v) = &p.api_key_env {
        let ok = !v.is_empty()
            && v.len() <= 128
            && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(format!(
                "provider {:?}: api_key_env must be an environment variable name",
                p.name
            ));
        }
    }
    if p.api_key_file
        .as_ref()
        .is_some_and(|f| f.is_empty() || f.len() > 4096)
    {
        return Err(format!(
            "provider {:?}: api_key_file is empty or too long",
            p.name
        ));
    }
    Ok(())
}

impl LlmSettings {
    /// Parses and checks a providers file (JSON: `{"providers": […], "tenants": {"t": […]}}`).
    pub fn parse(text: &str) -> Result<LlmSettings, String> {
        let s: LlmSettings =
            serde_json::from_str(text).map_err(|e| format!("llm providers: {e}"))?;
        for p in s.providers.iter().chain(s.tenants.values().flatten()) {
            check_provider(p).map_err(|e| format!("llm providers: {e}"))?;
        }
        Ok(s)
    }

    /// Adds the providers of `--llm-provider NAME=KIND:BASE_URL` flags (each for every
    /// tenant; its key from `AETHERIS_LLM_API_KEY_<NAME>`, or from the file a
    /// `--llm-api-key-file NAME=FILE` flag names).
    pub fn with_flags(
        mut self,
        providers: &[String],
        key_files: &[String],
    ) -> Result<Self, String> {
        let mut files: BTreeMap<String, String> = BTreeMap::new();
        for f in key_files {
            let (name, file) = f
                .split_once('=')
                .filter(|(n, f)| !n.is_empty() && !f.is_empty())
                .ok_or_else(|| format!("--llm-api-key-file {f:?}: expected NAME=FILE"))?;
            files.insert(name.to_string(), file.to_string());
        }
        for flag in providers {
            let (name, rest) = flag
                .split_once('=')
                .ok_or_else(|| format!("--llm-provider {flag:?}: expected NAME=KIND:BASE_URL"))?;
            let (kind, base) = rest.split_once(':').unwrap_or((rest, ""));
            let kind = LlmProviderKind::parse(kind).ok_or_else(|| {
                format!("--llm-provider {flag:?}: kind must be openai, anthropic or scripted")
            })?;
            let p = LlmProvider {
                name: name.to_string(),
                kind,
                base_url: base.to_string(),
                models: Vec::new(),
                api_key_env: match files.contains_key(name) {
                    true => None,
                    false => Some(key_env_var(name)),
                },
                api_key_file: files.remove(name),
            };
            check_provider(&p).map_err(|e| format!("--llm-provider {flag:?}: {e}"))?;
            self.providers.retain(|x| x.name != p.name);
            self.providers.push(p);
        }
        if let Some(name) = files.keys().next() {
            return Err(format!(
                "--llm-api-key-file {name}=…: no --llm-provider named {name:?}"
            ));
        }
        Ok(self)
    }
}

/// Why a model call failed, as the protocol adapters tell it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    /// Nothing happened that a new attempt would not fix (refused connection, 5xx, a
    /// malformed or empty answer).
    Retryable(String),
    /// 429: try again after this many ms.
    RetryAfter(String, u64),
    /// It will not work however often it is asked (4xx, bad configuration).
    Permanent(String),
    /// Timed out or cut off: the provider may have answered.
    Unknown(String),
}

impl From<ModelError> for ModelOutcome {
    fn from(e: ModelError) -> ModelOutcome {
        match e {
            ModelError::Retryable(m) => ModelOutcome::Failed(ToolOutcome::Retryable(m)),
            ModelError::RetryAfter(m, ms) => ModelOutcome::RetryAfter(m, ms),
            ModelError::Permanent(m) => ModelOutcome::Failed(ToolOutcome::Permanent(m)),
            ModelError::Unknown(m) => ModelOutcome::Failed(ToolOutcome::Unknown(m)),
        }
    }
}

impl ModelError {
    pub fn message(&self) -> &str {
        match self {
            ModelError::Retryable(m)
            | ModelError::RetryAfter(m, _)
            | ModelError::Permanent(m)
            | ModelError::Unknown(m) => m,
        }
    }
}

/// The error of an HTTP answer with a non-success `status`: 429 → retry after its
/// `Retry-After` (seconds; 1 s if absent), 408/409/5xx/529 → retryable, other 4xx →
/// permanent. `detail` is the provider's message.
pub fn http_error(status: u16, retry_after: Option<&str>, detail: &str) -> ModelError {
    let msg = format!(
        "provider answered {status}: {}",
        aetheris_runtime::error::shorten(detail)
    );
    match status {
        429 => {
            let secs = retry_after
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .unwrap_or(1.0);
            ModelError::RetryAfter(msg, (secs * 1000.0).min(3_600_000.0) as u64)
        }
        408 | 409 | 500..=599 => ModelError::Retryable(msg),
        _ => ModelError::Permanent(msg),
    }
}

/// A transport failure of `reqwest`: before the request was sent (retryable) or after
/// (unknown).
pub fn transport_error(e: &reqwest::Error, timeout: Duration) -> ModelError {
    if e.is_timeout() {
        ModelError::Unknown(format!("timed out after {}ms", timeout.as_millis()))
    } else if e.is_connect() || e.is_builder() {
        ModelError::Retryable(format!("cannot reach the provider: {e}"))
    } else {
        ModelError::Unknown(format!("the provider's answer was cut off: {e}"))
    }
}

/// A POST of `body` (JSON) to `url` with the headers every protocol sends: the call's time
/// limit and its `Idempotency-Key`. The protocol adds its own (authentication, version).
/// Returns the request and the encoded body's size (the input estimate when a provider
/// reports no usage).
pub fn json_post(
    http: &reqwest::Client,
    call: &Call<'_>,
    url: String,
    body: &serde_json::Value,
) -> Result<(reqwest::RequestBuilder, usize), ModelError> {
    let body = serde_json::to_vec(body)
        .map_err(|e| ModelError::Permanent(format!("the request cannot be encoded: {e}")))?;
    let size = body.len();
    let request = http
        .post(url)
        .timeout(call.timeout)
        .header("content-type", "application/json")
        .header("Idempotency-Key", call.idempotency_key)
        .body(body);
    Ok((request, size))
}

/// The provider's message in an error body: both protocols answer
/// `{"error": {"message": …}}` (Anthropic inside `{"type": "error", …}`); otherwise the
/// body's first 200 bytes.
pub fn error_detail(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned())
}

/// Sends a provider request and reads its whole answer: the one HTTP exchange of every
/// protocol. A transport failure is mapped by [`transport_error`]; a non-success status by
/// [`http_error`], with the provider's message ([`error_detail`]).
pub async fn send(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<Vec<u8>, ModelError> {
    let resp = request
        .send()
        .await
        .map_err(|e| transport_error(&e, timeout))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| transport_error(&e, timeout))?;
    if !(200..300).contains(&status) {
        return Err(http_error(
            status,
            retry_after.as_deref(),
            &error_detail(&bytes),
        ));
    }
    Ok(bytes.to_vec())
}

/// An estimate of tokens for `bytes` of text (about four bytes a token).
pub fn estimate_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

/// The model's answer as the loop records it: an assistant message with its text and tool
/// calls, and the tokens the provider reported (`usage`: input, output) or, when it
/// reported none, an estimate from the request's and the answer's sizes. Both protocols
/// end here.
pub fn assistant_answer(
    content: String,
    tool_calls: Vec<aetheris_runtime::agent::ToolCallRequest>,
    usage: Option<(u64, u64)>,
    request_bytes: usize,
    answer_bytes: usize,
) -> aetheris_runtime::agent::ModelAnswer {
    let (input_tokens, output_tokens) = usage.unwrap_or_else(|| {
        (
            estimate_tokens(request_bytes),
            estimate_tokens(answer_bytes),
        )
    });
    aetheris_runtime::agent::ModelAnswer {
        message: aetheris_runtime::agent::Message {
            role: aetheris_runtime::agent::Role::Assistant,
            content,
            tool_calls,
            tool_call_id: None,
            is_error: false,
        },
        input_tokens,
        output_tokens,
    }
}

/// What one call needs besides the request: the provider (key included), the call's
/// idempotency key and its time limit.
pub struct Call<'a> {
    pub provider: &'a LlmProvider,
    pub api_key: Option<String>,
    pub idempotency_key: &'a str,
    pub timeout: Duration,
}

struct Inner {
    settings: LlmSettings,
    store: Option<DynStore>,
    limits: RateLimiters,
    http: reqwest::Client,
    /// A tenant's providers from the store, and when they were read.
    tenant_rows: Mutex<HashMap<String, (Instant, Vec<LlmProvider>)>>,
}

/// The LLM side of a process (worker or gateway): cheap to clone.
#[derive(Clone)]
pub struct LlmRuntime(Arc<Inner>);

impl std::fmt::Debug for LlmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmRuntime").finish_non_exhaustive()
    }
}

impl LlmRuntime {
    /// `store`: where tenants' own providers and daily token counts live (`None`: the
    /// configured providers only, no daily budgets).
    pub fn new(settings: LlmSettings, store: Option<DynStore>, limits: RateLimiters) -> Self {
        LlmRuntime(Arc::new(Inner {
            settings,
            store,
            limits,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap_or_else(|_| reqwest::Client::new()),
            tenant_rows: Mutex::new(HashMap::new()),
        }))
    }

    /// The tenant's providers from the store (cached for a few seconds).
    async fn tenant_rows(&self, tenant: &str) -> Result<Vec<LlmProvider>, ModelError> {
        let Some(store) = &self.0.store else {
            return Ok(Vec::new());
        };
        if let Ok(cache) = self.0.tenant_rows.lock() {
            if let Some((at, rows)) = cache.get(tenant) {
                if at.elapsed() < TENANT_CACHE {
                    return Ok(rows.clone());
                }
            }
        }
        let rows = store
            .llm_providers(tenant)
            .await
            .map_err(|e| ModelError::Retryable(format!("reading the tenant's providers: {e}")))?;
        if let Ok(mut cache) = self.0.tenant_rows.lock() {
            cache.insert(tenant.to_string(), (Instant::now(), rows.clone()));
        }
        Ok(rows)
    }

    /// Forgets a tenant's cached providers (after a change through this process's API).
    pub fn forget_tenant(&self, tenant: &str) {
        if let Ok(mut cache) = self.0.tenant_rows.lock() {
            cache.remove(tenant);
        }
    }

    /// Provider `name` as `tenant` sees it: its own (store), else the file's for it, else
    /// the one for every tenant.
    pub async fn provider(&self, tenant: &str, name: &str) -> Result<LlmProvider, ModelError> {
        if let Some(p) = self
            .tenant_rows(tenant)
            .await?
            .into_iter()
            .find(|p| p.name == name)
        {
            return Ok(p);
        }
        let s = &self.0.settings;
        s.tenants
            .get(tenant)
            .and_then(|ps| ps.iter().find(|p| p.name == name))
            .or_else(|| s.providers.iter().find(|p| p.name == name))
            .cloned()
            .ok_or_else(|| {
                ModelError::Permanent(format!(
                    "no LLM provider {name:?} is configured for tenant {tenant:?}"
                ))
            })
    }

    /// The provider's API key, read now (a rotated key is used at once). `None`: the
    /// provider takes none.
    fn api_key(p: &LlmProvider) -> Result<Option<String>, ModelError> {
        if let Some(file) = &p.api_key_file {
            return std::fs::read_to_string(file)
                .map(|k| Some(k.trim().to_string()))
                .map_err(|e| {
                    ModelError::Permanent(format!(
                        "provider {:?}: reading its API key file: {}",
                        p.name,
                        e.kind()
                    ))
                });
        }
        match &p.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.trim().is_empty() => Ok(Some(k.trim().to_string())),
                // A flag-configured provider without a key: a local server may want none.
                _ if *var == key_env_var(&p.name) => Ok(None),
                _ => Err(ModelError::Permanent(format!(
                    "provider {:?}: its API key variable {var} is not set",
                    p.name
                ))),
            },
            None => Ok(None),
        }
    }

    /// One model call, without budgets: resolve, check the model, call the protocol.
    pub async fn call(
        &self,
        tenant: &str,
        req: &ModelRequest,
        idempotency_key: &str,
        timeout: Duration,
    ) -> Result<ModelAnswer, ModelError> {
        let provider = self.provider(tenant, &req.provider).await?;
        if !provider.models.is_empty() && !provider.models.contains(&req.model) {
            return Err(ModelError::Permanent(format!(
                "model {:?} is not allowed for provider {:?} (allowed: {})",
                req.model,
                provider.name,
                provider.models.join(", ")
            )));
        }
        let call = Call {
            provider: &provider,
            api_key: Self::api_key(&provider)?,
            idempotency_key,
            timeout,
        };
        match provider.kind {
            LlmProviderKind::Openai => openai::chat(&self.0.http, &call, req).await,
            LlmProviderKind::Anthropic => anthropic::chat(&self.0.http, &call, req).await,
            LlmProviderKind::Scripted => scripted::chat(&call, req),
        }
    }

    /// One model call of `tenant` with its budgets and telemetry: the tenant's daily
    /// tokens are reserved first (`reserve` tokens; refused: `ModelOutcome::Budget`),
    /// then its per-minute tokens (waits), then the call in a `chat {model}` span; both
    /// are settled with the usage after. Token usage and duration are recorded per tenant,
    /// provider and model.
    pub async fn chat_budgeted(
        &self,
        tenant: &str,
        req: &ModelRequest,
        idempotency_key: &str,
        timeout: Duration,
        reserve: u64,
    ) -> ModelOutcome {
        let day_limit = self.0.limits.limits().for_tenant(tenant).llm_tokens_per_day;
        let mut day = None;
        if let (Some(limit), Some(store)) = (day_limit, &self.0.store) {
            match store.reserve_llm_tokens(tenant, reserve, limit).await {
                Ok(Some(r)) => day = Some(r.day),
                Ok(None) => {
                    return ModelOutcome::Budget(
                        BudgetScope::Tenant,
                        format!("tenant {tenant:?} reached its daily budget of {limit} LLM tokens"),
                    )
                }
                Err(e) => {
                    return ModelError::Retryable(format!("reserving the tenant's tokens: {e}"))
                        .into()
                }
            }
        }
        self.0.limits.reserve_llm(tenant, reserve).await;
        let span = tracing::info_span!(
            "chat",
            otel.name = %format!("chat {}", req.model),
            otel.kind = "client",
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = %req.provider,
            gen_ai.request.model = %req.model,
            gen_ai.request.max_tokens = req.max_tokens,
            aetheris.tenant = %tenant,
            aetheris.invocation_key = %idempotency_key,
            gen_ai.usage.input_tokens = tracing::field::Empty,
            gen_ai.usage.output_tokens = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = {
            use tracing::Instrument;
            self.call(tenant, req, idempotency_key, timeout)
                .instrument(span.clone())
                .await
        };
        // Labelled by tenant: a tenant's provider names are its own data (G6).
        metrics::histogram!(metric::GEN_AI_OPERATION_DURATION,
            "tenant" => tenant.to_string(),
            "gen_ai_provider_name" => req.provider.clone(),
            "gen_ai_request_model" => req.model.clone(),
            "gen_ai_operation_name" => "chat")
        .record(started.elapsed().as_secs_f64());
        let used = match &result {
            Ok(a) => {
                span.record("gen_ai.usage.input_tokens", a.input_tokens);
                span.record("gen_ai.usage.output_tokens", a.output_tokens);
                for (kind, n) in [("input", a.input_tokens), ("output", a.output_tokens)] {
                    metrics::counter!(metric::GEN_AI_TOKEN_USAGE,
                        "tenant" => tenant.to_string(),
                        "gen_ai_provider_name" => req.provider.clone(),
                        "gen_ai_request_model" => req.model.clone(),
                        "gen_ai_token_type" => kind)
                    .increment(n);
                }
                a.input_tokens.saturating_add(a.output_tokens)
            }
            Err(e) => {
                span.record("error.type", error_type(e));
                // A timed-out call may have been answered and billed: keep its reservation.
                if matches!(e, ModelError::Unknown(_)) {
                    reserve
                } else {
                    0
                }
            }
        };
        self.0.limits.settle_llm(tenant, reserve, used).await;
        if let (Some(day), Some(store)) = (day, &self.0.store) {
            if let Err(e) = store.settle_llm_tokens(tenant, day, reserve, used).await {
                tracing::warn!(tenant, error = %e, "settling the tenant's LLM tokens failed");
            }
        }
        match result {
            Ok(answer) => ModelOutcome::Answered(answer),
            Err(e) => e.into(),
        }
    }
}

/// The `error.type` of a failed call's span.
fn error_type(e: &ModelError) -> &'static str {
    match e {
        ModelError::Retryable(_) => "retryable",
        ModelError::RetryAfter(..) => "rate_limited",
        ModelError::Permanent(_) => "permanent",
        ModelError::Unknown(_) => "timeout",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_make_providers_for_every_tenant_with_keys_from_env_or_file() {
        let s = LlmSettings::default()
            .with_flags(
                &[
                    "oa=openai:http://127.0.0.1:9".into(),
                    "my-claude=anthropic:https://api.example".into(),
                    "demo=scripted:".into(),
                ],
                &["my-claude=/run/secrets/claude".into()],
            )
            .unwrap();
        assert_eq!(s.providers.len(), 3);
        assert_eq!(
            s.providers[0].api_key_env.as_deref(),
            Some("AETHERIS_LLM_API_KEY_OA")
        );
        assert_eq!(
            s.providers[1].api_key_file.as_deref(),
            Some("/run/secrets/claude")
        );
        assert_eq!(s.providers[1].api_key_env, None);
        assert_eq!(key_env_var("my-claude"), "AETHERIS_LLM_API_KEY_MY_CLAUDE");
        assert_eq!(s.providers[2].kind, LlmProviderKind::Scripted);
        for bad in [
            "x",
            "x=gpt:http://h",
            "x=openai:ftp://h",
            "=openai:http://h",
            "a b=openai:http://h",
        ] {
            assert!(
                LlmSettings::default()
                    .with_flags(&[bad.into()], &[])
                    .is_err(),
                "{bad}"
            );
        }
        assert!(LlmSettings::default()
            .with_flags(&["a=openai:http://h".into()], &["b=/k".into()])
            .unwrap_err()
            .contains("no --llm-provider named \"b\""));
    }

    #[test]
    fn a_providers_file_is_checked() {
        let ok = LlmSettings::parse(
            r#"{"providers": [{"name": "p", "kind": "openai",
            "base_url": "http://h", "api_key_env": "OPENAI_KEY"}],
            "tenants": {"acme": [{"name": "c", "kind": "anthropic", "base_url": "https://a",
            "models": ["m"], "api_key_file": "/k"}]}}"#,
        )
        .unwrap();
        assert_eq!(ok.tenants["acme"][0].models, vec!["m".to_string()]);
        for bad in [
            r#"{"providers": [{"name": "p", "kind": "openai", "base_url": "h"}]}"#,
            r#"{"providers": [{"name": "p", "kind": "openai", "base_url": "http://h", "api_key_env": "A", "api_key_file": "/f"}]}"#,
            r#"{"providers": [{"name": "p", "kind": "openai", "base_url": "http://h", "api_key": "sk-123"}]}"#,
            r#"{"nope": 1}"#,
        ] {
            assert!(LlmSettings::parse(bad).is_err(), "{bad}");
        }
    }

    /// Spans recorded by a test subscriber: (name, fields as text).
    type Spans = Arc<Mutex<Vec<(String, BTreeMap<String, String>)>>>;

    struct Capture(Spans);

    struct Fields<'a>(&'a mut BTreeMap<String, String>);

    impl tracing::field::Visit for Fields<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            self.0
                .insert(field.name().to_string(), format!("{value:?}"));
        }
        fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
            self.0.insert(field.name().to_string(), value.to_string());
        }
    }

    impl<S> tracing_subscriber::Layer<S> for Capture
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut fields = BTreeMap::new();
            attrs.record(&mut Fields(&mut fields));
            fields.insert("#id".into(), format!("{}", id.into_u64()));
            self.0
                .lock()
                .unwrap()
                .push((attrs.metadata().name().to_string(), fields));
        }
        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut spans = self.0.lock().unwrap();
            let key = format!("{}", id.into_u64());
            if let Some((_, fields)) = spans.iter_mut().rev().find(|(_, f)| f["#id"] == key) {
                values.record(&mut Fields(fields));
            }
        }
    }

    #[test]
    fn a_model_call_is_a_chat_span_with_the_genai_names_and_its_usage() {
        use tracing_subscriber::layer::SubscriberExt;
        let spans: Spans = Arc::default();
        let subscriber = tracing_subscriber::registry().with(Capture(spans.clone()));
        let settings = LlmSettings::default()
            .with_flags(&["demo=scripted:".into()], &[])
            .unwrap();
        let llm = LlmRuntime::new(settings, None, RateLimiters::default());
        let req = ModelRequest {
            provider: "demo".into(),
            model: "m-small".into(),
            messages: vec![aetheris_runtime::agent::Message::text(
                aetheris_runtime::agent::Role::User,
                "hello",
            )],
            tools: vec![],
            max_tokens: 16,
            temperature: None,
        };
        let outcome = tracing::subscriber::with_default(subscriber, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(llm.chat_budgeted("t", &req, "key", Duration::from_secs(1), 100))
        });
        let ModelOutcome::Answered(answer) = outcome else {
            panic!("{outcome:?}")
        };
        let spans = spans.lock().unwrap();
        let (name, f) = spans
            .iter()
            .find(|(n, _)| n == "chat")
            .expect("a chat span");
        assert_eq!(name, "chat");
        assert_eq!(f["otel.name"], "chat m-small");
        assert_eq!(f["gen_ai.operation.name"], "chat");
        assert_eq!(f["gen_ai.provider.name"], "demo");
        assert_eq!(f["gen_ai.request.model"], "m-small");
        assert_eq!(
            f["gen_ai.usage.input_tokens"],
            answer.input_tokens.to_string()
        );
        assert_eq!(
            f["gen_ai.usage.output_tokens"],
            answer.output_tokens.to_string()
        );
    }

    #[test]
    fn http_errors_are_classified() {
        assert_eq!(
            http_error(429, Some("2"), "slow down"),
            ModelError::RetryAfter("provider answered 429: slow down".into(), 2_000)
        );
        assert!(matches!(
            http_error(429, None, ""),
            ModelError::RetryAfter(_, 1_000)
        ));
        assert!(matches!(
            http_error(503, None, ""),
            ModelError::Retryable(_)
        ));
        assert!(matches!(
            http_error(529, None, ""),
            ModelError::Retryable(_)
        ));
        assert!(matches!(
            http_error(401, None, ""),
            ModelError::Permanent(_)
        ));
        assert!(matches!(
            http_error(400, None, ""),
            ModelError::Permanent(_)
        ));
    }
}
