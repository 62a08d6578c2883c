//! Plan validation, one function per rule. The order keeps a hostile plan cheap to refuse:
//! the caps come first (plain counts; a plan over any cap gets only the cap errors), then
//! the rules of each step on its own, then the graph — `needs` resolved through one index,
//! one topological order (Kahn) that also finds a cycle, ancestor sets as bitsets — and last
//! every `${steps.X.output…}` reference, checked with one bit lookup. The cost is
//! O(steps + needs + size of args + needs·steps/64), and every message and path is bounded
//! in length whatever the plan holds.

use super::{
    DurationBounds, Plan, StepSpec, ToolCatalog, MAX_EDGES, MAX_ID_LEN, MAX_NEEDS_PER_STEP,
    MAX_REFERENCES, MAX_RETRY_ATTEMPTS, MAX_STEPS, RETRY_INITIAL_BOUNDS, RETRY_MAX_BOUNDS,
    SLEEP_BOUNDS, TOOL_TIMEOUT_BOUNDS, WAIT_TIMEOUT_BOUNDS,
};
use crate::duration::HumanDuration;
use crate::error::{quoted, shorten, PlanError};
use crate::template::{self, Reference};
use std::collections::hash_map::Entry;
use std::collections::HashMap;

pub(super) fn validate(plan: &Plan, tools: &dyn ToolCatalog) -> Vec<PlanError> {
    let mut report = Report::default();
    if !within_caps(plan, &mut report) {
        return report.errors;
    }
    if plan.steps.is_empty() {
        report.push(&["plan.steps"], "a plan needs at least one step");
        return report.errors;
    }
    let index = step_ids(plan, &mut report);
    for (i, step) in plan.steps.iter().enumerate() {
        let at = format!("plan.steps[{i}]");
        step_kind(step, &at, &mut report);
        tool(step, tools, &at, &mut report);
        signal(step, &at, &mut report);
        retry(step, &at, &mut report);
        durations(step, &at, &mut report);
        agent(step, tools, &at, &mut report);
    }
    budget(plan, &mut report);
    let graph = needs(plan, &index, &mut report);
    let order = match topological_order(&graph) {
        Ok(order) => order,
        Err(cycle) => {
            cycle_found(plan, &cycle, &mut report);
            // Ancestors are undefined on a cycle: references cannot be checked.
            return report.errors;
        }
    };
    let ancestors = Ancestors::of(&graph, &order);
    references(plan, &index, &ancestors, &mut report);
    report.errors
}

/// The longest JSON path an error carries, in bytes. A longer one (deep `args` with long
/// keys) keeps its head and its tail around a `…`.
const MAX_PATH_BYTES: usize = 160;
const PATH_HEAD_BYTES: usize = 96;
const PATH_TAIL_BYTES: usize = 60;

#[derive(Default)]
struct Report {
    errors: Vec<PlanError>,
}

impl Report {
    /// Records a problem at the path made of `parts` joined. The cost is bounded by
    /// MAX_PATH_BYTES, not by the length of the parts (a key may be most of the body).
    fn push(&mut self, parts: &[&str], message: impl Into<String>) {
        self.errors.push(PlanError {
            path: bounded_path(parts),
            message: message.into(),
        });
    }
}

fn bounded_path(parts: &[&str]) -> String {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    if total <= MAX_PATH_BYTES {
        return parts.concat();
    }
    let mut head = String::with_capacity(MAX_PATH_BYTES + 4);
    for part in parts {
        let room = PATH_HEAD_BYTES - head.len();
        if part.len() >= room {
            head.push_str(&part[..floor_char_boundary(part, room)]);
            break;
        }
        head.push_str(part);
    }
    let mut tail: Vec<&str> = Vec::new();
    let mut tail_len = 0;
    for part in parts.iter().rev() {
        let room = PATH_TAIL_BYTES - tail_len;
        if part.len() >= room {
            tail.push(&part[ceil_char_boundary(part, part.len() - room)..]);
            break;
        }
        tail.push(part);
        tail_len += part.len();
    }
    head.push('…');
    for part in tail.iter().rev() {
        head.push_str(part);
    }
    head
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// The caps, checked by counting alone. Returns false (having reported each cap exceeded)
/// when the plan must be refused without further work.
fn within_caps(plan: &Plan, report: &mut Report) -> bool {
    if plan.steps.len() > MAX_STEPS {
        report.push(
            &["plan.steps"],
            format!(
                "at most {MAX_STEPS} steps are allowed, got {}",
                plan.steps.len()
            ),
        );
        return false;
    }
    let mut edges = 0;
    for (i, step) in plan.steps.iter().enumerate() {
        edges += step.needs.len();
        if step.needs.len() > MAX_NEEDS_PER_STEP {
            report.push(
                &[&format!("plan.steps[{i}].needs")],
                format!(
                    "at most {MAX_NEEDS_PER_STEP} needs per step are allowed, got {}",
                    step.needs.len()
                ),
            );
        }
    }
    if edges > MAX_EDGES {
        report.push(
            &["plan.steps"],
            format!("at most {MAX_EDGES} needs in all steps together are allowed, got {edges}"),
        );
    }
    let mut refs = 0;
    for step in &plan.steps {
        let (_, templated) = templated(step);
        template::visit_strings(&templated, &mut |_, text| {
            refs += template::count_references(text)
        });
    }
    if refs > MAX_REFERENCES {
        report.push(
            &["plan.steps"],
            format!(
                "at most {MAX_REFERENCES} references ${{…}} in the args of all steps together \
                 are allowed, got {refs}"
            ),
        );
    }
    report.errors.is_empty()
}

fn is_id(s: &str, extra: &[char]) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || extra.contains(&c))
}

/// Ids are well-formed and unique. Returns id → position of its first step.
fn step_ids<'p>(plan: &'p Plan, report: &mut Report) -> HashMap<&'p str, usize> {
    let mut index = HashMap::with_capacity(plan.steps.len());
    for (i, step) in plan.steps.iter().enumerate() {
        let at = format!("plan.steps[{i}].id");
        if !is_id(&step.id, &[]) {
            report.push(
                &[&at],
                format!(
                    "step id {} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9_-]",
                    quoted(&step.id)
                ),
            );
        }
        match index.entry(step.id.as_str()) {
            Entry::Vacant(v) => {
                v.insert(i);
            }
            Entry::Occupied(first) => report.push(
                &[&at],
                format!(
                    "duplicate step id {} (first at plan.steps[{}])",
                    quoted(&step.id),
                    first.get()
                ),
            ),
        }
    }
    index
}

/// The strings of a step that may hold references, as one JSON value, and the path it
/// sits at: a tool step's `args`; an agent step's `prompt` and `system`.
fn templated(step: &StepSpec) -> (&'static str, std::borrow::Cow<'_, serde_json::Value>) {
    match &step.agent {
        Some(a) => {
            let mut o = serde_json::Map::new();
            o.insert("prompt".into(), a.prompt.clone().into());
            if let Some(system) = &a.system {
                o.insert("system".into(), system.clone().into());
            }
            (
                ".agent",
                std::borrow::Cow::Owned(serde_json::Value::Object(o)),
            )
        }
        None => (".args", std::borrow::Cow::Borrowed(&step.args)),
    }
}

/// Exactly one of tool, wait, sleep, agent; the tool-only fields only on tool steps
/// (`retry` and `timeout` also on agent steps, for their calls).
fn step_kind(step: &StepSpec, at: &str, report: &mut Report) {
    let kinds = [
        step.tool.is_some(),
        step.wait.is_some(),
        step.sleep.is_some(),
        step.agent.is_some(),
    ];
    if kinds.iter().filter(|set| **set).count() != 1 {
        report.push(
            &[at],
            "a step must have exactly one of \"tool\", \"wait\", \"sleep\", \"agent\"",
        );
    }
    if step.agent.is_some() && (step.effect.is_some() || !step.args.is_null()) {
        report.push(
            &[at],
            "effect and args apply to tool steps only (an agent's tools keep their own effect)",
        );
    }
    let tool_only = step.retry.is_some()
        || step.effect.is_some()
        || step.timeout.is_some()
        || !step.args.is_null();
    if (step.wait.is_some() || step.sleep.is_some()) && tool_only {
        report.push(
            &[at],
            "retry, effect, timeout and args apply to tool steps only (a wait has wait.timeout)",
        );
    }
}

fn tool(step: &StepSpec, tools: &dyn ToolCatalog, at: &str, report: &mut Report) {
    if let Some(name) = &step.tool {
        if tools.effect_class(name).is_none() {
            report.push(&[at, ".tool"], format!("unknown tool {}", quoted(name)));
        }
    }
}

/// An agent step's spec: provider and model named, tools known (and each once), approvals
/// among its tools, turns, tokens and temperature within bounds.
fn agent(step: &StepSpec, tools: &dyn ToolCatalog, at: &str, report: &mut Report) {
    use crate::agent::{
        MAX_AGENT_TOOLS, MAX_AGENT_TURNS, MAX_MAX_TOKENS, MAX_MODEL_NAME, MAX_PROVIDER_NAME,
    };
    let Some(a) = &step.agent else {
        return;
    };
    if !is_id(&a.provider, &['.']) || a.provider.len() > MAX_PROVIDER_NAME {
        report.push(
            &[at, ".agent.provider"],
            format!(
                "provider name {} must be 1-{MAX_PROVIDER_NAME} characters of [A-Za-z0-9_.-]",
                quoted(&a.provider)
            ),
        );
    }
    if a.model.trim().is_empty() || a.model.len() > MAX_MODEL_NAME {
        report.push(
            &[at, ".agent.model"],
            format!("model name must be 1-{MAX_MODEL_NAME} bytes"),
        );
    }
    if a.prompt.trim().is_empty() {
        report.push(&[at, ".agent.prompt"], "the prompt must not be empty");
    }
    if a.tools.len() > MAX_AGENT_TOOLS {
        report.push(
            &[at, ".agent.tools"],
            format!("at most {MAX_AGENT_TOOLS} tools, got {}", a.tools.len()),
        );
    }
    for (i, name) in a.tools.iter().enumerate() {
        let path = format!(".agent.tools[{i}]");
        if tools.effect_class(name).is_none() {
            report.push(&[at, &path], format!("unknown tool {}", quoted(name)));
        } else if a.tools[..i].contains(name) {
            report.push(
                &[at, &path],
                format!("tool {} is listed twice", quoted(name)),
            );
        }
    }
    for (i, name) in a.approve.iter().enumerate() {
        if !a.tools.contains(name) {
            report.push(
                &[at, &format!(".agent.approve[{i}]")],
                format!("{} is not one of the agent's tools", quoted(name)),
            );
        }
    }
    if let Some(n) = a.max_turns {
        if !(1..=MAX_AGENT_TURNS).contains(&n) {
            report.push(
                &[at, ".agent.max_turns"],
                format!("must be between 1 and {MAX_AGENT_TURNS}, got {n}"),
            );
        }
    }
    if let Some(n) = a.max_tokens {
        if !(1..=MAX_MAX_TOKENS).contains(&n) {
            report.push(
                &[at, ".agent.max_tokens"],
                format!("must be between 1 and {MAX_MAX_TOKENS}, got {n}"),
            );
        }
    }
    if a.budget.is_some_and(|b| b.tokens == 0) {
        report.push(&[at, ".agent.budget.tokens"], "must be at least 1");
    }
    if let Some(t) = a.temperature {
        if !(0.0..=2.0).contains(&t) {
            report.push(
                &[at, ".agent.temperature"],
                format!("must be between 0 and 2, got {t}"),
            );
        }
    }
}

/// The plan's job budget, if any, is at least one token.
fn budget(plan: &Plan, report: &mut Report) {
    if plan.budget.is_some_and(|b| b.tokens == 0) {
        report.push(&["plan.budget.tokens"], "must be at least 1");
    }
}

fn signal(step: &StepSpec, at: &str, report: &mut Report) {
    if let Some(wait) = &step.wait {
        if !is_id(&wait.signal, &['.']) {
            report.push(
                &[at, ".wait.signal"],
                format!(
                    "signal name {} must be 1-{MAX_ID_LEN} characters of [A-Za-z0-9_.-]",
                    quoted(&wait.signal)
                ),
            );
        }
    }
}

fn retry(step: &StepSpec, at: &str, report: &mut Report) {
    let Some(retry) = &step.retry else {
        return;
    };
    if !(1..=MAX_RETRY_ATTEMPTS).contains(&retry.max_attempts) {
        report.push(
            &[at, ".retry.max_attempts"],
            format!(
                "must be between 1 and {MAX_RETRY_ATTEMPTS}, got {}",
                retry.max_attempts
            ),
        );
    }
    let initial = retry.initial.as_ref();
    let max = retry.max.as_ref();
    let initial_ok = within(
        initial,
        RETRY_INITIAL_BOUNDS,
        &[at, ".retry.initial"],
        report,
    );
    let max_ok = within(max, RETRY_MAX_BOUNDS, &[at, ".retry.max"], report);
    if let (Some(initial), Some(max), true, true) = (initial, max, initial_ok, max_ok) {
        if max.as_millis() < initial.as_millis() {
            report.push(
                &[at, ".retry.max"],
                format!(
                    "must not be shorter than retry.initial ({}), got {}",
                    quoted(&initial.text),
                    quoted(&max.text)
                ),
            );
        }
    }
}

fn durations(step: &StepSpec, at: &str, report: &mut Report) {
    within(
        step.timeout.as_ref(),
        TOOL_TIMEOUT_BOUNDS,
        &[at, ".timeout"],
        report,
    );
    within(step.sleep.as_ref(), SLEEP_BOUNDS, &[at, ".sleep"], report);
    if let Some(wait) = &step.wait {
        within(
            wait.timeout.as_ref(),
            WAIT_TIMEOUT_BOUNDS,
            &[at, ".wait.timeout"],
            report,
        );
    }
}

/// Whether an optional duration is absent or within its bounds; reports it if not.
fn within(
    d: Option<&HumanDuration>,
    bounds: DurationBounds,
    path: &[&str],
    report: &mut Report,
) -> bool {
    match d {
        Some(d) if !bounds.contains(d) => {
            report.push(
                path,
                format!(
                    "must be between {} and {}, got {}",
                    bounds.min,
                    bounds.max,
                    quoted(&d.text)
                ),
            );
            false
        }
        _ => true,
    }
}

/// Every `needs` entry names another step. Returns the graph: for each step, the positions
/// of the steps it needs (unknown names and self-needs are reported and left out).
fn needs(plan: &Plan, index: &HashMap<&str, usize>, report: &mut Report) -> Vec<Vec<usize>> {
    let mut graph = Vec::with_capacity(plan.steps.len());
    for (i, step) in plan.steps.iter().enumerate() {
        let mut resolved = Vec::with_capacity(step.needs.len());
        for (j, name) in step.needs.iter().enumerate() {
            match index.get(name.as_str()) {
                None => report.push(
                    &[&format!("plan.steps[{i}].needs[{j}]")],
                    format!("unknown step {}", quoted(name)),
                ),
                Some(_) if name == &step.id => report.push(
                    &[&format!("plan.steps[{i}].needs[{j}]")],
                    "a step cannot need itself",
                ),
                Some(&n) => resolved.push(n),
            }
        }
        graph.push(resolved);
    }
    graph
}

/// Kahn's algorithm: the steps in an order where each comes after everything it needs, or,
/// if there is a cycle, one cycle as positions (first == last).
fn topological_order(graph: &[Vec<usize>]) -> Result<Vec<usize>, Vec<usize>> {
    let mut unmet: Vec<usize> = graph.iter().map(Vec::len).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); graph.len()];
    for (step, needs) in graph.iter().enumerate() {
        for &n in needs {
            dependents[n].push(step);
        }
    }
    let mut ready: Vec<usize> = (0..graph.len()).filter(|&s| unmet[s] == 0).collect();
    let mut order = Vec::with_capacity(graph.len());
    while let Some(step) = ready.pop() {
        order.push(step);
        for &d in &dependents[step] {
            unmet[d] -= 1;
            if unmet[d] == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() == graph.len() {
        Ok(order)
    } else {
        Err(cycle_among_unmet(graph, &unmet))
    }
}

/// Every step Kahn left behind (`unmet > 0`) needs another step left behind, so following
/// the first such need from the first such step must come back to a step already on the
/// walk: that loop is the cycle. It is the cycle a depth-first search in plan order finds.
fn cycle_among_unmet(graph: &[Vec<usize>], unmet: &[usize]) -> Vec<usize> {
    let left = |s: usize| unmet[s] > 0;
    let mut on_walk = vec![usize::MAX; graph.len()];
    let mut walk = Vec::new();
    let mut step = (0..graph.len()).find(|&s| left(s));
    while let Some(s) = step {
        if on_walk[s] != usize::MAX {
            let mut cycle = walk[on_walk[s]..].to_vec();
            cycle.push(s);
            return cycle;
        }
        on_walk[s] = walk.len();
        walk.push(s);
        step = graph[s].iter().copied().find(|&n| left(n));
    }
    walk
}

/// At most this many steps of a cycle are named in its message.
const MAX_CYCLE_SHOWN: usize = 10;

fn cycle_found(plan: &Plan, cycle: &[usize], report: &mut Report) {
    let Some(&first) = cycle.first() else {
        return;
    };
    let id = |s: usize| shorten(&plan.steps[s].id).into_owned();
    let mut names: Vec<String> = cycle.iter().take(MAX_CYCLE_SHOWN).map(|&s| id(s)).collect();
    let steps = cycle.len().saturating_sub(1);
    let message = if cycle.len() > MAX_CYCLE_SHOWN {
        names.push("…".into());
        names.push(id(first));
        format!("cycle of {steps} steps: {}", names.join(" -> "))
    } else {
        format!("cycle: {}", names.join(" -> "))
    };
    report.push(&[&format!("plan.steps[{first}].needs")], message);
}

/// For each step, the set of steps it needs directly or transitively, as a bitset of
/// positions: `words` u64 per step, one flat vector.
struct Ancestors {
    words: usize,
    bits: Vec<u64>,
}

impl Ancestors {
    fn of(graph: &[Vec<usize>], order: &[usize]) -> Ancestors {
        let words = graph.len().div_ceil(64);
        let mut bits = vec![0u64; graph.len() * words];
        // In topological order every needed step's set is complete before it is merged.
        for &step in order {
            for &n in &graph[step] {
                for w in 0..words {
                    bits[step * words + w] |= bits[n * words + w];
                }
                bits[step * words + n / 64] |= 1 << (n % 64);
            }
        }
        Ancestors { words, bits }
    }

    fn contains(&self, step: usize, ancestor: usize) -> bool {
        self.bits[step * self.words + ancestor / 64] >> (ancestor % 64) & 1 == 1
    }
}

/// Every reference in the args is well-formed and reaches only the input or a step this
/// step transitively needs.
fn references(
    plan: &Plan,
    index: &HashMap<&str, usize>,
    ancestors: &Ancestors,
    report: &mut Report,
) {
    for (i, step) in plan.steps.iter().enumerate() {
        let (field, templated) = templated(step);
        let at = format!("plan.steps[{i}]{field}");
        template::visit_strings(&templated, &mut |json_path, text| {
            for reference in template::references(text) {
                let problem = match reference {
                    Ok(Reference::Input(_)) => None,
                    Ok(Reference::Step { step: target, .. }) => match index.get(target.as_str()) {
                        None => Some(format!("reference to unknown step {}", quoted(&target))),
                        Some(&t) if !ancestors.contains(i, t) => Some(format!(
                            "reference to step {}, which this step does not (transitively) need",
                            quoted(&target)
                        )),
                        Some(_) => None,
                    },
                    Err(message) => Some(message),
                };
                if let Some(message) = problem {
                    report.push(&[&at, json_path], message);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_keep_both_ends_on_char_boundaries() {
        assert_eq!(
            bounded_path(&["plan.steps[1]", ".tool"]),
            "plan.steps[1].tool"
        );
        let key = "ü".repeat(100_000);
        let p = bounded_path(&["plan.steps[7].args", ".", &key, "[3]"]);
        assert!(p.starts_with("plan.steps[7].args.üü"), "{p}");
        assert!(p.ends_with("üü[3]"), "{p}");
        assert!(p.contains('…') && p.len() <= MAX_PATH_BYTES + 8, "{p}");
    }

    #[test]
    fn kahn_orders_and_finds_the_dfs_cycle() {
        let dag = vec![vec![], vec![0], vec![0, 1]];
        let order = topological_order(&dag).unwrap();
        let pos = |s: usize| order.iter().position(|&x| x == s).unwrap();
        assert!(pos(0) < pos(1) && pos(1) < pos(2));
        // 0 needs 3 (clean), 2; 1 needs 0; 2 needs 1; 3 needs nothing.
        let cyclic = vec![vec![3, 2], vec![0], vec![1], vec![]];
        assert_eq!(topological_order(&cyclic), Err(vec![0, 2, 1, 0]));
    }

    #[test]
    fn ancestor_bits_are_transitive_and_exact() {
        // 70 steps in a chain crosses a word boundary.
        let graph: Vec<Vec<usize>> = (0..70)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        let order = topological_order(&graph).unwrap();
        let a = Ancestors::of(&graph, &order);
        assert!(a.contains(69, 0) && a.contains(69, 68) && a.contains(64, 63));
        assert!(!a.contains(63, 64) && !a.contains(5, 5) && !a.contains(0, 1));
    }
}
