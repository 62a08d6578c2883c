//! How to write your own tool: implement `aetheris_actors::Tool`, register it in the
//! `ToolRegistry`, and start a node. Run with `cargo run --example custom_tool`: it starts
//! Aetheris on a temporary embedded store, runs a job that uses the tool, prints the job
//! and exits.

use aetheris_actors::{Invocation, Tool, ToolError, ToolRegistry, WorkerConfig};
use aetheris_api::{start_node, NodeConfig};
use aetheris_runtime::EffectClass;
use aetheris_store::{DynStore, RedbStore};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Counts the words of `args.text`. Pure: safe to re-run after a crash.
struct WordCount;

#[async_trait::async_trait]
impl Tool for WordCount {
    fn effect(&self) -> EffectClass {
        EffectClass::Pure
    }

    async fn invoke(&self, call: Invocation) -> Result<Value, ToolError> {
        // `call.invocation_key` and `call.fencing_token` are what a tool with side effects
        // passes downstream so the other side can deduplicate and reject zombies.
        let text = call
            .args
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| ToolError::permanent("wordcount: args.text (string) is required"))?;
        Ok(json!({"words": text.split_whitespace().count()}))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store: DynStore = Arc::new(RedbStore::open(&dir.path().join("aetheris.redb"))?);
    actix_rt::System::new().block_on(async move {
        let mut tools = ToolRegistry::with_builtins();
        tools.register("wordcount", WordCount);
        let cfg = NodeConfig { bind: "127.0.0.1:0".into(), worker: WorkerConfig::default(), ..NodeConfig::default() };
        let (node, server) = start_node(store, tools, cfg).await?;
        let server = actix_rt::spawn(server);
        let url = format!("http://{}", node.addr);
        let client = reqwest::Client::new();
        let job: Value = client
            .post(format!("{url}/v1/jobs"))
            .json(&json!({"input": {"text": "durable agents never forget"},
                          "plan": {"steps": [{"id": "count", "tool": "wordcount", "args": {"text": "${input.text}"}}]}}))
            .send()
            .await?
            .json()
            .await?;
        let id = job["job_id"].as_str().unwrap_or_default().to_string();
        let job = loop {
            let j: Value = client.get(format!("{url}/v1/jobs/{id}")).send().await?.json().await?;
            if j["status"] == "succeeded" || j["status"] == "failed" {
                break j;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        println!("job {id} {}: {}", job["status"], job["output"]);
        node.shutdown(Duration::from_secs(2)).await;
        let _ = server.await;
        Ok(())
    })
}
