//! HTTP client side of the CLI (`aetheris job …`, shared by `tenant`, `user`, `audit` and
//! `dev --run`): `Api` is one server and one credential; it sends requests, turns
//! problem+json answers into one-line errors, and prints human output or `--json`.
//!
//! Invariants kept here:
//! - The server URL is checked before anything is sent: `HOST:PORT` means
//!   `http://HOST:PORT`; anything that is not an http(s) URL is one clear error line.
//! - A `401` says where the CLI looked for a token (`--token`, `AETHERIS_TOKEN`,
//!   `.aetheris/token`), so a missing or stale token file is not a bare "unauthorized".
//! - Ids and names put into a URL path are escaped into one segment, so the server — not
//!   the URL parser — answers a strange id.
//! - Event times print relative to the job's first event, also when events arrive one
//!   at a time (`job watch`).

use crate::JobCommand;
use serde_json::Value;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Where the token `.aetheris/token` is looked for: the default data dir of `aetheris dev`,
/// relative to the working directory.
pub const DEV_TOKEN_FILE: &str = ".aetheris/token";

/// Where the bearer token of a command came from, for the hint on a `401`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token` or `AETHERIS_TOKEN`.
    Given,
    /// The token file `aetheris dev` writes.
    DevFile(PathBuf),
    /// None found; says what was tried.
    Missing(String),
}

impl TokenSource {
    fn hint(&self) -> String {
        match self {
            TokenSource::Given => "the token from --token / AETHERIS_TOKEN was refused".into(),
            TokenSource::DevFile(p) => format!(
                "the token read from {} was refused; give another with --token or AETHERIS_TOKEN",
                p.display()
            ),
            TokenSource::Missing(tried) => format!(
                "no token was sent: tried --token, AETHERIS_TOKEN and {tried}; \
                 `aetheris dev` writes that file, `aetheris token issue` makes a token"
            ),
        }
    }
}

/// The token to send: the one given (`--token` / `AETHERIS_TOKEN`), else the one
/// `aetheris dev` wrote into its default data dir, else none (and why).
pub fn resolve_token(token: Option<&str>) -> (Option<String>, TokenSource) {
    if let Some(t) = token {
        return (Some(t.trim().to_string()), TokenSource::Given);
    }
    let file = PathBuf::from(DEV_TOKEN_FILE);
    let shown = std::env::current_dir()
        .map(|d| d.join(&file))
        .unwrap_or_else(|_| file.clone());
    match std::fs::read_to_string(&file) {
        Ok(t) if !t.trim().is_empty() => (Some(t.trim().to_string()), TokenSource::DevFile(file)),
        Ok(_) => (
            None,
            TokenSource::Missing(format!("{} (empty)", shown.display())),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            None,
            TokenSource::Missing(format!("{} (not found)", shown.display())),
        ),
        Err(e) => (
            None,
            TokenSource::Missing(format!("{} ({e})", shown.display())),
        ),
    }
}

/// The server URL of `--server` / `AETHERIS_SERVER`, without a trailing `/`: `HOST:PORT`
/// is taken as `http://HOST:PORT`; other schemes, queries and fragments are refused.
pub fn server_url(raw: &str) -> Result<String, String> {
    let text = raw.trim();
    let expected = "expected a URL such as http://127.0.0.1:7420";
    if text.is_empty() {
        return Err(format!("--server is empty; {expected}"));
    }
    let with_scheme = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let url = reqwest::Url::parse(&with_scheme)
        .map_err(|e| format!("--server {raw:?} is not a URL ({e}); {expected}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "--server {raw:?}: the scheme must be http or https; {expected}"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("--server {raw:?} has no host; {expected}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "--server {raw:?} must not have a query or fragment; {expected}"
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// An id or name as one URL path segment (unreserved characters as they are, everything
/// else percent-escaped).
pub fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' | b'@' | b'+' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One server and one credential.
pub struct Api {
    http: reqwest::Client,
    /// The server URL, without a trailing `/`.
    pub base: String,
    source: TokenSource,
}

impl Api {
    /// An `Api` for `--server` and `--token` as given on the command line (the token
    /// falling back to the dev token file).
    pub fn from_args(server: &str, token: Option<&str>) -> Result<Api, String> {
        let base = server_url(server)?;
        let (token, source) = resolve_token(token);
        Api::new(base, token.as_deref(), source)
    }

    /// An `Api` for a known base URL and token.
    pub fn new(base: String, token: Option<&str>, source: TokenSource) -> Result<Api, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| "the token has characters a header cannot carry".to_string())?;
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Api { http, base, source })
    }

    /// `base` + `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(self.url(path))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.post(self.url(path))
    }

    pub fn put(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.put(self.url(path))
    }

    /// Sends `req`; a `4xx`/`5xx` answer becomes one line from its problem+json.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Result<(u16, Value), String> {
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach server {}: {}", self.base, cause(&e)))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("reading the answer of {}: {}", self.base, cause(&e)))?;
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            return Err(self.problem(status, &body));
        }
        Ok((status, body))
    }

    /// Sends `req` and returns the answer's bytes as they are (a zip, a signed note); a
    /// `4xx`/`5xx` answer becomes one line from its problem+json.
    pub async fn send_bytes(&self, req: reqwest::RequestBuilder) -> Result<Vec<u8>, String> {
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach server {}: {}", self.base, cause(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the answer of {}: {}", self.base, cause(&e)))?;
        if status >= 400 {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            return Err(self.problem(status, &body));
        }
        Ok(bytes.to_vec())
    }

    /// One line for an error answer: status, title, detail, and on `401` where the token
    /// came from.
    fn problem(&self, status: u16, body: &Value) -> String {
        let title = body.get("title").and_then(Value::as_str).unwrap_or("error");
        let detail = match body {
            Value::String(s) => s.as_str(),
            _ => body.get("detail").and_then(Value::as_str).unwrap_or(""),
        };
        let mut msg = format!("{status} {title}");
        if !detail.is_empty() {
            msg.push_str(": ");
            msg.push_str(detail);
        }
        if status == 401 {
            msg.push_str(&format!(" ({})", self.source.hint()));
        }
        msg
    }
}

/// A reqwest error with its causes (reqwest's own text often is just "error sending
/// request").
fn cause(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

/// Runs one CLI request on a single-threaded runtime (a command is one short exchange).
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> Result<T, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting runtime: {e}"))?;
    Ok(rt.block_on(f))
}

pub fn run(server: &str, token: Option<&str>, cmd: JobCommand) -> Result<ExitCode, String> {
    let api = Api::from_args(server, token)?;
    block_on(run_async(&api, cmd))?
}

/// Reads a job file (`-` is stdin).
fn read_job_file(file: &std::path::Path) -> Result<String, String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| format!("reading stdin: {e}"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))
    }
}

/// The submit body with `input.server` set to `server` when the plan refers to
/// `${input.server}` and the input does not set it (so a job file such as
/// `examples/quickstart.json` can call the server it is submitted to, whatever its
/// address). Anything else — including a body that is not JSON, for the server to
/// refuse — is sent as it is.
pub fn fill_server_input(body: String, server: &str) -> String {
    let Ok(mut job) = serde_json::from_str::<Value>(&body) else {
        return body;
    };
    let refers = job.get("plan").is_some_and(|p| {
        let text = p.to_string();
        text.contains("${input.server}") || text.contains("${input.server.")
    });
    if !refers {
        return body;
    }
    match job.get_mut("input") {
        Some(Value::Object(input)) if !input.contains_key("server") => {
            input.insert("server".into(), Value::String(server.to_string()));
        }
        None | Some(Value::Null) => {
            job["input"] = serde_json::json!({ "server": server });
        }
        _ => return body,
    }
    job.to_string()
}

/// Submits a job body; returns the HTTP status and the job.
pub async fn submit(api: &Api, body: String) -> Result<(u16, Value), String> {
    let body = fill_server_input(body, &api.base);
    api.send(
        api.post("/v1/jobs")
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

async fn run_async(api: &Api, cmd: JobCommand) -> Result<ExitCode, String> {
    match cmd {
        JobCommand::Submit { file, wait, json } => submit_job(api, &file, wait, json).await,
        JobCommand::Get { id, json } => {
            let (_, job) = api
                .send(api.get(&format!("/v1/jobs/{}", path_segment(&id))))
                .await?;
            Ok(show(json, &job, print_job))
        }
        JobCommand::List {
            state,
            limit,
            cursor,
            json,
        } => list_jobs(api, state, limit, cursor, json).await,
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
            let path = format!("/v1/jobs/{}/cancel", path_segment(&id));
            let r = command(api, &path, Value::Object(body), by).await?;
            Ok(show(json, &r, |r| {
                println!(
                    "cancel requested for job {id} (command {})",
                    r["command_id"]
                )
            }))
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
            let path = format!(
                "/v1/jobs/{}/signals/{}",
                path_segment(&id),
                path_segment(&name)
            );
            let r = command(api, &path, body, by).await?;
            Ok(show(json, &r, |r| {
                println!(
                    "signal {name} ({}) stored for job {id}",
                    r["signal_id"].as_str().unwrap_or("")
                )
            }))
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
            let mut body = serde_json::json!({ "outcome": outcome.as_str() });
            if let Some(o) = output {
                body["output"] =
                    serde_json::from_str(&o).map_err(|e| format!("--output is not JSON: {e}"))?;
            }
            if let Some(n) = note {
                body["note"] = Value::String(n);
            }
            let path = format!(
                "/v1/jobs/{}/steps/{}/confirm",
                path_segment(&id),
                path_segment(&step)
            );
            let r = command(api, &path, body, by).await?;
            Ok(show(json, &r, |r| {
                println!(
                    "confirmation for step {step} of job {id} stored (command {})",
                    r["command_id"]
                )
            }))
        }
        JobCommand::Watch { id, json } => watch(api, &id, json).await,
        JobCommand::Events { id, json } => {
            let events = Value::Array(fetch_events(api, &id).await?);
            Ok(show(json, &events, |e| {
                print_events(e.as_array().map(Vec::as_slice).unwrap_or_default())
            }))
        }
        JobCommand::Replay {
            id,
            model,
            provider,
            step,
            json,
        } => crate::agents::replay(api, &id, model, provider, step, json).await,
    }
}

/// Prints `value` as JSON (`--json`) or for a human; exit 0.
fn show(json: bool, value: &Value, human: impl FnOnce(&Value)) -> ExitCode {
    if json {
        println!("{value}");
    } else {
        human(value);
    }
    ExitCode::SUCCESS
}

/// Stores a command for a job (cancel, signal, confirm): `by` is added to the body when
/// given (the server honours it only without authentication).
async fn command(
    api: &Api,
    path: &str,
    mut body: Value,
    by: Option<String>,
) -> Result<Value, String> {
    if let Some(b) = by {
        body["by"] = Value::String(b);
    }
    let (_, r) = api.send(api.post(path).json(&body)).await?;
    Ok(r)
}

/// `job submit FILE [--wait] [--json]`.
async fn submit_job(
    api: &Api,
    file: &std::path::Path,
    wait: bool,
    json: bool,
) -> Result<ExitCode, String> {
    let (status, job) = submit(api, read_job_file(file)?).await?;
    let id = job["job_id"].as_str().unwrap_or_default().to_string();
    if !wait {
        return Ok(show(json, &job, |job| {
            let verb = if status == 201 {
                "submitted"
            } else {
                "already submitted (same idempotency key)"
            };
            println!(
                "{verb} job {id} ({})",
                job["status"].as_str().unwrap_or("?")
            );
        }));
    }
    let job = wait_for(api, &id, Duration::from_secs(600)).await?;
    let events = fetch_events(api, &id).await?;
    if json {
        println!("{}", serde_json::json!({"job": job, "events": events}));
    } else {
        print_trace(&job, &events);
    }
    Ok(succeeded(&job))
}

/// `job list [--state S] [--limit N] [--cursor C] [--json]`.
async fn list_jobs(
    api: &Api,
    state: Option<String>,
    limit: u16,
    cursor: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let mut q = vec![("limit", limit.to_string())];
    if let Some(s) = state {
        q.push(("state", s));
    }
    if let Some(c) = cursor {
        q.push(("cursor", c));
    }
    let (_, page) = api.send(api.get("/v1/jobs").query(&q)).await?;
    Ok(show(json, &page, |page| {
        let jobs = page["jobs"].as_array().cloned().unwrap_or_default();
        for line in job_table(&jobs) {
            println!("{line}");
        }
        if let Some(c) = page["next_cursor"].as_str() {
            println!("more: --cursor {c}");
        }
    }))
}

/// Exit 0 for a job that succeeded, 1 otherwise.
fn succeeded(job: &Value) -> ExitCode {
    if job["status"] == "succeeded" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Follows the SSE stream of a job, printing each event as it arrives; exits 0 when the
/// job ended `succeeded`.
async fn watch(api: &Api, id: &str, json: bool) -> Result<ExitCode, String> {
    let mut resp = api
        .get(&format!("/v1/jobs/{}/events", path_segment(id)))
        .header("accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| format!("cannot reach server {}: {}", api.base, cause(&e)))?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        return Err(api.problem(status, &body));
    }
    let mut buf = String::new();
    let mut last: Option<Value> = None;
    let mut lines = EventLines::default();
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
                        println!("{}", lines.line(&ev));
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

pub async fn fetch_events(api: &Api, id: &str) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let path = format!("/v1/jobs/{}/events?after={after}", path_segment(id));
        let (_, page) = api.send(api.get(&path)).await?;
        let batch = page["events"].as_array().cloned().unwrap_or_default();
        if batch.is_empty() {
            return Ok(out);
        }
        after = page["next_after"].as_u64().unwrap_or(after);
        out.extend(batch);
    }
}

/// Polls a job until it stops moving on its own (succeeded, failed, cancelled, or
/// waiting for a signal, a confirmation or a timer).
pub async fn wait_for(api: &Api, id: &str, limit: Duration) -> Result<Value, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let path = format!("/v1/jobs/{}", path_segment(id));
    loop {
        let (_, job) = api.send(api.get(&path)).await?;
        match job["status"].as_str() {
            Some("succeeded" | "failed" | "waiting" | "cancelled") => return Ok(job),
            _ if tokio::time::Instant::now() > deadline => {
                return Err(format!("job {id} did not finish in time"))
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The `job list` table: a header and one line per job, each column as wide as its
/// widest cell (ids, states and sequence numbers vary in width).
pub fn job_table(jobs: &[Value]) -> Vec<String> {
    let rows: Vec<[String; 5]> = jobs
        .iter()
        .map(|j| {
            [
                j["job_id"].as_str().unwrap_or("").to_string(),
                j["status"].as_str().unwrap_or("").to_string(),
                j["last_seq"]
                    .as_u64()
                    .map(|n| n.to_string())
                    .unwrap_or_default(),
                j["created_at_ms"]
                    .as_i64()
                    .map(crate::tenant::utc)
                    .unwrap_or_default(),
                j["idempotency_key"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    let header = ["JOB", "STATE", "EVENTS", "CREATED (UTC)", "IDEMPOTENCY KEY"];
    let width = |col: usize| {
        rows.iter()
            .map(|r| r[col].chars().count())
            .chain([header[col].len()])
            .max()
            .unwrap_or(0)
    };
    let (w0, w1, w2, w3) = (width(0), width(1), width(2), width(3));
    std::iter::once(header.map(String::from))
        .chain(rows)
        .map(|r| {
            format!(
                "{:<w0$}  {:<w1$}  {:>w2$}  {:<w3$}  {}",
                r[0], r[1], r[2], r[3], r[4]
            )
            .trim_end()
            .to_string()
        })
        .collect()
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
        if s["agent"].is_object() {
            for line in crate::agents::agent_lines(&s["agent"]) {
                println!("{line}");
            }
        }
    }
    if let Some(e) = job["error"].as_str() {
        println!("error    {e}");
    }
}

pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

/// The first `n` characters of a string field (a hash or key prefix).
fn prefix(v: &Value, n: usize) -> String {
    v.as_str().unwrap_or("").chars().take(n).collect()
}

/// Formats events one by one, with times relative to the first event it was given (the
/// job's first event, for a log read from the start).
#[derive(Default)]
pub struct EventLines {
    t0: Option<i64>,
}

impl EventLines {
    pub fn line(&mut self, e: &Value) -> String {
        let at = e["recorded_at_ms"].as_i64();
        let t0 = *self.t0.get_or_insert(at.unwrap_or(0));
        let dt = at.map(|t| t - t0).unwrap_or(0);
        let kind = e["body"]["type"].as_str().unwrap_or("?");
        let seq = e["seq"].as_u64().map(|n| n.to_string()).unwrap_or_default();
        format!(
            "{seq:>4}  +{:>5}ms  {:<22} {}  [{}…]",
            dt,
            kind,
            event_detail(kind, &e["body"]),
            prefix(&e["hash"], 8)
        )
    }
}

/// The human summary of one event body.
fn event_detail(kind: &str, b: &Value) -> String {
    let s = |k: &str| b[k].as_str().unwrap_or("").to_string();
    match kind {
        "job_submitted" => format!(
            "{} steps",
            b["plan"]["steps"].as_array().map(|a| a.len()).unwrap_or(0)
        ),
        "step_started" => format!(
            "{} via {} ({}), attempt {}, key {}…",
            s("step"),
            s("tool"),
            s("effect"),
            b["attempt"],
            prefix(&b["invocation_key"], 12)
        ),
        "step_succeeded" => format!("{} → {}", s("step"), truncate(&b["output"].to_string(), 60)),
        "step_failed" | "step_outcome_unknown" => format!(
            "{}: {}",
            s("step"),
            b["error"].as_str().or(b["reason"].as_str()).unwrap_or("")
        ),
        "job_succeeded" => truncate(&b["output"].to_string(), 60),
        "job_failed" => s("error"),
        "job_cancelled" => format!("by {}: {}", s("by"), s("reason")),
        "signal_received" => format!("{} from {}", s("signal"), b["by"].as_str().unwrap_or("-")),
        "wait_started" | "wait_timed_out" | "sleep_finished" | "wait_completed" => s("step"),
        "sleep_started" => format!("{} for {}ms", s("step"), b["duration_ms"]),
        "step_confirmed" => format!("{} {} by {}", s("step"), s("outcome"), s("by")),
        "job_parked" => match b["wake_at_ms"].as_i64() {
            Some(t) => format!("until {t} (ms since epoch) or a command"),
            None => "until a signal or confirmation".into(),
        },
        other => crate::agents::event_detail(other, b).unwrap_or_default(),
    }
}

pub fn print_events(events: &[Value]) {
    let mut lines = EventLines::default();
    for e in events {
        println!("{}", lines.line(e));
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_urls_default_to_http_and_bad_ones_are_refused() {
        assert_eq!(
            server_url("127.0.0.1:7420").unwrap(),
            "http://127.0.0.1:7420"
        );
        assert_eq!(
            server_url("localhost:7420").unwrap(),
            "http://localhost:7420"
        );
        assert_eq!(
            server_url("http://127.0.0.1:7420/").unwrap(),
            "http://127.0.0.1:7420"
        );
        assert_eq!(
            server_url("https://aetheris.example/base/").unwrap(),
            "https://aetheris.example/base"
        );
        for bad in [
            "",
            "ftp://x",
            "http://",
            ":7420",
            "http://h:7420/?q=1",
            "http://h/#f",
            "h:99999",
        ] {
            let e = server_url(bad).unwrap_err();
            assert!(e.starts_with("--server"), "{bad:?}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn a_missing_token_says_where_the_cli_looked() {
        let hint = TokenSource::Missing("/x/.aetheris/token (not found)".into()).hint();
        for part in [
            "--token",
            "AETHERIS_TOKEN",
            "/x/.aetheris/token (not found)",
        ] {
            assert!(hint.contains(part), "{hint}");
        }
        let api = Api::new(
            "http://h".into(),
            None,
            TokenSource::Missing(".aetheris/token (not found)".into()),
        )
        .unwrap();
        let e = api.problem(
            401,
            &json!({"title": "Unauthorized", "detail": "missing bearer token"}),
        );
        assert!(
            e.starts_with(
                "401 Unauthorized: missing bearer token (no token was sent: tried --token"
            ),
            "{e}"
        );
        let e = api.problem(
            404,
            &json!({"title": "Not Found", "detail": "job x not found"}),
        );
        assert_eq!(e, "404 Not Found: job x not found");
    }

    #[test]
    fn ids_become_one_path_segment() {
        assert_eq!(path_segment("ada@example.com"), "ada@example.com");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
        assert_eq!(path_segment(".."), "..");
    }

    fn event(seq: u64, at: i64, body: Value) -> Value {
        json!({"seq": seq, "recorded_at_ms": at, "hash": "0123456789abcdef", "body": body})
    }

    #[test]
    fn event_times_are_relative_to_the_first_event_also_one_at_a_time() {
        let events = [
            event(
                1,
                1_000,
                json!({"type": "job_submitted", "plan": {"steps": [{}, {}]}}),
            ),
            event(
                2,
                1_250,
                json!({"type": "step_started", "step": "a", "tool": "echo",
                "effect": "pure", "attempt": 1, "invocation_key": "abcdefabcdefabcdef"}),
            ),
            event(
                3,
                4_000,
                json!({"type": "job_succeeded", "output": {"x": 1}}),
            ),
        ];
        let mut lines = EventLines::default();
        let got: Vec<String> = events.iter().map(|e| lines.line(e)).collect();
        assert!(
            got[0].starts_with("   1  +    0ms  job_submitted"),
            "{}",
            got[0]
        );
        assert!(got[0].contains("2 steps  [01234567…]"), "{}", got[0]);
        assert!(got[1].contains("+  250ms  step_started"), "{}", got[1]);
        assert!(got[1].contains("key abcdefabcdef…"), "{}", got[1]);
        assert!(got[2].contains("+ 3000ms  job_succeeded"), "{}", got[2]);
    }

    #[test]
    fn the_job_table_lines_up_whatever_the_widths() {
        let jobs = [
            json!({"job_id": "01a21429-84f8-7561-b23b-0d9fd8dffe88", "status": "succeeded",
                   "last_seq": 12345, "created_at_ms": 1_700_000_000_123_i64, "idempotency_key": "k-1"}),
            json!({"job_id": "01a21429-84f8-7561-b23b-0d9fd8dffe89", "status": "queued",
                   "last_seq": 1, "created_at_ms": 1_700_000_000_000_i64, "idempotency_key": null}),
        ];
        let lines = job_table(&jobs);
        assert_eq!(lines.len(), 3);
        // Every column starts at the same offset on every line.
        for col in ["STATE", "CREATED (UTC)", "IDEMPOTENCY KEY"] {
            let at = lines[0].find(col).unwrap();
            for l in &lines[1..] {
                assert_eq!(&l[at - 2..at], "  ", "column {col} in {l:?}");
                assert_ne!(&l[at..at + 1], " ", "column {col} in {l:?}");
            }
        }
        // Sequence numbers are right-aligned under EVENTS.
        let end = lines[0].find("EVENTS").unwrap() + "EVENTS".len();
        assert_eq!(&lines[1][end - 5..end], "12345");
        assert_eq!(&lines[2][end - 1..end], "1");
        assert!(lines[1].ends_with("k-1") && lines[2].ends_with('-'));
        assert!(job_table(&[])[0].starts_with("JOB  STATE  EVENTS"));
    }

    #[test]
    fn the_server_is_filled_in_only_where_the_plan_asks_for_it() {
        let plan = json!({"steps": [{"id": "a", "tool": "http", "args": {"url": "${input.server}/healthz"}}]});
        let filled: Value = serde_json::from_str(&fill_server_input(
            json!({"input": {"user": "ada"}, "plan": plan}).to_string(),
            "http://h:1",
        ))
        .unwrap();
        assert_eq!(
            filled["input"],
            json!({"user": "ada", "server": "http://h:1"})
        );
        let no_input: Value = serde_json::from_str(&fill_server_input(
            json!({"plan": plan}).to_string(),
            "http://h:1",
        ))
        .unwrap();
        assert_eq!(no_input["input"], json!({"server": "http://h:1"}));
        // Set by the file: kept.
        let own = json!({"input": {"server": "http://elsewhere"}, "plan": plan}).to_string();
        assert_eq!(fill_server_input(own.clone(), "http://h:1"), own);
        // Not referred to: the body is sent byte for byte.
        let other = r#"{"input": {"user": "ada"}, "plan": {"steps": []}}"#.to_string();
        assert_eq!(fill_server_input(other.clone(), "http://h:1"), other);
        assert_eq!(fill_server_input("{nope".into(), "http://h:1"), "{nope");
    }
}
