//! The agent steps of a job page: per agent step its loop as `GET /v1/jobs/{id}` shows it
//! (`routes::agents::agent_view`, so the UI and the API read the fold the same way) — each
//! turn's provider, model, tokens in/out and latency; each tool call with its arguments,
//! status (running, succeeded, failed, outcome unknown, refused, awaiting approval,
//! approved), approver and result; the final answer; the tokens used against the step's and
//! the job's budgets, and what the step waits for. The forms that decide an approval or a
//! budget are in [`super::approvals`], in the actions panel.
//!
//! Latencies are store times: a turn's from the `agent_model_started` of the attempt that
//! was answered to its `agent_model_answered`, a tool call's from its last
//! `agent_tool_started` to its result. They need the events, so the first paint draws the
//! section from the folded state with latencies pending and then asks for [`partial`], which
//! reads at most [`timeline::SCAN_EVENTS`] events: the page never reads a long log whole.

use super::error::UiError;
use super::json;
use super::layout::{self, badge, thousands};
use super::session::Viewer;
use super::time::format_duration;
use super::timeline;
use crate::routes::agents::{agent_view, ToolCallView};
use crate::routes::{jobs, parse_id, AppState};
use actix_web::{web, HttpRequest, HttpResponse};
use aetheris_runtime::agent::{AgentSpec, AgentState};
use aetheris_runtime::{EventBody, JobState, RecordedEvent, StepSpec};
use aetheris_store::Scope;
use maud::{html, Markup};
use serde_json::Value;
use std::collections::HashMap;

/// Most bytes of a turn's text put into the page (the API has all of it).
const MAX_TEXT_SHOWN: usize = 16 * 1024;

/// Latencies from the events' store times.
#[derive(Debug, Default, PartialEq)]
pub struct Timings {
    /// (step, turn) → ms from the answered attempt's start to its answer.
    turns: HashMap<(String, u32), i64>,
    /// call id → ms from its last start to its result.
    calls: HashMap<String, i64>,
    /// The last seq read; less than the job's when the scan stopped early.
    read_to: u64,
}

impl Timings {
    /// The latencies found in `events` (in seq order).
    pub fn of(events: &[RecordedEvent]) -> Timings {
        let mut t = Timings::default();
        let mut model_started: HashMap<(&str, u32, u32), i64> = HashMap::new();
        let mut tool_started: HashMap<&str, i64> = HashMap::new();
        for e in events {
            let at = e.recorded_at_ms;
            t.read_to = e.seq;
            match &e.body {
                EventBody::AgentModelStarted {
                    step,
                    turn,
                    attempt,
                    ..
                } => {
                    // A restart appends the same attempt's start again: the latest counts.
                    model_started.insert((step, *turn, *attempt), at);
                }
                EventBody::AgentModelAnswered {
                    step,
                    turn,
                    attempt,
                    ..
                } => {
                    if let Some(s) = model_started.get(&(step.as_str(), *turn, *attempt)) {
                        t.turns.insert((step.clone(), *turn), at - s);
                    }
                }
                EventBody::AgentToolStarted { call, .. } => {
                    tool_started.insert(call, at);
                }
                EventBody::AgentToolSucceeded { call, .. }
                | EventBody::AgentToolFailed { call, .. }
                | EventBody::AgentToolOutcomeUnknown { call, .. } => {
                    if let Some(s) = tool_started.get(call.as_str()) {
                        t.calls.insert(call.clone(), at - s);
                    }
                }
                _ => {}
            }
        }
        t
    }

    fn turn(&self, step: &str, turn: u32) -> Option<i64> {
        self.turns.get(&(step.to_string(), turn)).copied()
    }
}

/// The agent steps of the plan, in plan order.
fn agent_steps(state: &JobState) -> Vec<(&StepSpec, &AgentSpec)> {
    state
        .plan
        .steps
        .iter()
        .filter_map(|s| s.agent.as_ref().map(|a| (s, a)))
        .collect()
}

/// The Agents section (nothing for a plan without agent steps). Without `timings` (the
/// first paint) it loads itself again with them; while the job runs it refreshes on every
/// change the live stream reports. `can_decide`: the viewer may decide approvals (the
/// calls waiting for one link to its form in the actions panel).
pub fn section(state: &JobState, timings: Option<&Timings>, can_decide: bool) -> Markup {
    let agents = agent_steps(state);
    if agents.is_empty() {
        return html! {};
    }
    let running = !state.status.is_terminal();
    let trigger = match (timings.is_some(), running) {
        (false, true) => Some("load, sse:changed"),
        (false, false) => Some("load"),
        (true, true) => Some("sse:changed"),
        (true, false) => None,
    };
    let url = format!("/ui/jobs/{}/agents", state.job_id);
    html! {
        section id="agents" aria-labelledby="h-agents"
            hx-get=[trigger.map(|_| url.as_str())]
            hx-trigger=[trigger]
            hx-swap=[trigger.map(|_| "outerHTML")] {
            h2 id="h-agents" { "Agents" }
            @if let Some(b) = state.plan.budget {
                @let limit = b.tokens.saturating_add(state.extra_job_tokens);
                @let used: u64 = state.steps.values().filter_map(|s| s.agent.as_deref()).map(AgentState::used_tokens).sum();
                p { "Job budget: " (budget_use(used, Some(limit))) }
            }
            @for (spec, agent) in &agents {
                (step_markup(state, spec, agent, timings, can_decide))
            }
            @match timings {
                None => p.muted { "Loading the latencies…" },
                Some(t) if t.read_to < state.last_seq => p.muted { "Latencies from the first " (t.read_to) " of " (state.last_seq) " events." },
                Some(_) => {},
            }
        }
    }
}

/// `used of limit tokens (n%)`, or `used tokens (no budget)`.
fn budget_use(used: u64, limit: Option<u64>) -> Markup {
    html! {
        @match limit {
            Some(l) => {
                strong { (thousands(used)) } " of " (thousands(l)) " tokens"
                @if l > 0 { " (" (used.saturating_mul(100) / l) "%)" }
            },
            None => { strong { (thousands(used)) } " tokens (no budget)" },
        }
    }
}

fn step_markup(
    state: &JobState,
    spec: &StepSpec,
    agent_spec: &AgentSpec,
    timings: Option<&Timings>,
    can_decide: bool,
) -> Markup {
    let step = spec.id.as_str();
    let st = state.steps.get(step);
    let status = st
        .map(|s| super::job_page::display_status(state, s))
        .unwrap_or("pending");
    let agent = st.and_then(|s| s.agent.as_deref());
    let view = agent.map(|a| agent_view(state, a));
    let limit = agent_spec
        .budget
        .map(|b| b.tokens.saturating_add(agent.map_or(0, |a| a.extra_tokens)));
    let answer = final_answer(st.and_then(|s| s.output.as_ref()));
    html! {
        article.agent id={ "agent-" (step) } aria-labelledby={ "h-agent-" (step) } {
            h3 id={ "h-agent-" (step) } { "Step " (step) " " (badge(status)) }
            dl.facts {
                div { dt { "Provider" } dd { (agent_spec.provider) } }
                div { dt { "Model" } dd { (agent_spec.model) } }
                div { dt { "Turns" } dd { (view.as_ref().map_or(0, |v| v.turns.len())) " of at most " (agent_spec.max_turns()) } }
                div { dt { "Tokens in / out" } dd { (thousands(agent.map_or(0, |a| a.input_tokens))) " / " (thousands(agent.map_or(0, |a| a.output_tokens))) } }
                div { dt { "Step budget" } dd { (budget_use(agent.map_or(0, AgentState::used_tokens), limit)) } }
                @if !agent_spec.approve.is_empty() {
                    div { dt { "Approval needed for" } dd { (agent_spec.approve.join(", ")) } }
                }
            }
            @if let Some(e) = st.and_then(|s| s.error.as_ref()) {
                p.error { strong { (step) ": " } (e) }
            }
            @match &view {
                None => p.empty { "The agent has not started yet." },
                Some(v) => {
                    @if v.turns.is_empty() {
                        p.empty { "No model answer yet." }
                    } @else {
                        div.scroll { table.turns {
                            thead { tr {
                                th scope="col" { "Turn" } th scope="col" { "Provider · model" }
                                th scope="col" { "Tokens in / out" } th scope="col" { "Latency" }
                                th scope="col" { "What the model said and called" }
                            } }
                            tbody { @for t in &v.turns { tr {
                                th scope="row" { (t.turn) }
                                td { (t.provider) " · " (t.model) }
                                td.num { (thousands(t.input_tokens)) " / " (thousands(t.output_tokens)) }
                                td.num { (latency(timings.map(|x| x.turn(step, t.turn)))) }
                                td.said {
                                    @if !t.content.is_empty() { p.said { (json::cut(t.content.clone(), MAX_TEXT_SHOWN).0) } }
                                    @if !t.tool_calls.is_empty() {
                                        ul.calls { @for c in &t.tool_calls {
                                            (call_markup(c, agent, timings, can_decide))
                                        } }
                                    }
                                }
                            } } }
                        } }
                    }
                    @if let Some(turn) = v.model_call_running {
                        p.muted role="status" { "Turn " (turn) ": the model is being asked…" }
                    }
                    @if let Some(b) = &v.budget_wait {
                        p.warn role="status" {
                            "Waiting for a budget decision: the next model call needs " (thousands(b.needed))
                            " tokens and the " (b.scope) "'s budget has used " (thousands(b.used)) " of " (thousands(b.limit)) " (signal "
                            code { "budget" } ")."
                        }
                    }
                    @for s in &v.awaiting {
                        @if s.starts_with("approve:") {
                            p.warn role="status" { "Waiting for signal " code { (s) } ": a person approves, edits or rejects the call." }
                        }
                    }
                }
            }
            @if let Some(a) = answer {
                section.answer aria-label={ "Final answer of " (step) } {
                    h4 { "Final answer" }
                    pre { (json::cut(a, MAX_TEXT_SHOWN).0) }
                }
            }
        }
    }
}

/// The step's answer: `output.answer` once it succeeded.
fn final_answer(output: Option<&Value>) -> Option<String> {
    output
        .and_then(|o| o.get("answer"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn latency(ms: Option<Option<i64>>) -> String {
    match ms {
        None => "…".into(),
        Some(None) => "—".into(),
        Some(Some(ms)) => format_duration(ms),
    }
}

/// A tool call's status as the page shows it: the fold's, with a call waiting for (or
/// given) its approval named so.
pub fn call_status(c: &ToolCallView) -> &str {
    if c.awaits_approval {
        "awaiting_approval"
    } else if c.status == "pending" && c.approved_by.is_some() {
        "approved"
    } else {
        &c.status
    }
}

fn call_markup(
    c: &ToolCallView,
    agent: Option<&AgentState>,
    timings: Option<&Timings>,
    can_decide: bool,
) -> Markup {
    let output = agent
        .and_then(|a| a.call(&c.id))
        .and_then(|a| a.output.as_deref())
        .map(|text| serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.into())));
    let ran = timings.and_then(|t| t.calls.get(&c.id)).copied();
    html! {
        li.call id={ "call-" (c.id) } {
            code { (c.id) } " " strong { (c.tool) } " " (badge(call_status(c)))
            @if let Some(who) = &c.approved_by { " approved by " strong { (who) } }
            @if c.attempt > 1 { " · attempt " (c.attempt) }
            @if let Some(ms) = ran { " · ran " (format_duration(ms)) }
            @if c.awaits_approval && can_decide { " · " a href={ "#approve-" (c.id) } { "decide" } }
            (json::block_opened("Arguments", &c.arguments, true))
            @if let Some(o) = &output { (json::block_opened("Result", o, true)) }
            @if let Some(e) = &c.error { p.error { (e) } }
        }
    }
}

/// `GET /ui/jobs/{id}/agents`: the Agents section with latencies.
pub async fn partial(
    req: HttpRequest,
    path: web::Path<String>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, UiError> {
    let viewer = Viewer::of(&req, &st, jobs::EVENTS.access).await?;
    let id = parse_id(&path)?;
    let state = super::job_page::load(&st, &viewer, id).await?;
    let scope = Scope::Tenant(&viewer.principal.tenant);
    let events = timeline::scan(&st, scope, id).await?;
    let timings = Timings::of(&events);
    let can_decide = viewer.may(crate::routes::commands::SIGNAL.access);
    Ok(layout::ok(section(&state, Some(&timings), can_decide)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use aetheris_runtime::testkit::recorded as ev;

    fn model_started(turn: u32, attempt: u32) -> EventBody {
        EventBody::AgentModelStarted {
            step: "triage".into(),
            call: format!("triage.{turn}"),
            turn,
            attempt,
            invocation_key: "k".into(),
            provider: "p".into(),
            model: "m".into(),
            reserved_tokens: 10,
            request_digest: "d".into(),
            fencing_token: 1,
        }
    }

    #[test]
    fn latencies_are_store_times_of_the_answered_attempt_and_of_each_call() {
        let events = vec![
            ev(2, 1000, model_started(1, 1)),
            ev(
                3,
                1400,
                EventBody::AgentModelFailed {
                    step: "triage".into(),
                    call: "triage.1".into(),
                    turn: 1,
                    attempt: 1,
                    error: "503".into(),
                    retryable: true,
                    retry_after_ms: Some(10),
                    budget: None,
                },
            ),
            ev(4, 2000, model_started(1, 2)),
            ev(
                5,
                2250,
                EventBody::AgentModelAnswered {
                    step: "triage".into(),
                    call: "triage.1".into(),
                    turn: 1,
                    attempt: 2,
                    messages: vec![],
                    input_tokens: 5,
                    output_tokens: 6,
                },
            ),
            ev(
                6,
                2300,
                EventBody::AgentToolStarted {
                    step: "triage".into(),
                    call: "triage.1.0".into(),
                    attempt: 1,
                    invocation_key: "k2".into(),
                    tool: "echo".into(),
                    effect: aetheris_runtime::EffectClass::Pure,
                    fencing_token: 1,
                },
            ),
            ev(
                7,
                2340,
                EventBody::AgentToolSucceeded {
                    step: "triage".into(),
                    call: "triage.1.0".into(),
                    attempt: 1,
                    output: json!({}),
                },
            ),
        ];
        let t = Timings::of(&events);
        assert_eq!(
            t.turn("triage", 1),
            Some(250),
            "the answered attempt, not the first"
        );
        assert_eq!(t.calls.get("triage.1.0"), Some(&40));
        assert_eq!(t.turn("triage", 2), None);
        assert_eq!(t.read_to, 7);
        assert_eq!(latency(None), "…");
        assert_eq!(latency(Some(None)), "—");
    }

    /// The tools of [`waiting_for_an_approval`].
    struct Tools;

    impl aetheris_runtime::agent::AgentTools for Tools {
        fn effect_class(&self, tool: &str) -> Option<aetheris_runtime::EffectClass> {
            match tool {
                "lookup" => Some(aetheris_runtime::EffectClass::Pure),
                "refund" => Some(aetheris_runtime::EffectClass::SideEffect),
                _ => None,
            }
        }
        fn declaration(&self, tool: &str) -> Option<aetheris_runtime::agent::ToolDecl> {
            Some(aetheris_runtime::agent::ToolDecl {
                name: tool.into(),
                description: String::new(),
                parameters: json!({"type": "object"}),
            })
        }
    }

    /// A job whose agent step's first answer (hostile text, a lookup and a refund that
    /// needs an approval) is folded, as the worker records it.
    fn waiting_for_an_approval() -> JobState {
        use aetheris_runtime::agent::decide::start_event;
        use aetheris_runtime::agent::{
            decide_agents, model_outcome_event, AgentContext, Message, ModelAnswer, ModelAttempt,
            ModelOutcome, Role, ToolCallRequest,
        };
        let plan = json!({"steps": [{"id": "triage", "agent": {"provider": "p", "model": "m<i>1</i>",
            "prompt": "Ticket", "tools": ["lookup", "refund"], "approve": ["refund"],
            "budget": {"tokens": 10000}}}]});
        let first = ev(
            1,
            1000,
            EventBody::JobSubmitted {
                tenant: "t".into(),
                plan: serde_json::from_value(plan).unwrap(),
                input: json!({}),
                idempotency_key: None,
            },
        );
        let mut state = JobState::genesis(&first).unwrap();
        let push = |state: &mut JobState, body: EventBody| {
            let e = ev(state.last_seq + 1, 1000 + state.last_seq as i64, body);
            state.apply(&e).unwrap();
            e
        };
        let start = start_event(&state, "triage").unwrap();
        push(&mut state, start);
        let ctx = AgentContext {
            fencing_token: 1,
            tools: &Tools,
        };
        let mut model = None;
        for body in decide_agents(&state, 2000, &ctx).events {
            model = ModelAttempt::from_started(&push(&mut state, body).body);
        }
        let calls = [
            ("lookup", json!({"order": "A-17"})),
            (
                "refund",
                json!({"amount": 30, "note": "<script>alert('args')</script>"}),
            ),
        ];
        let message = Message {
            role: Role::Assistant,
            content: "<script>alert('model')</script>Looking it up.".into(),
            tool_calls: calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| ToolCallRequest {
                    id: format!("c{i}"),
                    name: name.to_string(),
                    arguments: args.to_string(),
                })
                .collect(),
            tool_call_id: None,
            is_error: false,
        };
        let answered = model_outcome_event(
            &state,
            &model.unwrap(),
            ModelOutcome::Answered(ModelAnswer {
                message,
                input_tokens: 1200,
                output_tokens: 45,
            }),
            0.5,
        );
        push(&mut state, answered);
        for body in decide_agents(&state, 3000, &ctx).events {
            push(&mut state, body);
        }
        state
    }

    #[test]
    fn an_agent_step_shows_its_turn_calls_and_budget_and_hostile_text_is_inert() {
        let state = waiting_for_an_approval();
        let html = section(&state, None, true).into_string();
        assert!(html.contains("1,200 / 45"), "{html}");
        assert!(html.contains("p · m&lt;i&gt;1&lt;/i&gt;"), "{html}");
        assert!(html.contains("of 10,000 tokens"), "{html}");
        assert!(html.contains("id=\"call-triage.1.1\""), "{html}");
        assert!(html.contains("awaiting approval"), "{html}");
        assert!(html.contains("href=\"#approve-triage.1.1\""), "{html}");
        assert!(html.contains("&lt;script&gt;alert('model')&lt;/script&gt;Looking it up."));
        assert!(html.contains("&lt;script&gt;alert('args')"), "{html}");
        assert!(!html.contains("<script") && !html.contains("<i>"), "{html}");
        assert!(
            html.contains("Loading the latencies"),
            "the first paint loads them after"
        );
        // A viewer who may not decide is not sent to a form that is not there.
        let html = section(&state, Some(&Timings::default()), false).into_string();
        assert!(!html.contains("#approve-"), "{html}");
        assert!(html.contains("awaiting approval"));
    }

    #[test]
    fn a_call_awaiting_or_given_approval_is_named_so() {
        let mut c = ToolCallView {
            id: "s.1.0".into(),
            tool: "refund".into(),
            status: "pending".into(),
            arguments: json!({}),
            attempt: 0,
            approved_by: None,
            awaits_approval: true,
            error: None,
        };
        assert_eq!(call_status(&c), "awaiting_approval");
        c.awaits_approval = false;
        c.approved_by = Some("ada".into());
        assert_eq!(call_status(&c), "approved");
        c.status = "succeeded".into();
        assert_eq!(call_status(&c), "succeeded");
    }
}
