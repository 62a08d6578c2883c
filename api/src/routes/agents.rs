//! Agent steps over HTTP: the view of an agent step in a job's answer (turns with their
//! model and token usage, tool calls with their status, approvals waited for, a budget
//! wait), and replay-diff (`POST /v1/jobs/{id}/replay`): every recorded model turn asked
//! again of another model with the recorded conversation — tool results served from the
//! record, so no tool is called — and where the answers diverge (tool, arguments, final
//! answer). Reads are scoped by the caller's tenant (G6); the replay's model calls are the
//! tenant's, under its budgets.

use super::{parse_id, schema, Access, Answer, AppState, Caller, HttpMethod, RouteSpec};
use crate::auth::Permission;
use crate::body::Presence;
use crate::problem::ApiError;
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::agent::replay::{decided, divergences, recorded_turns};
use aetheris_runtime::agent::{AgentState, AgentTools, Message, ModelOutcome, ModelRequest};
use aetheris_runtime::{JobState, ToolOutcome};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// How long one replayed model call may take.
const REPLAY_CALL_TIMEOUT: Duration = Duration::from_secs(120);

pub const REPLAY: RouteSpec = RouteSpec::new(
    HttpMethod::Post,
    "/v1/jobs/{id}/replay",
    Access::Requires(Permission::JobCreate),
    "replayJob",
    "Ask another model every recorded model turn of the job's agent steps (tool results \
     from the record: no tool is called) and report where its decisions diverge",
    Answer::json(
        200,
        "the turns and their divergences",
        schema::<ReplayReport>,
    ),
    |r| r.to(replay),
)
.body(Presence::Required, schema::<ReplayRequest>)
.errors(&[404, 409]);

/// One tool call of an agent step, as `GET /v1/jobs/{id}` shows it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ToolCallView {
    /// `step.turn.index`: its ledger row, and `approve:<id>` its approval signal.
    pub id: String,
    pub tool: String,
    /// pending, running, succeeded, failed, outcome_unknown or refused.
    pub status: String,
    /// The arguments (the model's, or the approver's edit).
    pub arguments: Value,
    pub attempt: u32,
    pub approved_by: Option<String>,
    /// Waits for signal `approve:<id>`.
    pub awaits_approval: bool,
    pub error: Option<String>,
}

/// One answered model call.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TurnView {
    pub turn: u32,
    pub provider: String,
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The model's text (the final answer on the last turn).
    pub content: String,
    pub tool_calls: Vec<ToolCallView>,
}

/// A budget wait: the next call would breach `scope`'s budget.
#[derive(Debug, Serialize, JsonSchema)]
pub struct BudgetWaitView {
    /// step, job or tenant.
    pub scope: String,
    pub limit: u64,
    pub used: u64,
    pub needed: u64,
}

/// An agent step's loop.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentView {
    pub provider: String,
    pub model: String,
    pub turns: Vec<TurnView>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// A model call in flight: its turn.
    pub model_call_running: Option<u32>,
    /// The signals the step waits for (`approve:<call>`, `budget`).
    pub awaiting: Vec<String>,
    pub budget_wait: Option<BudgetWaitView>,
}

fn arguments(text: &str) -> Value {
    aetheris_runtime::agent::parse_arguments(text).unwrap_or_else(|_| Value::String(text.into()))
}

/// The view of agent step `agent` of `state`.
pub fn agent_view(state: &JobState, agent: &AgentState) -> AgentView {
    let turns = agent
        .turns
        .iter()
        .map(|t| TurnView {
            turn: t.turn,
            provider: t.provider.clone(),
            model: t.model.clone(),
            input_tokens: t.input_tokens,
            output_tokens: t.output_tokens,
            content: t
                .answer
                .last()
                .and_then(|d| state.messages.get(d))
                .map(|m| m.content.clone())
                .unwrap_or_default(),
            tool_calls: agent
                .calls
                .iter()
                .filter(|c| c.turn == t.turn)
                .map(|c| ToolCallView {
                    id: c.id.clone(),
                    tool: c.tool.clone(),
                    status: c.status.as_str().into(),
                    arguments: arguments(&c.arguments),
                    attempt: c.attempt,
                    approved_by: c.approved_by.clone(),
                    awaits_approval: c.awaits_approval(),
                    error: c.error.clone(),
                })
                .collect(),
        })
        .collect();
    AgentView {
        provider: agent.provider.clone(),
        model: agent.model.clone(),
        turns,
        input_tokens: agent.input_tokens,
        output_tokens: agent.output_tokens,
        model_call_running: (agent.model_status == aetheris_runtime::agent::ModelStatus::Running)
            .then_some(agent.answered + 1),
        awaiting: agent.awaited_signals(),
        budget_wait: agent.park.as_ref().map(|p| BudgetWaitView {
            scope: p.scope.as_str().into(),
            limit: p.limit,
            used: p.used,
            needed: p.needed,
        }),
    }
}

/// `POST /v1/jobs/{id}/replay`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// The model to ask.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// The provider to ask it of (default: each turn's recorded provider).
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_.-]{1,64}$"))]
    pub provider: Option<String>,
    /// Only this agent step's turns.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,128}$"))]
    pub step: Option<String>,
}

/// One turn asked again.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReplayedTurn {
    pub step: String,
    pub turn: u32,
    /// The model that answered it first.
    pub recorded_model: String,
    /// What the recorded answer decided: `{"tool_calls": [{"tool", "args"}], "answer"}`.
    pub recorded: Value,
    /// What the new model decided (absent if it could not be asked).
    pub replayed: Option<Value>,
    /// Why the new model could not be asked.
    pub error: Option<String>,
    /// Where the decisions differ: `tool`, `args`, `answer` (empty: they agree).
    pub divergences: Vec<String>,
}

/// The report of a replay.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReplayReport {
    pub job_id: String,
    pub model: String,
    pub provider: Option<String>,
    pub turns: Vec<ReplayedTurn>,
    /// Turns whose decisions differ.
    pub diverged: usize,
    /// The first diverging turn, as `step.turn`.
    pub first_divergence: Option<String>,
}

async fn replay(
    req: HttpRequest,
    p: Caller,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let body: ReplayRequest = crate::body::json_required(&req, payload, st.body, "replay").await?;
    if body.model.trim().is_empty() || body.model.len() > 256 {
        return Err(ApiError::BadRequest("model must be 1-256 bytes".into()));
    }
    let state = super::jobs::job_state(&st.store, &p.tenant, id).await?;
    let turns: Vec<_> = recorded_turns(&state)
        .into_iter()
        .filter(|t| body.step.as_ref().is_none_or(|s| *s == t.step))
        .collect();
    if turns.is_empty() {
        return Err(ApiError::Conflict(format!(
            "job {id} has no recorded model turns{}",
            body.step
                .as_ref()
                .map(|s| format!(" in step {:?}", crate::problem::clip(s, 64)))
                .unwrap_or_default()
        )));
    }
    let mut out = Vec::with_capacity(turns.len());
    for t in turns {
        let spec = state.agent_spec(&t.step);
        let request = ModelRequest {
            provider: body.provider.clone().unwrap_or_else(|| t.provider.clone()),
            model: body.model.clone(),
            messages: t.request.clone(),
            tools: spec
                .map(|s| {
                    s.tools
                        .iter()
                        .filter_map(|n| st.agent_tools.declaration(n))
                        .collect()
                })
                .unwrap_or_default(),
            max_tokens: spec.map_or(aetheris_runtime::agent::DEFAULT_MAX_TOKENS, |s| {
                s.max_tokens()
            }),
            temperature: spec.and_then(|s| s.temperature),
        };
        let key = format!(
            "replay-{id}-{}-{}-{}-{}",
            t.step, t.turn, request.provider, request.model
        );
        let reserve = u64::from(request.max_tokens)
            + request
                .messages
                .iter()
                .map(Message::size_bytes)
                .sum::<u64>()
                / 4;
        let outcome = st
            .llm
            .chat_budgeted(&p.tenant, &request, &key, REPLAY_CALL_TIMEOUT, reserve)
            .await;
        let recorded = serde_json::to_value(decided(&t.answer)).unwrap_or(Value::Null);
        let (replayed, error, diverged) = match outcome {
            ModelOutcome::Answered(a) => (
                Some(serde_json::to_value(decided(&a.message)).unwrap_or(Value::Null)),
                None,
                divergences(&t.answer, &a.message)
                    .into_iter()
                    .map(String::from)
                    .collect(),
            ),
            ModelOutcome::Failed(
                ToolOutcome::Retryable(m) | ToolOutcome::Permanent(m) | ToolOutcome::Unknown(m),
            ) => (None, Some(m), Vec::new()),
            ModelOutcome::Failed(other) => (None, Some(format!("{other:?}")), Vec::new()),
            ModelOutcome::RetryAfter(m, _) | ModelOutcome::Budget(_, m) => {
                (None, Some(m), Vec::new())
            }
        };
        out.push(ReplayedTurn {
            step: t.step,
            turn: t.turn,
            recorded_model: t.model,
            recorded,
            replayed,
            error,
            divergences: diverged,
        });
    }
    let diverged = out.iter().filter(|t| !t.divergences.is_empty()).count();
    let first_divergence = out
        .iter()
        .find(|t| !t.divergences.is_empty())
        .map(|t| format!("{}.{}", t.step, t.turn));
    Ok(HttpResponse::Ok().json(ReplayReport {
        job_id: id.to_string(),
        model: body.model,
        provider: body.provider,
        turns: out,
        diverged,
        first_divergence,
    }))
}
