//! Builders of large and hostile plans, and of recorded events, shared by the runtime's
//! tests, the gateway's tests and the benchmark. Not part of the supported API. The plans use only the `echo` tool and
//! reference only `tag`, a short string every step's args carry, so they also run: each
//! step's output (echo returns its args) stays small however deep the graph is.

use crate::event::{EventBody, RecordedEvent};
use crate::ids::JobId;
use crate::plan::{EffectClass, MAX_STEPS};
use serde_json::{json, Map, Value};

/// The tools the built plans use: `echo`, pure.
pub fn catalog(tool: &str) -> Option<EffectClass> {
    (tool == "echo").then_some(EffectClass::Pure)
}

/// Id of step `k`, `id_len` characters long (at least enough for the number).
pub fn step_id(k: usize, id_len: usize) -> String {
    let digits = id_len.saturating_sub(1).max(1);
    format!("s{k:0>digits$}")
}

/// `{"steps": [...]}` of `steps` echo steps. Step `k` needs the `needs_per_step` steps just
/// before it (all earlier ones while `k` is smaller), so every earlier step is its
/// ancestor. Its args hold `tag` and up to `refs_per_step` references
/// `${steps.ID.output.tag}`: to the steps it needs, the last one to step 0 (an ancestor
/// reached only transitively once `k > needs_per_step`).
pub fn dense_plan(
    steps: usize,
    needs_per_step: usize,
    refs_per_step: usize,
    id_len: usize,
) -> Value {
    let id = |k: usize| step_id(k, id_len);
    let list: Vec<Value> = (0..steps)
        .map(|k| {
            let needs: Vec<String> = (k.saturating_sub(needs_per_step)..k)
                .rev()
                .map(id)
                .collect();
            let mut args = Map::new();
            args.insert("tag".into(), json!(k.to_string()));
            let refs = refs_per_step.min(k);
            for r in 0..refs {
                let target = if r + 1 == refs { 0 } else { k - 1 - r };
                args.insert(
                    format!("r{r}"),
                    json!(format!("${{steps.{}.output.tag}}", id(target))),
                );
            }
            json!({"id": id(k), "tool": "echo", "needs": needs, "args": args})
        })
        .collect();
    json!({ "steps": list })
}

/// The plan that used to take 0.74 s to validate: `steps` steps, each needing the
/// `needs_per_step` before it (`hostile_dense_plan(500, 500)`: each needs all earlier
/// ones, about 1 MB of JSON), with one reference each to step 0. Over the caps when
/// `needs_per_step > MAX_NEEDS_PER_STEP` or the needs sum over `MAX_EDGES`.
pub fn hostile_dense_plan(steps: usize, needs_per_step: usize) -> Value {
    dense_plan(steps, needs_per_step, 1, 4)
}

/// Steps each need in [`max_legal_dense_plan`] (so 9,945 needs in all, under `MAX_EDGES`).
pub const LEGAL_DENSE_NEEDS: usize = 10;

/// The largest dense plan the caps allow, about 1 MiB as a submission: `MAX_STEPS` steps,
/// each needing the 10 before it and holding up to 10 references (9,945 in all, under
/// `MAX_REFERENCES`), with 32-character ids.
pub fn max_legal_dense_plan() -> Value {
    dense_plan(MAX_STEPS, LEGAL_DENSE_NEEDS, LEGAL_DENSE_NEEDS, 32)
}

/// The body of `POST /v1/jobs` submitting `plan` with an empty input.
pub fn submission(plan: &Value) -> Vec<u8> {
    json!({"plan": plan, "input": {}}).to_string().into_bytes()
}

/// `body` as recorded at `seq` and `at_ms` for the default job, with zero hashes: for
/// tests of what reads a log (views, folds) rather than of its chain.
pub fn recorded(seq: u64, at_ms: i64, body: EventBody) -> RecordedEvent {
    RecordedEvent {
        job_id: JobId::default(),
        seq,
        recorded_at_ms: at_ms,
        body,
        prev_hash: [0; 32],
        hash: [0; 32],
    }
}
