//! HTTP client side of the CLI (`aetheris job …`): sends requests to a server, prints
//! human output or `--json`, and turns problem+json answers into one-line errors. Its
//! token, runtime and request helpers are shared with the other client commands
//! (`tenant.rs`).

use crate::JobCommand;
use serde_json::Value;
use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

pub fn run(server: &str, token: Option<&str>, cmd: JobCommand) -> Result<ExitCode, String> {
    let token = resolve_token(token);
    block_on(run_async(
        server.trim_end_matches('/'),
        token.as_deref(),
        cmd,
    ))?
}

/// The token to send: the one given (`--token` / `AETHERIS_TOKEN`), else the one
/// `aetheris dev` wrote into its default data dir, else none.
pub fn resolve_token(token: Option<&str>) -> Option<String> {
    match token {
        Some(t) => Some(t.to_string()),
        None => std::fs::read_to_string(".aetheris/token")
            .ok()
            .map(|t| t.trim().to_string()),
    }
}

/// Runs one CLI request on a single-threaded runtime (a command is one short exchange).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting runtime: {e}"))?;
    Ok(rt.block_on(f))
}

pub async fn request(
    client: &reqwest::Client,
    req: reqwest::RequestBuilder,
) -> Result<(u16, Value), String> {
    let _ = client;
    let resp = req
        .send()
        .await
        .map_err(|e| format!("cannot reach server: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("reading response: {e}"))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if status >= 400 {
        let detail = body.get("detail").and_then(Value::as_str).unwrap_or("");
        let title = body.get("title").and_then(Value::as_str).unwrap_or("error");
        return Err(format!("{status} {title}: {detail}"));
    }
    Ok((status, body))
}

/// A client that sends the bearer token (if any) with every request.
pub fn client_with_token(token: Option<&str>) -> Result<reqwest::Client, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(t) = token {
        let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| "the token has characters a header cannot carry".to_string())?;
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .map_err(|e| format!("http client: {e}"))
}

async fn run_async(server: &str, token: Option<&str>, cmd: JobCommand) -> Result<ExitCode, String> {
    let client = client_with_token(token)?;
    match cmd {
        JobCommand::Submit { file, wait, json } => {
            let body = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map_err(|e| format!("reading stdin: {e}"))?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| format!("reading {}: {e}", file.display()))?
            };
            let (status, job) = request(
                &client,
                client
                    .post(format!("{server}/v1/jobs"))
                    .header("content-type", "application/json")
                    .body(body),
            )
            .await?;
            let id = job["job_id"].as_str().unwrap_or_default().to_string();
            if !wait {
                if json {
                    println!("{job}");
                } else {
                    let verb = if status == 201 {
                        "submitted"
                    } else {
                        "already submitted (same idempotency key)"
                    };
                    println!(
                        "{verb} job {id} ({})",
                        job["status"].as_str().unwrap_or("?")
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            let job = wait_for(&client, server, &id, Duration::from_secs(600)).await?;
            let events = fetch_events(&client, server, &id).await?;
            if json {
                println!("{}", serde_json::json!({"job": job, "events": events}));
            } else {
                print_trace(&job, &events);
            }
            Ok(if job["status"] == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        JobCommand::Get { id, json } => {
            let (_, job) = request(&client, client.get(format!("{server}/v1/jobs/{id}"))).await?;
            if json {
                println!("{job}");
            } else {
                print_job(&job);
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::List {
            state,
            limit,
            cursor,
            json,
        } => {
            let mut q = vec![("limit", limit.to_string())];
            if let Some(s) = state {
                q.push(("state", s));
            }
            if let Some(c) = cursor {
                q.push(("cursor", c));
            }
            let (_, page) =
                request(&client, client.get(format!("{server}/v1/jobs")).query(&q)).await?;
            if json {
                println!("{page}");
            } else {
                println!(
                    "{:<38} {:<10} {:>5}  IDEMPOTENCY KEY",
                    "JOB", "STATE", "SEQ"
                );
                for j in page["jobs"].as_array().into_iter().flatten() {
                    println!(
                        "{:<38} {:<10} {:>5}  {}",
                        j["job_id"].as_str().unwrap_or(""),
                        j["status"].as_str().unwrap_or(""),
                        j["last_seq"],
                        j["idempotency_key"].as_str().unwrap_or("-")
                    );
                }
                if let Some(c) = page["next_cursor"].as_str() {
                    println!("more: --cursor {c}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Cancel {
            id,
            reason,
            by,
            json,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(r) = reason {
                body.insert("reason".into(), Value::String(r));
            }
            if let Some(b) = by {
                body.insert("by".into(), Value::String(b));
            }
            let (_, r) = request(
                &client,
                client
                    .post(format!("{server}/v1/jobs/{id}/cancel"))
                    .json(&Value::Object(body)),
            )
            .await?;
            if json {
                println!("{r}");
            } else {
                println!(
                    "cancel requested for job {id} (command {})",
                    r["command_id"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Signal {
            id,
            name,
            payload,
            signal_id,
            by,
            json,
        } => {
            let payload: Value = serde_json::from_str(&payload)
                .map_err(|e| format!("--payload is not JSON: {e}"))?;
            let mut body = serde_json::json!({ "payload": payload });
            if let Some(s) = signal_id {
                body["signal_id"] = Value::String(s);
            }
            if let Some(b) = by {
                body["by"] = Value::String(b);
            }
            let (_, r) = request(
                &client,
                client
                    .post(format!("{server}/v1/jobs/{id}/signals/{name}"))
                    .json(&body),
            )
            .await?;
            if json {
                println!("{r}");
            } else {
                println!(
                    "signal {name} ({}) stored for job {id}",
                    r["signal_id"].as_str().unwrap_or("")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Confirm {
            id,
            step,
            outcome,
            output,
            note,
            by,
            json,
        } => {
            if outcome != "succeeded" && outcome != "not_executed" {
                return Err("--outcome must be succeeded or not_executed".into());
            }
            let mut body = serde_json::json!({ "outcome": outcome });
            if let Some(o) = output {
                body["output"] =
                    serde_json::from_str(&o).map_err(|e| format!("--output is not JSON: {e}"))?;
            }
            if let Some(n) = note {
                body["note"] = Value::String(n);
            }
            if let Some(b) = by {
                body["by"] = Value::String(b);
            }
            let (_, r) = request(
                &client,
                client
                    .post(format!("{server}/v1/jobs/{id}/steps/{step}/confirm"))
                    .json(&body),
            )
            .await?;
            if json {
                println!("{r}");
            } else {
                println!(
                    "confirmation for step {step} of job {id} stored (command {})",
                    r["command_id"]
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        JobCommand::Watch { id, json } => watch(&client, server, &id, json).await,
        JobCommand::Events { id, json } => {
            let events = fetch_events(&client, server, &id).await?;
            if json {
                println!("{}", Value::Array(events));
            } else {
                print_events(&events);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Follows the SSE stream of a job, printing each event as it arrives.
async fn watch(
    client: &reqwest::Client,
    server: &str,
    id: &str,
    json: bool,
) -> Result<ExitCode, String> {
    let mut resp = client
        .get(format!("{server}/v1/jobs/{id}/events"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| format!("cannot reach server: {e}"))?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        return Err(format!(
            "{status}: {}",
            body["detail"].as_str().unwrap_or("error")
        ));
    }
    let mut buf = String::new();
    let mut last: Option<Value> = None;
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("stream: {e}"))? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            for line in frame.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    let ev: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                    if json {
                        println!("{ev}");
                    } else {
                        print_events(std::slice::from_ref(&ev));
                    }
                    last = Some(ev);
                }
            }
        }
    }
    let ok = last.is_some_and(|e| e["body"]["type"] == "job_succeeded");
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn fetch_events(
    client: &reqwest::Client,
    server: &str,
    id: &str,
) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let (_, page) = request(
            client,
            client.get(format!("{server}/v1/jobs/{id}/events?after={after}")),
        )
        .await?;
        let batch = page["events"].as_array().cloned().unwrap_or_default();
        if batch.is_empty() {
            return Ok(out);
        }
        after = page["next_after"].as_u64().unwrap_or(after);
        out.extend(batch);
    }
}

pub async fn wait_for(
    client: &reqwest::Client,
    server: &str,
    id: &str,
    limit: Duration,
) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let (_, job) = request(client, client.get(format!("{server}/v1/jobs/{id}"))).await?;
        match job["status"].as_str() {
            Some("succeeded" | "failed" | "waiting" | "cancelled") => return Ok(job),
            _ if tokio::time::Instant::now() > deadline => {
                return Err(format!("job {id} did not finish in time"))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn print_job(job: &Value) {
    println!("job      {}", job["job_id"].as_str().unwrap_or(""));
    println!("state    {}", job["status"].as_str().unwrap_or(""));
    println!("events   {}", job["last_seq"]);
    for s in job["steps"].as_array().into_iter().flatten() {
        let extra = match s["status"].as_str() {
            Some("succeeded") => format!("→ {}", truncate(&s["output"].to_string(), 80)),
            Some("failed" | "outcome_unknown") => {
                format!("! {}", s["error"].as_str().unwrap_or(""))
            }
            _ => String::new(),
        };
        println!(
            "  step {:<16} {:<16} attempt {} {}",
            s["id"].as_str().unwrap_or(""),
            s["status"].as_str().unwrap_or(""),
            s["attempt"],
            extra
        );
    }
    if let Some(e) = job["error"].as_str() {
        println!("error    {e}");
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

pub fn print_events(events: &[Value]) {
    let t0 = events
        .first()
        .and_then(|e| e["recorded_at_ms"].as_i64())
        .unwrap_or(0);
    for e in events {
        let b = &e["body"];
        let kind = b["type"].as_str().unwrap_or("?");
        let detail = match kind {
            "job_submitted" => format!(
                "{} steps",
                b["plan"]["steps"].as_array().map(|a| a.len()).unwrap_or(0)
            ),
            "step_started" => format!(
                "{} via {} ({}), attempt {}, key {}…",
                b["step"].as_str().unwrap_or(""),
                b["tool"].as_str().unwrap_or(""),
                b["effect"].as_str().unwrap_or(""),
                b["attempt"],
                &b["invocation_key"].as_str().unwrap_or("")
                    [..12.min(b["invocation_key"].as_str().unwrap_or("").len())]
            ),
            "step_succeeded" => format!(
                "{} → {}",
                b["step"].as_str().unwrap_or(""),
                truncate(&b["output"].to_string(), 60)
            ),
            "step_failed" | "step_outcome_unknown" => format!(
                "{}: {}",
                b["step"].as_str().unwrap_or(""),
                b["error"].as_str().or(b["reason"].as_str()).unwrap_or("")
            ),
            "job_succeeded" => truncate(&b["output"].to_string(), 60),
            "job_failed" => b["error"].as_str().unwrap_or("").to_string(),
            "job_cancelled" => format!(
                "by {}: {}",
                b["by"].as_str().unwrap_or(""),
                b["reason"].as_str().unwrap_or("")
            ),
            "signal_received" => format!(
                "{} from {}",
                b["signal"].as_str().unwrap_or(""),
                b["by"].as_str().unwrap_or("-")
            ),
            "wait_started" | "wait_timed_out" | "sleep_finished" | "wait_completed" => {
                b["step"].as_str().unwrap_or("").to_string()
            }
            "sleep_started" => format!(
                "{} for {}ms",
                b["step"].as_str().unwrap_or(""),
                b["duration_ms"]
            ),
            "step_confirmed" => format!(
                "{} {} by {}",
                b["step"].as_str().unwrap_or(""),
                b["outcome"].as_str().unwrap_or(""),
                b["by"].as_str().unwrap_or("")
            ),
            "job_parked" => match b["wake_at_ms"].as_i64() {
                Some(t) => format!("until {t} (ms since epoch) or a command"),
                None => "until a signal or confirmation".into(),
            },
            _ => String::new(),
        };
        let dt = e["recorded_at_ms"].as_i64().unwrap_or(t0) - t0;
        println!(
            "{:>4}  +{:>5}ms  {:<22} {}  [{}…]",
            e["seq"],
            dt,
            kind,
            detail,
            &e["hash"].as_str().unwrap_or("")[..8.min(e["hash"].as_str().unwrap_or("").len())]
        );
    }
}

pub fn print_trace(job: &Value, events: &[Value]) {
    print_events(events);
    println!(
        "job {} {}",
        job["job_id"].as_str().unwrap_or(""),
        job["status"].as_str().unwrap_or("")
    );
}
