//! The gateway end to end: many concurrent jobs, idempotent submission, and hostile input
//! (G8: a 4xx problem+json naming the problem, and nothing stored).

use crate::support::{rt, settle, submit, TestNode};
use aetheris_actors::WorkerConfig;
use aetheris_store::{ListFilter, Scope};
use serde_json::{json, Value};
use std::time::Duration;

fn three_step_job(i: usize) -> Value {
    json!({"input": {"i": i}, "plan": {"steps": [
        {"id": "a", "tool": "echo", "args": {"i": "${input.i}"}},
        {"id": "b", "tool": "echo", "needs": ["a"], "args": {"from_a": "${steps.a.output.i}"}},
        {"id": "c", "tool": "echo", "needs": ["b"], "args": {"n": "${steps.b.output.from_a}", "s": "job ${input.i}"}}
    ]}})
}

#[test]
fn hundred_concurrent_jobs_all_succeed_and_their_chains_verify() {
    let node = TestNode::start(|_| {}, WorkerConfig::default());
    rt().block_on(async {
        let c = reqwest::Client::new();
        let subs = (0..100).map(|i| {
            let c = c.clone();
            let url = node.url.clone();
            async move { submit(&c, &url, &three_step_job(i)).await }
        });
        let results = futures::future::join_all(subs).await;
        let mut ids = Vec::new();
        for (s, j) in results {
            assert_eq!(s, 201, "{j}");
            ids.push(j["job_id"].as_str().expect("id").to_string());
        }
        for (i, id) in ids.iter().enumerate() {
            let j = settle(&c, &node.url, id, Duration::from_secs(60)).await;
            assert_eq!(j["status"], "succeeded", "{j}");
            assert_eq!(j["output"]["c"], json!({"n": i, "s": format!("job {i}")}));
            let job: aetheris_runtime::JobId = id.parse().expect("uuid");
            let events = node
                .store
                .read_events(Scope::System, job, 0, 1000)
                .await
                .expect("events");
            assert_eq!(
                events.len(),
                8,
                "submitted + 3×(started, succeeded) + job_succeeded"
            );
            aetheris_proof::verify_chain(job, &events).expect("chain verifies");
        }
    });
}

#[test]
fn repeated_idempotency_key_returns_the_same_job() {
    let node = TestNode::start(|_| {}, WorkerConfig::default());
    rt().block_on(async {
        let c = reqwest::Client::new();
        let mut body = three_step_job(7);
        body["idempotency_key"] = json!("order-7");
        let (s1, j1) = submit(&c, &node.url, &body).await;
        let (s2, j2) = submit(&c, &node.url, &body).await;
        assert_eq!((s1, s2), (201, 200));
        assert_eq!(j1["job_id"], j2["job_id"]);
        let all = node
            .store
            .list_jobs(
                Scope::System,
                ListFilter {
                    limit: 100,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
    });
}

#[test]
fn hostile_input_gets_problem_json_and_stores_nothing() {
    let node = TestNode::start(|_| {}, WorkerConfig::default());
    rt().block_on(async {
        let c = reqwest::Client::new();
        let big = "x".repeat(2 * 1024 * 1024);
        let cases: Vec<(&str, String, u16, &str)> = vec![
            ("bad json", "{\"plan\": ".into(), 400, "not valid JSON"),
            ("not an object", "[1,2]".into(), 400, "must be a JSON object"),
            ("unknown top-level field", json!({"plan": {"steps": [{"id": "a", "tool": "echo"}]}, "bogus": 1}).to_string(), 400, "unknown field `bogus`"),
            ("unknown step field", json!({"plan": {"steps": [{"id": "a", "tool": "echo", "retries": 3}]}}).to_string(), 400, "plan.steps[0]"),
            ("wrong type", json!({"plan": {"steps": [{"id": 5, "tool": "echo"}]}}).to_string(), 400, "plan.steps[0].id"),
            ("cycle", json!({"plan": {"steps": [{"id": "a", "tool": "echo", "needs": ["b"]}, {"id": "b", "tool": "echo", "needs": ["a"]}]}}).to_string(), 422, "cycle"),
            ("unknown tool", json!({"plan": {"steps": [{"id": "a", "tool": "rm-rf"}]}}).to_string(), 422, "plan.steps[0].tool: unknown tool"),
            ("unknown need", json!({"plan": {"steps": [{"id": "a", "tool": "echo", "needs": ["ghost"]}]}}).to_string(), 422, "plan.steps[0].needs[0]"),
            ("duplicate id", json!({"plan": {"steps": [{"id": "a", "tool": "echo"}, {"id": "a", "tool": "echo"}]}}).to_string(), 422, "duplicate step id"),
            ("reference to a step not needed", json!({"plan": {"steps": [{"id": "a", "tool": "echo"}, {"id": "b", "tool": "echo", "args": {"x": "${steps.a.output}"}}]}}).to_string(), 422, "plan.steps[1].args.x"),
            ("bad reference root", json!({"plan": {"steps": [{"id": "a", "tool": "echo", "args": {"x": "${env.HOME}"}}]}}).to_string(), 422, "plan.steps[0].args.x"),
            ("empty plan", json!({"plan": {"steps": []}}).to_string(), 422, "at least one step"),
            ("bad duration", json!({"plan": {"steps": [{"id": "a", "tool": "echo", "timeout": "soon"}]}}).to_string(), 400, "invalid duration"),
            ("oversized body", json!({"plan": {"steps": [{"id": "a", "tool": "echo", "args": {"x": big}}]}}).to_string(), 413, "larger than the limit"),
        ];
        for (name, body, status, needle) in cases {
            let r = c.post(format!("{}/v1/jobs", node.url)).header("content-type", "application/json").body(body).send().await.expect("send");
            assert_eq!(r.status().as_u16(), status, "{name}");
            let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            assert_eq!(ct, "application/problem+json", "{name}");
            let p: Value = r.json().await.expect("problem body");
            assert_eq!(p["status"], status, "{name}: {p}");
            let text = p.to_string();
            assert!(text.contains(needle), "{name}: expected {needle:?} in {p}");
        }
        let all = node.store.list_jobs(Scope::System, ListFilter { limit: 100, ..Default::default() }).await.unwrap();
        assert!(all.is_empty(), "hostile input stored jobs: {all:?}");

        for (path, status) in [("/v1/jobs/not-a-uuid", 404), ("/v1/jobs/01a21429-84f8-7561-b23b-0d9fd8dffe88", 404), ("/v1/nope", 404), ("/v1/jobs?state=bogus", 400), ("/v1/jobs?limit=0", 400), ("/v1/jobs?cursor=zz", 400), ("/v1/jobs?what=1", 400)] {
            let r = c.get(format!("{}{path}", node.url)).send().await.expect("send");
            assert_eq!(r.status().as_u16(), status, "{path}");
            assert_eq!(r.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("application/problem+json"), "{path}");
        }
    });
}

#[test]
fn list_paginates_with_a_cursor_and_filters_by_state() {
    // Counts what its node's metrics show: alone in its process.
    crate::support::own_process!(list_paginates_with_a_cursor_and_filters_by_state);
    let node = TestNode::start(|_| {}, WorkerConfig::default());
    rt().block_on(async {
        let c = reqwest::Client::new();
        let mut ids = Vec::new();
        for i in 0..5 {
            let (_, j) = submit(&c, &node.url, &three_step_job(i)).await;
            ids.push(j["job_id"].as_str().unwrap().to_string());
        }
        for id in &ids {
            settle(&c, &node.url, id, Duration::from_secs(30)).await;
        }
        let mut seen = Vec::new();
        let mut url = format!("{}/v1/jobs?limit=2&state=succeeded", node.url);
        loop {
            let page: Value = c.get(&url).send().await.unwrap().json().await.unwrap();
            for j in page["jobs"].as_array().unwrap() {
                seen.push(j["job_id"].as_str().unwrap().to_string());
            }
            match page["next_cursor"].as_str() {
                Some(cur) => {
                    url = format!("{}/v1/jobs?limit=2&state=succeeded&cursor={cur}", node.url)
                }
                None => break,
            }
        }
        ids.reverse();
        assert_eq!(seen, ids, "newest first, every job once");
        let metrics = c
            .get(format!("{}/metrics", node.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("aetheris_jobs{tenant=\"default\",state=\"succeeded\"} 5"),
            "{metrics}"
        );
        assert!(
            metrics.contains("aetheris_step_duration_seconds_bucket"),
            "{metrics}"
        );
        assert!(
            metrics.contains("aetheris_actors{kind=\"lease_manager\"} 1"),
            "{metrics}"
        );
    });
}
