//! OTLP export end to end: the real `aetheris dev` binary, started with `--otlp-endpoint`
//! pointing at a minimal OTLP/HTTP collector inside the test (an actix-web server that
//! keeps every `POST /v1/traces` body), runs a job with an `http` tool step (against the
//! same server, which keeps the `traceparent` it receives) and an agent step on the
//! offline `scripted` provider. The test then checks the spans as a tracing backend would
//! see them: one trace whose id is the job's, the root `job` span, the gateway's
//! `accept_job`, the step spans, the tool-call and model-call spans with their attributes,
//! every parent present in the trace, and the `traceparent` the http tool sent naming its
//! own tool-call span.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the collector received: the decoded `/v1/traces` bodies, and the `traceparent`
/// header of every other request (the http tool's calls).
#[derive(Default)]
struct Received {
    exports: Vec<Value>,
    traceparents: Vec<Option<String>>,
}

/// The collector and tool target: a real HTTP server on loopback.
struct Collector {
    url: String,
    received: Arc<Mutex<Received>>,
    _server: crate::support::LoopbackServer,
}

impl Collector {
    fn start() -> Collector {
        let received: Arc<Mutex<Received>> = Arc::default();
        let r2 = received.clone();
        let server = crate::support::LoopbackServer::start("collector", move || {
            let server = HttpServer::new(move || {
                let traces = r2.clone();
                let tools = r2.clone();
                App::new()
                    .app_data(web::PayloadConfig::new(16 << 20))
                    .route(
                        "/v1/traces",
                        web::post().to(move |req: HttpRequest, body: web::Bytes| {
                            let traces = traces.clone();
                            async move {
                                let json_type = req
                                    .headers()
                                    .get("content-type")
                                    .and_then(|v| v.to_str().ok())
                                    .is_some_and(|t| t.starts_with("application/json"));
                                match serde_json::from_slice::<Value>(&body) {
                                    Ok(v) if json_type => {
                                        traces.lock().unwrap().exports.push(v);
                                        HttpResponse::Ok().json(json!({}))
                                    }
                                    _ => HttpResponse::BadRequest().finish(),
                                }
                            }
                        }),
                    )
                    .default_service(web::to(move |req: HttpRequest| {
                        let tools = tools.clone();
                        async move {
                            let tp = req
                                .headers()
                                .get("traceparent")
                                .and_then(|v| v.to_str().ok())
                                .map(str::to_string);
                            tools.lock().unwrap().traceparents.push(tp);
                            HttpResponse::Ok().json(json!({"ok": true}))
                        }
                    }))
            })
            .workers(1)
            .disable_signals()
            .bind("127.0.0.1:0")?;
            Ok((server.addrs()[0], server.run()))
        });
        Collector {
            url: server.url.clone(),
            received,
            _server: server,
        }
    }

    /// Every span received so far, each with its resource's attributes.
    fn spans(&self) -> Vec<(Value, Value)> {
        let r = self.received.lock().unwrap();
        let mut out = Vec::new();
        for export in &r.exports {
            for rs in export["resourceSpans"].as_array().into_iter().flatten() {
                for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                    for span in ss["spans"].as_array().into_iter().flatten() {
                        out.push((span.clone(), rs["resource"].clone()));
                    }
                }
            }
        }
        out
    }
}

/// The `aetheris dev` child; killed when dropped.
struct Dev {
    child: Child,
    log: std::path::PathBuf,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dev {
    fn start(dir: &std::path::Path, port: u16, otlp: &str) -> Dev {
        let log = dir.join("node.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_aetheris"))
            .arg("dev")
            .arg("--insecure-no-auth")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--otlp-endpoint")
            .arg(otlp)
            .env_remove("AETHERIS_CONFIG")
            .env_remove("AETHERIS_FAILPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::from(out.try_clone().expect("log")))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("spawn aetheris");
        Dev { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The value of attribute `key` of an OTLP JSON span (`stringValue` or `intValue`, as text).
fn attr(span: &Value, key: &str) -> Option<String> {
    let value = span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?
        .get("value")?
        .clone();
    value["stringValue"]
        .as_str()
        .or(value["intValue"].as_str())
        .map(str::to_string)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[test]
fn a_jobs_spans_reach_an_otlp_collector_as_one_trace_and_http_tools_get_its_traceparent() {
    let collector = Collector::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let dev = Dev::start(dir.path(), port, &collector.url);
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let rt = crate::support::rt();
    let started = Instant::now();
    while !rt
        .block_on(async { client.get(format!("{base}/healthz")).send().await })
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "dev did not start:\n{}",
            dev.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let plan = json!({"steps": [
        // A traceparent among the args is replaced by the call's own.
        {"id": "fetch", "tool": "http", "args": {"url": format!("{}/tool", collector.url),
            "headers": {"TraceParent": caller}}},
        {"id": "triage", "needs": ["fetch"], "agent": {
            "provider": "scripted", "model": "scripted-1", "prompt": "look it up",
            "tools": ["echo"], "max_turns": 4}},
    ]});
    let (status, job) = rt.block_on(async {
        let r = client
            .post(format!("{base}/v1/jobs"))
            .header("traceparent", caller)
            .json(&json!({"plan": plan, "input": {}}))
            .send()
            .await
            .expect("submit");
        (r.status().as_u16(), r.json::<Value>().await.expect("json"))
    });
    assert_eq!(status, 201, "{job}");
    let job_id = job["job_id"].as_str().expect("job_id").to_string();
    let done = rt.block_on(crate::support::settle(
        &client,
        &base,
        &job_id,
        Duration::from_secs(30),
    ));
    assert_eq!(done["status"], "succeeded", "{done}\n{}", dev.log());

    // The job's id is its trace id; its root span's id is the id's last 8 bytes.
    let trace_id = job_id.replace('-', "");
    let root_id = trace_id[16..].to_string();
    // The root is the last span of the job (sent within the exporter's 1 s batch interval).
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = collector.spans();
        if spans.iter().any(|(s, _)| s["name"] == "job") {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "no root span; received {spans:#?}\n{}",
            dev.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // Every span of the job is in its trace, named by id and tenant, ids and times in the
    // OTLP JSON mapping; every parent is a span of the trace.
    let ours: Vec<&Value> = spans
        .iter()
        .map(|(s, _)| s)
        .filter(|s| attr(s, "aetheris.job_id").as_deref() == Some(job_id.as_str()))
        .collect();
    let ids: HashSet<&str> = ours.iter().filter_map(|s| s["spanId"].as_str()).collect();
    for s in &ours {
        assert_eq!(s["traceId"], trace_id.as_str(), "{s:#}");
        assert_eq!(
            attr(s, "aetheris.tenant").as_deref(),
            Some("default"),
            "{s:#}"
        );
        assert!(is_hex(s["spanId"].as_str().unwrap_or(""), 16), "{s:#}");
        let start = s["startTimeUnixNano"].as_str().expect("a decimal string");
        let end = s["endTimeUnixNano"].as_str().expect("a decimal string");
        let (start, end): (u64, u64) = (start.parse().unwrap(), end.parse().unwrap());
        assert!(start > 1_600_000_000_000_000_000 && end >= start, "{s:#}");
        if let Some(parent) = s["parentSpanId"].as_str() {
            assert!(ids.contains(parent), "parent of {s:#} is not in the trace");
        }
    }
    assert_eq!(ids.len(), ours.len(), "span ids are unique");
    let by_name = |name: &str| -> Vec<&Value> {
        ours.iter().copied().filter(|s| s["name"] == name).collect()
    };
    let one = |name: &str| -> &Value {
        let found = by_name(name);
        assert_eq!(found.len(), 1, "{name}: {ours:#?}");
        found[0]
    };

    let root = one("job");
    assert_eq!(root["spanId"], root_id.as_str());
    assert!(root.get("parentSpanId").is_none(), "{root:#}");
    assert_eq!(
        attr(root, "aetheris.job.status").as_deref(),
        Some("succeeded")
    );

    let accept = one("accept_job");
    assert_eq!(accept["parentSpanId"], root_id.as_str());
    assert_eq!(
        accept["links"][0]["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "the submitting request's trace is linked"
    );

    let fetch = one("step fetch");
    assert_eq!(fetch["parentSpanId"], root_id.as_str());
    assert_eq!(attr(fetch, "aetheris.step").as_deref(), Some("fetch"));
    assert_eq!(
        attr(fetch, "aetheris.step.status").as_deref(),
        Some("succeeded")
    );

    let call = one("execute_tool http");
    assert_eq!(call["parentSpanId"], fetch["spanId"]);
    assert_eq!(attr(call, "aetheris.step").as_deref(), Some("fetch"));
    assert_eq!(attr(call, "aetheris.attempt").as_deref(), Some("1"));
    assert_eq!(attr(call, "gen_ai.tool.name").as_deref(), Some("http"));
    assert_eq!(
        attr(call, "aetheris.invocation_key").as_deref(),
        done["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == "fetch"))
            .and_then(|s| s["invocation_key"].as_str()),
        "{done}"
    );

    // The http tool sent the W3C traceparent of its own call span.
    let traceparents = collector.received.lock().unwrap().traceparents.clone();
    assert_eq!(traceparents.len(), 1, "{traceparents:?}");
    let sent = traceparents[0].clone().expect("a traceparent header");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_eq!(parts[0], "00");
    assert_eq!(parts[1], trace_id, "the trace id is the job's");
    assert_eq!(
        parts[2],
        call["spanId"].as_str().unwrap(),
        "names the call's span"
    );
    assert_eq!(parts[3], "01", "sampled: the spans are exported");

    // The agent step: its span, its model calls and its tool call under it.
    let agent = one("invoke_agent triage");
    assert_eq!(agent["parentSpanId"], root_id.as_str());
    assert_eq!(
        attr(agent, "gen_ai.operation.name").as_deref(),
        Some("invoke_agent")
    );
    let chats = by_name("chat scripted-1");
    assert!(
        chats.len() >= 2,
        "a tool-calling turn and an answer: {ours:#?}"
    );
    for chat in &chats {
        assert_eq!(chat["parentSpanId"], agent["spanId"], "{chat:#}");
        assert_eq!(attr(chat, "aetheris.step").as_deref(), Some("triage"));
        assert_eq!(
            attr(chat, "gen_ai.provider.name").as_deref(),
            Some("scripted")
        );
        assert_eq!(chat["kind"], 3, "a model call is a client span");
        assert!(
            attr(chat, "gen_ai.usage.output_tokens").is_some(),
            "{chat:#}"
        );
    }
    let echo = one("execute_tool echo");
    assert_eq!(echo["parentSpanId"], agent["spanId"]);
    assert_eq!(attr(echo, "aetheris.step").as_deref(), Some("triage"));
    assert!(attr(echo, "gen_ai.tool.call.id").is_some(), "{echo:#}");

    // The process describes itself once per batch.
    let (_, resource) = spans.iter().find(|(s, _)| s["name"] == "job").unwrap();
    let service = resource["attributes"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["key"] == "service.name"))
        .map(|a| a["value"]["stringValue"].clone());
    assert_eq!(service, Some(json!("aetheris")), "{resource:#}");
}

/// A collector that is not there costs the job nothing: it succeeds, and the node counts
/// the spans it could not send.
#[test]
fn an_unreachable_collector_drops_and_counts_spans_and_jobs_still_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let free = |_| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let (port, nowhere) = (free(0), free(1));
    let dev = Dev::start(dir.path(), port, &format!("http://127.0.0.1:{nowhere}"));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let rt = crate::support::rt();
    let started = Instant::now();
    while !rt
        .block_on(async { client.get(format!("{base}/healthz")).send().await })
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(started.elapsed() < Duration::from_secs(30), "{}", dev.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let plan = json!({"steps": [{"id": "a", "tool": "echo", "args": {"x": 1}}]});
    let (status, job) = rt.block_on(crate::support::submit(
        &client,
        &base,
        &json!({"plan": plan}),
    ));
    assert_eq!(status, 201, "{job}");
    let id = job["job_id"].as_str().unwrap().to_string();
    let done = rt.block_on(crate::support::settle(
        &client,
        &base,
        &id,
        Duration::from_secs(30),
    ));
    assert_eq!(done["status"], "succeeded", "{done}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let series = "aetheris_trace_spans_dropped_total{reason=\"export_failed\"}";
    loop {
        let text = rt.block_on(async {
            client
                .get(format!("{base}/metrics"))
                .send()
                .await
                .expect("metrics")
                .text()
                .await
                .unwrap_or_default()
        });
        let dropped = crate::support::sample(&text, series).unwrap_or(0.0);
        if dropped >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{series} not counted:\n{text}\n{}",
            dev.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
