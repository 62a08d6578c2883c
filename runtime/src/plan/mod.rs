//! The plan model (a DAG of steps), its documented caps and duration bounds. Validation
//! (in `validate`) is total: it reports every problem, each located by its JSON path, and a
//! plan that passes can be run without any further checks (unique ids, `needs` exist, no
//! cycles, known tools, durations within bounds, references only to the input and to steps
//! the referring step transitively needs). Its cost is near-linear in the size of the plan,
//! and the caps below are checked first, so a hostile plan costs little to refuse.
//! User-facing reference: docs/plans.md.

mod validate;

use crate::agent::{AgentSpec, TokenBudget};
use crate::duration::{HumanDuration, DAY_MS, HOUR_MS};
use crate::error::PlanError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

/// How safe a tool call is to repeat (DESIGN §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EffectClass {
    /// No side effect: may be re-run freely.
    Pure,
    /// Safe to repeat with the same invocation key.
    Idempotent,
    /// Must not be repeated: at most once per invocation key (G2).
    SideEffect,
}

impl EffectClass {
    pub fn as_str(&self) -> &'static str {
        match self {
            EffectClass::Pure => "pure",
            EffectClass::Idempotent => "idempotent",
            EffectClass::SideEffect => "side_effect",
        }
    }
    /// Whether a call whose outcome is unknown may be re-invoked with the same key.
    pub fn reinvocable(&self) -> bool {
        !matches!(self, EffectClass::SideEffect)
    }
}

/// Retries of one step. Every attempt reuses the step's invocation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<HumanDuration>,
}

fn default_max_attempts() -> u32 {
    3
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    #[default]
    Exponential,
    Fixed,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Backoff::Exponential,
            initial: None,
            max: None,
        }
    }
}

/// One node of the plan as submitted. Exactly one of `tool`, `wait`, `sleep` is set; the
/// flat shape mirrors the JSON users write (DESIGN §6).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub args: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sleep: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<EffectClass>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// An agent step: an LLM tool-calling loop (docs/agents.md). `retry` and `timeout`
    /// apply to each of its model and tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentSpec>,
}

/// A `wait` step: park until a signal with this name arrives (an approval is a signal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitSpec {
    pub signal: String,
    /// Give up after this long: the step fails, or succeeds with `default` if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// What a validated step does.
#[derive(Debug, Clone, PartialEq)]
pub enum StepKind<'a> {
    Tool { tool: &'a str, args: &'a Value },
    Wait(&'a WaitSpec),
    Sleep(&'a HumanDuration),
    Agent(&'a AgentSpec),
}

impl StepSpec {
    pub fn kind(&self) -> Option<StepKind<'_>> {
        if let Some(tool) = self.tool.as_deref() {
            return Some(StepKind::Tool {
                tool,
                args: &self.args,
            });
        }
        if let Some(w) = &self.wait {
            return Some(StepKind::Wait(w));
        }
        if let Some(a) = &self.agent {
            return Some(StepKind::Agent(a));
        }
        self.sleep.as_ref().map(StepKind::Sleep)
    }
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.clone().unwrap_or_default()
    }
}

#[derive(Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[schemars(length(min = 1, max = MAX_STEPS))]
    pub steps: Vec<StepSpec>,
    /// The job's token budget: all its agent steps' model calls together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<TokenBudget>,
    /// Step id → position, built on the first [`Plan::step`] lookup so run-time lookups are
    /// O(1). Never serialized; shared by clones.
    #[serde(skip)]
    by_id: StepIndex,
}

/// Equal plans have equal steps and budgets; the lookup cache plays no part.
impl PartialEq for Plan {
    fn eq(&self, other: &Self) -> bool {
        self.steps == other.steps && self.budget == other.budget
    }
}

impl fmt::Debug for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plan")
            .field("steps", &self.steps)
            .field("budget", &self.budget)
            .finish()
    }
}

#[derive(Clone, Default)]
struct StepIndex(OnceLock<Arc<HashMap<String, usize>>>);

/// What validation needs to know about tools: whether a name exists and its declared
/// effect class. Implemented by the worker's tool registry.
pub trait ToolCatalog {
    fn effect_class(&self, tool: &str) -> Option<EffectClass>;
}

impl<F: Fn(&str) -> Option<EffectClass>> ToolCatalog for F {
    fn effect_class(&self, tool: &str) -> Option<EffectClass> {
        self(tool)
    }
}

// Caps: upper bounds that keep a hostile plan from costing memory or time. They are
// checked before anything else, and a plan over any of them is refused at once.

/// Steps in one plan.
pub const MAX_STEPS: usize = 1_000;
/// Entries in one step's `needs`.
pub const MAX_NEEDS_PER_STEP: usize = 100;
/// `needs` entries summed over all steps (the edges of the graph).
pub const MAX_EDGES: usize = 10_000;
/// `${…}` references summed over all string values in the `args` of all steps.
pub const MAX_REFERENCES: usize = 10_000;
/// Characters of a step id or a wait signal name.
pub const MAX_ID_LEN: usize = 128;
/// The largest `retry.max_attempts` (the smallest is 1).
pub const MAX_RETRY_ATTEMPTS: u32 = 100;

/// Inclusive bounds of one duration field of a step, with both ends as users write them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationBounds {
    pub min_ms: u64,
    pub min: &'static str,
    pub max_ms: u64,
    pub max: &'static str,
}

impl DurationBounds {
    pub fn contains(&self, d: &HumanDuration) -> bool {
        (self.min_ms..=self.max_ms).contains(&d.as_millis())
    }
}

const fn at_least_1ms_up_to(max_ms: u64, max: &'static str) -> DurationBounds {
    DurationBounds {
        min_ms: 1,
        min: "1ms",
        max_ms,
        max,
    }
}

/// A tool step's `timeout`.
pub const TOOL_TIMEOUT_BOUNDS: DurationBounds = at_least_1ms_up_to(24 * HOUR_MS, "24h");
/// A `sleep` step's duration.
pub const SLEEP_BOUNDS: DurationBounds = at_least_1ms_up_to(365 * DAY_MS, "365d");
/// A wait step's `wait.timeout`.
pub const WAIT_TIMEOUT_BOUNDS: DurationBounds = at_least_1ms_up_to(365 * DAY_MS, "365d");
/// `retry.initial`: the first backoff delay.
pub const RETRY_INITIAL_BOUNDS: DurationBounds = at_least_1ms_up_to(HOUR_MS, "1h");
/// `retry.max`: the longest backoff delay (and never shorter than `retry.initial`).
pub const RETRY_MAX_BOUNDS: DurationBounds = at_least_1ms_up_to(24 * HOUR_MS, "24h");

impl Plan {
    /// A plan of these steps (what deserializing `{"steps": [...]}` yields).
    pub fn new(steps: Vec<StepSpec>) -> Plan {
        Plan {
            steps,
            budget: None,
            by_id: StepIndex::default(),
        }
    }

    /// The step with this id (the first, if a plan that failed validation repeats it). O(1)
    /// after the first call, which indexes the steps once.
    pub fn step(&self, id: &str) -> Option<&StepSpec> {
        let index = self.by_id.0.get_or_init(|| {
            let mut index = HashMap::with_capacity(self.steps.len());
            for (i, s) in self.steps.iter().enumerate() {
                index.entry(s.id.clone()).or_insert(i);
            }
            Arc::new(index)
        });
        match index.get(id).and_then(|&i| self.steps.get(i)) {
            Some(s) if s.id == id => Some(s),
            // `steps` is public: if it changed after the index was built, scan.
            _ => self.steps.iter().find(|s| s.id == id),
        }
    }

    /// The effect class a step runs with: its own `effect`, else its tool's.
    pub fn effect_of(&self, step: &StepSpec, tools: &dyn ToolCatalog) -> EffectClass {
        step.effect
            .or_else(|| step.tool.as_deref().and_then(|t| tools.effect_class(t)))
            .unwrap_or(EffectClass::UNKNOWN_DEFAULT)
    }

    /// Every problem with this plan, each named by its JSON path (prefixed `plan.steps[i]`).
    /// Empty means the plan is runnable. If a cap is exceeded, only the caps are reported.
    pub fn validate(&self, tools: &dyn ToolCatalog) -> Vec<PlanError> {
        validate::validate(self, tools)
    }

    /// All steps `id` needs, directly or transitively. Visits each step and need once.
    pub fn ancestors(&self, id: &str) -> BTreeSet<&str> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = self
            .step(id)
            .map(|s| s.needs.iter().map(|n| n.as_str()).collect())
            .unwrap_or_default();
        while let Some(n) = todo.pop() {
            if seen.insert(n) {
                if let Some(s) = self.step(n) {
                    todo.extend(s.needs.iter().map(|x| x.as_str()));
                }
            }
        }
        seen
    }

    /// Steps no other step needs: their outputs form the job's output.
    pub fn sinks(&self) -> Vec<&str> {
        let needed: BTreeSet<&str> = self
            .steps
            .iter()
            .flat_map(|s| s.needs.iter().map(|n| n.as_str()))
            .collect();
        self.steps
            .iter()
            .map(|s| s.id.as_str())
            .filter(|id| !needed.contains(id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog(t: &str) -> Option<EffectClass> {
        match t {
            "echo" => Some(EffectClass::Pure),
            "http" => Some(EffectClass::SideEffect),
            _ => None,
        }
    }

    fn plan(v: Value) -> Plan {
        serde_json::from_value(v).unwrap()
    }

    fn paths(p: &Plan) -> Vec<String> {
        p.validate(&catalog)
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn a_good_plan_passes() {
        let p = plan(json!({"steps": [
            {"id": "a", "tool": "echo", "args": {"x": "${input.order}"}},
            {"id": "b", "tool": "echo", "needs": ["a"], "args": {"y": "${steps.a.output.x}"}},
            {"id": "c", "tool": "http", "needs": ["b"], "args": {"z": "total ${steps.a.output.x}!"}}
        ]}));
        assert!(paths(&p).is_empty(), "{:?}", paths(&p));
        assert_eq!(p.sinks(), vec!["c"]);
    }

    #[test]
    fn every_problem_is_named_by_path() {
        let p = plan(json!({"steps": [
            {"id": "a", "tool": "nope"},
            {"id": "a", "tool": "echo", "needs": ["ghost"]},
            {"id": "c", "tool": "echo", "args": {"k": ["${steps.a.output}", "${env.HOME}"]}}
        ]}));
        let e = paths(&p);
        assert!(
            e.iter()
                .any(|m| m.starts_with("plan.steps[0].tool: unknown tool")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("plan.steps[1].id: duplicate")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("plan.steps[1].needs[0]: unknown step")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("plan.steps[2].args.k[0]: reference to step \"a\", which")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.starts_with("plan.steps[2].args.k[1]:")),
            "{e:?}"
        );
    }

    #[test]
    fn cycles_are_found() {
        let p = plan(json!({"steps": [
            {"id": "a", "tool": "echo", "needs": ["c"]},
            {"id": "b", "tool": "echo", "needs": ["a"]},
            {"id": "c", "tool": "echo", "needs": ["b"]}
        ]}));
        let e = paths(&p);
        assert!(
            e.iter().any(|m| m.contains("cycle: a -> c -> b -> a")),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<Plan, _> =
            serde_json::from_value(json!({"steps": [{"id": "a", "tool": "echo", "bogus": 1}]}));
        assert!(r.is_err());
    }

    #[test]
    fn a_long_cycle_is_named_briefly() {
        let n = 50;
        let steps: Vec<Value> = (0..n)
            .map(|k| json!({"id": format!("s{k}"), "tool": "echo", "needs": [format!("s{}", (k + 1) % n)]}))
            .collect();
        let e = paths(&plan(json!({ "steps": steps })));
        assert_eq!(
            e,
            vec!["plan.steps[0].needs: cycle of 50 steps: s0 -> s1 -> s2 -> s3 -> s4 -> s5 -> s6 -> s7 -> s8 -> s9 -> … -> s0"]
        );
    }

    #[test]
    fn self_needs_are_reported_once_and_references_still_checked() {
        let p = plan(json!({"steps": [
            {"id": "a", "tool": "echo", "needs": ["a"], "args": {"x": "${steps.a.output}"}}
        ]}));
        assert_eq!(
            paths(&p),
            vec![
                "plan.steps[0].needs[0]: a step cannot need itself",
                "plan.steps[0].args.x: reference to step \"a\", which this step does not (transitively) need"
            ]
        );
    }

    #[test]
    fn step_lookup_is_indexed_and_never_stale() {
        let mut p = plan(json!({"steps": [
            {"id": "a", "tool": "echo"},
            {"id": "b", "tool": "echo", "needs": ["a"]},
            {"id": "c", "tool": "echo", "needs": ["b"]}
        ]}));
        assert_eq!(
            p.step("b").map(|s| s.needs.clone()),
            Some(vec!["a".to_string()])
        );
        assert!(p.step("zz").is_none());
        let copy = p.clone();
        assert_eq!(copy, p);
        // Changed after the index was built: lookups still see the steps as they are.
        p.steps.swap(0, 2);
        p.steps
            .push(serde_json::from_value(json!({"id": "d", "tool": "echo"})).unwrap());
        assert_eq!(p.step("a").map(|s| s.id.as_str()), Some("a"));
        assert_eq!(p.step("c").map(|s| s.id.as_str()), Some("c"));
        assert_eq!(p.step("d").map(|s| s.id.as_str()), Some("d"));
        assert_eq!(
            copy.step("c").map(|s| s.needs.clone()),
            Some(vec!["b".to_string()])
        );
        // The index is not part of the plan: equality and JSON are the steps alone.
        assert_ne!(copy, p);
        let fresh = plan(serde_json::to_value(&copy).unwrap());
        assert_eq!(fresh, copy);
        assert_eq!(
            serde_json::to_string(&fresh).unwrap(),
            serde_json::to_string(&copy).unwrap()
        );
    }

    #[test]
    fn ancestors_are_transitive() {
        let p = plan(json!({"steps": [
            {"id": "a", "tool": "echo"},
            {"id": "b", "tool": "echo", "needs": ["a"]},
            {"id": "c", "tool": "echo", "needs": ["a"]},
            {"id": "d", "tool": "echo", "needs": ["b", "c"]},
            {"id": "e", "tool": "echo"}
        ]}));
        assert_eq!(
            p.ancestors("d").into_iter().collect::<Vec<_>>(),
            vec!["a", "b", "c"]
        );
        assert!(p.ancestors("a").is_empty() && p.ancestors("nope").is_empty());
    }

    #[test]
    fn agent_steps_are_validated_by_path() {
        let p = plan(json!({"budget": {"tokens": 0}, "steps": [
            {"id": "a", "tool": "echo"},
            {"id": "b", "needs": ["a"], "retry": {"max_attempts": 2}, "timeout": "30s",
             "agent": {"provider": "p", "model": "m", "system": "from ${steps.a.output.x}",
                       "prompt": "${input.t}", "tools": ["echo", "http"], "approve": ["http"]}},
            {"id": "c", "effect": "pure", "agent": {"provider": "bad name", "model": "",
             "prompt": " ", "tools": ["nope", "echo", "echo"], "approve": ["http"],
             "max_turns": 0, "max_tokens": 0, "budget": {"tokens": 0}, "temperature": 3.5,
             "system": "${steps.a.output}"}}
        ]}));
        let e = paths(&p);
        let want = [
            "plan.steps[2]: effect and args apply to tool steps only",
            "plan.steps[2].agent.provider: provider name \"bad name\"",
            "plan.steps[2].agent.model: model name must be",
            "plan.steps[2].agent.prompt: the prompt must not be empty",
            "plan.steps[2].agent.tools[0]: unknown tool \"nope\"",
            "plan.steps[2].agent.tools[2]: tool \"echo\" is listed twice",
            "plan.steps[2].agent.approve[0]: \"http\" is not one of the agent's tools",
            "plan.steps[2].agent.max_turns: must be between 1 and 1000, got 0",
            "plan.steps[2].agent.max_tokens: must be between 1 and 1000000, got 0",
            "plan.steps[2].agent.budget.tokens: must be at least 1",
            "plan.steps[2].agent.temperature: must be between 0 and 2, got 3.5",
            "plan.steps[2].agent.system: reference to step \"a\", which this step does not",
            "plan.budget.tokens: must be at least 1",
        ];
        for w in want {
            assert!(e.iter().any(|m| m.starts_with(w)), "{w} not in {e:#?}");
        }
        assert!(!e.iter().any(|m| m.starts_with("plan.steps[1]")), "{e:#?}");
        assert_eq!(e.len(), want.len(), "{e:#?}");
        let two = plan(json!({"steps": [{"id": "x", "tool": "echo",
            "agent": {"provider": "p", "model": "m", "prompt": "q"}}]}));
        assert!(paths(&two)[0].contains("exactly one of"));
    }

    #[test]
    fn serialization_is_unchanged() {
        let text = r#"{"steps":[{"id":"a","tool":"echo","args":{"x":1},"needs":["b"],"effect":"pure","retry":{"max_attempts":2,"backoff":"fixed","initial":"0005s","max":"1m"},"timeout":"30s"},{"id":"b","wait":{"signal":"go","timeout":"1d"}},{"id":"c","sleep":"200ms"}]}"#;
        let p: Plan = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), text);
    }
}
