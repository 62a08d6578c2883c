//! The documented caps and duration bounds of a plan (docs/plans.md), each tried at its
//! limit and just past it, and the cost of validating the largest plans a client can send.

use aetheris_runtime::duration::{DAY_MS, HOUR_MS};
use aetheris_runtime::plan::{
    DurationBounds, Plan, MAX_EDGES, MAX_ID_LEN, MAX_NEEDS_PER_STEP, MAX_REFERENCES,
    MAX_RETRY_ATTEMPTS, MAX_STEPS, RETRY_INITIAL_BOUNDS, RETRY_MAX_BOUNDS, SLEEP_BOUNDS,
    TOOL_TIMEOUT_BOUNDS, WAIT_TIMEOUT_BOUNDS,
};
use aetheris_runtime::testkit::{
    catalog, dense_plan, hostile_dense_plan, max_legal_dense_plan, submission,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn errors(plan: Value) -> Vec<String> {
    let plan: Plan = serde_json::from_value(plan).expect("plan parses");
    plan.validate(&catalog)
        .into_iter()
        .map(|e| e.to_string())
        .collect()
}

fn one_step(step: Value) -> Value {
    json!({"steps": [step]})
}

/// `at_cap` validates; `over` fails with exactly the errors that start with `want`.
fn assert_cap(name: &str, at_cap: Value, over: Value, want: &[&str]) {
    let e = errors(at_cap);
    assert!(e.is_empty(), "{name} at the cap: {e:?}");
    let e = errors(over);
    assert_eq!(e.len(), want.len(), "{name} over the cap: {e:?}");
    for (got, want) in e.iter().zip(want) {
        assert!(
            got.starts_with(want),
            "{name}: {got:?} should start with {want:?}"
        );
    }
}

fn steps_without_needs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|k| json!({"id": format!("b{k}"), "tool": "echo"}))
        .collect()
}

#[test]
fn max_steps() {
    assert_cap(
        "MAX_STEPS",
        dense_plan(MAX_STEPS, 0, 0, 4),
        dense_plan(MAX_STEPS + 1, 0, 0, 4),
        &["plan.steps: at most 1000 steps are allowed, got 1001"],
    );
}

#[test]
fn max_needs_per_step() {
    // Step k needs every earlier step: the last one needs exactly k.
    assert_cap(
        "MAX_NEEDS_PER_STEP",
        dense_plan(MAX_NEEDS_PER_STEP + 1, MAX_NEEDS_PER_STEP, 1, 4),
        dense_plan(MAX_NEEDS_PER_STEP + 2, MAX_NEEDS_PER_STEP + 1, 1, 4),
        &["plan.steps[101].needs: at most 100 needs per step are allowed, got 101"],
    );
}

#[test]
fn max_edges() {
    // 100 independent steps, then steps that each need all 100: 10,000 needs at the cap.
    let with_needers = |needers: usize, extra: usize| {
        let mut steps = steps_without_needs(100);
        let all: Vec<String> = (0..100).map(|k| format!("b{k}")).collect();
        for k in 0..needers {
            steps.push(json!({"id": format!("n{k}"), "tool": "echo", "needs": all}));
        }
        for k in 0..extra {
            steps.push(json!({"id": format!("x{k}"), "tool": "echo", "needs": ["b0"]}));
        }
        json!({ "steps": steps })
    };
    assert_eq!(MAX_EDGES, 100 * 100);
    assert_cap(
        "MAX_EDGES",
        with_needers(100, 0),
        with_needers(100, 1),
        &["plan.steps: at most 10000 needs in all steps together are allowed, got 10001"],
    );
}

#[test]
fn max_references_counts_across_steps() {
    let refs = |first: usize, second: usize| {
        json!({"steps": [
            {"id": "a", "tool": "echo", "args": {"list": vec!["${input.x}"; first]}},
            {"id": "b", "tool": "echo", "args": {"t": "${input.y} and ${input.z}".repeat(second / 2)}}
        ]})
    };
    assert_eq!(MAX_REFERENCES, 10_000);
    assert_cap(
        "MAX_REFERENCES",
        refs(9_000, 1_000),
        refs(9_002, 1_000),
        &["plan.steps: at most 10000 references ${…} in the args of all steps together are allowed, got 10002"],
    );
}

#[test]
fn max_id_len_for_step_ids_and_signals() {
    let id = |n: usize| one_step(json!({"id": "i".repeat(n), "tool": "echo"}));
    assert_cap(
        "MAX_ID_LEN (id)",
        id(MAX_ID_LEN),
        id(MAX_ID_LEN + 1),
        &["plan.steps[0].id: step id \"iiii"],
    );
    let signal = |n: usize| one_step(json!({"id": "w", "wait": {"signal": "s".repeat(n)}}));
    assert_cap(
        "MAX_ID_LEN (signal)",
        signal(MAX_ID_LEN),
        signal(MAX_ID_LEN + 1),
        &["plan.steps[0].wait.signal: signal name \"ssss"],
    );
}

#[test]
fn retry_max_attempts() {
    let attempts =
        |n: u32| one_step(json!({"id": "a", "tool": "echo", "retry": {"max_attempts": n}}));
    assert_cap(
        "max_attempts",
        attempts(MAX_RETRY_ATTEMPTS),
        attempts(MAX_RETRY_ATTEMPTS + 1),
        &["plan.steps[0].retry.max_attempts: must be between 1 and 100, got 101"],
    );
    assert_cap(
        "max_attempts",
        attempts(1),
        attempts(0),
        &["plan.steps[0].retry.max_attempts: must be between 1 and 100, got 0"],
    );
}

/// A one-step plan's step with the duration field under test set to the given text.
type StepWith = fn(&str) -> Value;

/// Every duration field of a step: where it sits and its bounds.
fn duration_fields() -> Vec<(&'static str, DurationBounds, StepWith)> {
    vec![
        (
            "plan.steps[0].timeout",
            TOOL_TIMEOUT_BOUNDS,
            |d| json!({"id": "a", "tool": "echo", "timeout": d}),
        ),
        (
            "plan.steps[0].sleep",
            SLEEP_BOUNDS,
            |d| json!({"id": "a", "sleep": d}),
        ),
        (
            "plan.steps[0].wait.timeout",
            WAIT_TIMEOUT_BOUNDS,
            |d| json!({"id": "a", "wait": {"signal": "go", "timeout": d}}),
        ),
        (
            "plan.steps[0].retry.initial",
            RETRY_INITIAL_BOUNDS,
            |d| json!({"id": "a", "tool": "echo", "retry": {"initial": d}}),
        ),
        (
            "plan.steps[0].retry.max",
            RETRY_MAX_BOUNDS,
            |d| json!({"id": "a", "tool": "echo", "retry": {"max": d}}),
        ),
    ]
}

#[test]
fn documented_duration_bounds() {
    let documented = [
        (TOOL_TIMEOUT_BOUNDS, 24 * HOUR_MS, "24h"),
        (SLEEP_BOUNDS, 365 * DAY_MS, "365d"),
        (WAIT_TIMEOUT_BOUNDS, 365 * DAY_MS, "365d"),
        (RETRY_INITIAL_BOUNDS, HOUR_MS, "1h"),
        (RETRY_MAX_BOUNDS, 24 * HOUR_MS, "24h"),
    ];
    for (bounds, max_ms, max) in documented {
        assert_eq!((bounds.min_ms, bounds.min), (1, "1ms"));
        assert_eq!((bounds.max_ms, bounds.max), (max_ms, max));
        // The text of each bound means exactly its number.
        let parsed = aetheris_runtime::duration::HumanDuration::parse(bounds.max).unwrap();
        assert_eq!(parsed.as_millis(), bounds.max_ms);
    }
}

#[test]
fn every_duration_bound() {
    for (path, bounds, step) in duration_fields() {
        let over = format!("{}ms", bounds.max_ms + 1);
        let cases: Vec<(String, Option<String>)> = vec![
            (
                "0s".into(),
                Some(format!(
                    "{path}: must be between 1ms and {}, got \"0s\"",
                    bounds.max
                )),
            ),
            (
                "0ms".into(),
                Some(format!(
                    "{path}: must be between 1ms and {}, got \"0ms\"",
                    bounds.max
                )),
            ),
            (bounds.min.into(), None),
            ("1s".into(), None),
            (bounds.max.into(), None),
            (format!("{}ms", bounds.max_ms), None),
            (
                over.clone(),
                Some(format!(
                    "{path}: must be between 1ms and {}, got \"{over}\"",
                    bounds.max
                )),
            ),
        ];
        for (text, want) in cases {
            let got = errors(one_step(step(&text)));
            match want {
                None => assert!(got.is_empty(), "{path} = {text}: {got:?}"),
                Some(w) => assert_eq!(got, vec![w], "{path} = {text}"),
            }
        }
        for absurd in ["18446744073709551615ms", "99999999999999999999d", "36501d"] {
            let r: Result<Plan, _> = serde_json::from_value(one_step(step(absurd)));
            let e = r.expect_err(absurd).to_string();
            assert!(
                e.contains("longer than 36500d (100 years)"),
                "{path} = {absurd}: {e}"
            );
        }
    }
}

#[test]
fn retry_max_is_not_shorter_than_initial() {
    let retry = |initial: &str, max: &str| {
        one_step(json!({"id": "a", "tool": "echo", "retry": {"initial": initial, "max": max}}))
    };
    assert!(errors(retry("1s", "1s")).is_empty());
    assert!(errors(retry("1s", "1m")).is_empty());
    assert_eq!(
        errors(retry("2s", "1500ms")),
        vec!["plan.steps[0].retry.max: must not be shorter than retry.initial (\"2s\"), got \"1500ms\""]
    );
    // Out of bounds is reported once, not compared as well.
    assert_eq!(errors(retry("2h", "1s")).len(), 1);
}

#[test]
fn messages_quote_at_most_64_characters_of_user_text() {
    let long = "x".repeat(100_000);
    let other = "y".repeat(100_000);
    let plan = json!({"steps": [
        {"id": long, "tool": long},
        {"id": "b", "tool": "echo", "needs": [long, other], "args": {
            long.clone(): [format!("${{steps.{other}.output}}"), format!("${{{long}}}"), format!("${{input.{long}")]
        }},
        {"id": "c", "wait": {"signal": long}}
    ]});
    let plan: Plan = serde_json::from_value(plan).unwrap();
    let e = plan.validate(&catalog);
    assert_eq!(e.len(), 7, "{e:?}");
    for err in &e {
        assert!(
            err.message.len() < 250,
            "{} bytes: {}",
            err.message.len(),
            err.message
        );
        assert!(
            err.path.len() < 200,
            "{} bytes: {}",
            err.path.len(),
            err.path
        );
        assert!(err.to_string().contains('…'), "{err}");
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Submission {
    plan: Plan,
    #[allow(dead_code)]
    input: Value,
}

/// Time to parse a submission and to validate its plan.
struct Took {
    parse: Duration,
    validate: Duration,
}

impl Took {
    fn total(&self) -> Duration {
        self.parse + self.validate
    }
}

impl std::fmt::Display for Took {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "parse {:?} + validate {:?} = {:?}",
            self.parse,
            self.validate,
            self.total()
        )
    }
}

/// Parses a submission body into a plan and validates it, as the gateway does.
fn parse_and_validate(body: &[u8]) -> (Vec<String>, Took) {
    let t = Instant::now();
    let sub: Submission = serde_json::from_slice(body).expect("submission parses");
    let parse = t.elapsed();
    let t = Instant::now();
    let errs = sub.plan.validate(&catalog);
    let validate = t.elapsed();
    let errs = errs.into_iter().map(|e| e.to_string()).collect();
    (errs, Took { parse, validate })
}

#[test]
fn dense_hostile_plan_is_refused_by_the_caps() {
    // Each of 500 steps needs all earlier ones: 124,750 needs, about 1 MB.
    let body = submission(&hostile_dense_plan(500, 500));
    let (e, took) = parse_and_validate(&body);
    println!(
        "hostile 500x500 plan: {} bytes, {} errors, {}",
        body.len(),
        e.len(),
        took
    );
    let over_per_step = 500 - (MAX_NEEDS_PER_STEP + 1);
    assert_eq!(e.len(), over_per_step + 1, "only the caps are reported");
    assert!(
        e[0].starts_with("plan.steps[101].needs: at most 100 needs per step are allowed, got 101"),
        "{}",
        e[0]
    );
    assert_eq!(
        e.last().map(String::as_str),
        Some("plan.steps: at most 10000 needs in all steps together are allowed, got 124750")
    );
}

#[test]
fn maximal_legal_dense_plan_validates_fast() {
    let plan = max_legal_dense_plan();
    let body = submission(&plan);
    assert!(
        (900 * 1024..=1024 * 1024).contains(&body.len()),
        "about 1 MiB, under the gateway's body limit: {} bytes",
        body.len()
    );
    let steps = plan["steps"].as_array().unwrap();
    let edges: usize = steps
        .iter()
        .map(|s| s["needs"].as_array().unwrap().len())
        .sum();
    assert_eq!(steps.len(), MAX_STEPS);
    assert!(
        edges <= MAX_EDGES && edges > MAX_EDGES * 99 / 100,
        "{edges}"
    );
    let (e, took) = parse_and_validate(&body);
    println!(
        "maximal legal dense plan: {} steps, {edges} needs, {} bytes: {}",
        steps.len(),
        body.len(),
        took
    );
    assert!(e.is_empty(), "{:?}", &e[..e.len().min(5)]);
    // The one timing bound of the suite, generous for debug builds on a shared machine.
    assert!(took.total() < Duration::from_secs(2), "{took}");
}

#[test]
fn a_plan_wrong_everywhere_stays_bounded() {
    // Every step breaks every rule it can within the caps: the report is long but bounded.
    let long = "z".repeat(100);
    let steps: Vec<Value> = (0..MAX_STEPS)
        .map(|k| {
            let refs: Vec<String> = (0..10)
                .map(|r| format!("${{steps.{long}{r}.output}}"))
                .collect();
            json!({"id": format!("{long}!{k}"), "tool": "nope", "timeout": "0s",
                   "needs": (0..10).map(|r| format!("ghost{r}")).collect::<Vec<_>>(),
                   "args": {"r": refs}})
        })
        .collect();
    let body = submission(&json!({ "steps": steps }));
    let (e, took) = parse_and_validate(&body);
    let bytes: usize = e.iter().map(String::len).sum();
    println!(
        "plan wrong everywhere: {} bytes in, {} errors, {bytes} bytes of errors, {}",
        body.len(),
        e.len(),
        took
    );
    // Per step: id, tool, timeout, 10 needs, 10 references.
    assert_eq!(e.len(), MAX_STEPS * 23);
    assert!(bytes < e.len() * 300, "{bytes}");
}
