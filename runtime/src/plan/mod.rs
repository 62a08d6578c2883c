//! The plan model (a DAG of steps) and its validation. Validation is total: it reports
//! every problem, each located by its JSON path, and a plan that passes can be run without
//! any further checks (unique ids, `needs` exist, no cycles, known tools, references only
//! to the input and to steps the referring step transitively needs).

use crate::duration::HumanDuration;
use crate::error::PlanError;
use crate::template;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// How safe a tool call is to repeat (DESIGN §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// A `wait` step: park until a signal with this name arrives (an approval is a signal).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
        self.sleep.as_ref().map(StepKind::Sleep)
    }
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry.clone().unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub steps: Vec<StepSpec>,
}

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

/// Upper bounds that keep a hostile plan from costing us memory or time.
pub const MAX_STEPS: usize = 1_000;
pub const MAX_ID_LEN: usize = 128;

impl Plan {
    pub fn step(&self, id: &str) -> Option<&StepSpec> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The effect class a step runs with: its own `effect`, else its tool's.
    pub fn effect_of(&self, step: &StepSpec, tools: &dyn ToolCatalog) -> EffectClass {
        step.effect
            .or_else(|| step.tool.as_deref().and_then(|t| tools.effect_class(t)))
            .unwrap_or(EffectClass::SideEffect)
    }

    /// Every problem with this plan, each named by its JSON path (prefixed `plan.steps[i]`).
    /// Empty means the plan is runnable.
    pub fn validate(&self, tools: &dyn ToolCatalog) -> Vec<PlanError> {
        let mut errs = Vec::new();
        let err = |errs: &mut Vec<PlanError>, path: String, message: String| {
            errs.push(PlanError { path, message })
        };
        if self.steps.is_empty() {
            err(
                &mut errs,
                "plan.steps".into(),
                "a plan needs at least one step".into(),
            );
        }
        if self.steps.len() > MAX_STEPS {
            err(
                &mut errs,
                "plan.steps".into(),
                format!(
                    "at most {MAX_STEPS} steps are allowed, got {}",
                    self.steps.len()
                ),
            );
            return errs;
        }
        let mut index: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            let p = format!("plan.steps[{i}]");
            let id_ok = !s.id.is_empty()
                && s.id.len() <= MAX_ID_LEN
                && s.id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !id_ok {
                err(
                    &mut errs,
                    format!("{p}.id"),
                    format!(
                        "step id {:?} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9_-]",
                        s.id
                    ),
                );
            }
            if index.insert(s.id.as_str(), i).is_some() {
                err(
                    &mut errs,
                    format!("{p}.id"),
                    format!("duplicate step id {:?}", s.id),
                );
            }
            let kinds = [s.tool.is_some(), s.wait.is_some(), s.sleep.is_some()]
                .iter()
                .filter(|b| **b)
                .count();
            if kinds != 1 {
                err(
                    &mut errs,
                    p.clone(),
                    "a step must have exactly one of \"tool\", \"wait\", \"sleep\"".into(),
                );
            }
            if let Some(w) = &s.wait {
                let ok = !w.signal.is_empty()
                    && w.signal.len() <= MAX_ID_LEN
                    && w.signal
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
                if !ok {
                    err(
                        &mut errs,
                        format!("{p}.wait.signal"),
                        format!(
                            "signal name {:?} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9_.-]",
                            w.signal
                        ),
                    );
                }
            }
            if (s.wait.is_some() || s.sleep.is_some())
                && (s.retry.is_some()
                    || s.effect.is_some()
                    || s.timeout.is_some()
                    || !s.args.is_null())
            {
                err(
                    &mut errs,
                    p.clone(),
                    "retry, effect, timeout and args apply to tool steps only (a wait has wait.timeout)".into(),
                );
            }
            if let Some(tool) = &s.tool {
                if tools.effect_class(tool).is_none() {
                    err(
                        &mut errs,
                        format!("{p}.tool"),
                        format!("unknown tool {tool:?}"),
                    );
                }
            }
            if let Some(r) = &s.retry {
                if r.max_attempts == 0 || r.max_attempts > 100 {
                    err(
                        &mut errs,
                        format!("{p}.retry.max_attempts"),
                        "must be between 1 and 100".into(),
                    );
                }
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            for (j, n) in s.needs.iter().enumerate() {
                if !index.contains_key(n.as_str()) {
                    err(
                        &mut errs,
                        format!("plan.steps[{i}].needs[{j}]"),
                        format!("unknown step {n:?}"),
                    );
                } else if n == &s.id {
                    err(
                        &mut errs,
                        format!("plan.steps[{i}].needs[{j}]"),
                        "a step cannot need itself".into(),
                    );
                }
            }
        }
        if let Some(cycle) = self.find_cycle(&index) {
            err(
                &mut errs,
                format!("plan.steps[{}].needs", index[cycle[0].as_str()]),
                format!("cycle: {}", cycle.join(" -> ")),
            );
            return errs;
        }
        // References may only reach the input and steps this step transitively needs.
        for (i, s) in self.steps.iter().enumerate() {
            let ancestors = self.ancestors(&s.id);
            template::visit_strings(&s.args, &mut |json_path, text| {
                for r in template::references(text) {
                    let path = format!("plan.steps[{i}].args{json_path}");
                    match r {
                        Ok(template::Reference::Input(_)) => {}
                        Ok(template::Reference::Step { step, .. }) => {
                            if !index.contains_key(step.as_str()) {
                                err(
                                    &mut errs,
                                    path,
                                    format!("reference to unknown step {step:?}"),
                                );
                            } else if !ancestors.contains(step.as_str()) {
                                err(
                                    &mut errs,
                                    path,
                                    format!("reference to step {step:?}, which this step does not (transitively) need"),
                                );
                            }
                        }
                        Err(m) => err(&mut errs, path, m),
                    }
                }
            });
        }
        errs
    }

    fn find_cycle(&self, index: &BTreeMap<&str, usize>) -> Option<Vec<String>> {
        // Iterative three-colour DFS; returns the ids on the first cycle found.
        let n = self.steps.len();
        let mut colour = vec![0u8; n];
        for root in 0..n {
            if colour[root] != 0 {
                continue;
            }
            let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
            colour[root] = 1;
            while let Some(&mut (node, ref mut next)) = stack.last_mut() {
                let needs = &self.steps[node].needs;
                if *next < needs.len() {
                    let dep = needs[*next].as_str();
                    *next += 1;
                    if let Some(&d) = index.get(dep) {
                        if colour[d] == 1 {
                            let start = stack.iter().position(|(x, _)| *x == d).unwrap_or(0);
                            let mut ids: Vec<String> = stack[start..]
                                .iter()
                                .map(|(x, _)| self.steps[*x].id.clone())
                                .collect();
                            ids.push(self.steps[d].id.clone());
                            return Some(ids);
                        }
                        if colour[d] == 0 {
                            colour[d] = 1;
                            stack.push((d, 0));
                        }
                    }
                } else {
                    colour[node] = 2;
                    stack.pop();
                }
            }
        }
        None
    }

    /// All steps `id` needs, directly or transitively.
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
}
