//! Agent steps in the CLI: the LLM provider flags of `dev`, `server` and `worker`, `job
//! replay` (replay-diff), and the human lines of agent turns and agent events that
//! `job get`, `job events` and `job watch` print. Provider rules and wire formats live in
//! aetheris-actors; this is parsing and printing only (see docs/agents.md).

use crate::client::{path_segment, Api};
use aetheris_actors::llm::{LlmProvider, LlmProviderKind, LlmSettings};
use clap::Args;
use serde_json::Value;
use std::path::Path;
use std::process::ExitCode;

/// The LLM providers of a process.
#[derive(Args, Debug, Clone, Default)]
pub struct LlmArgs {
    /// An LLM provider for every tenant: NAME=KIND:BASE_URL, KIND one of openai,
    /// anthropic, scripted (repeatable). Its API key is read from the environment
    /// variable AETHERIS_LLM_API_KEY_<NAME> (upper-cased), or from --llm-api-key-file.
    #[arg(long = "llm-provider", value_name = "NAME=KIND:BASE_URL")]
    pub llm_provider: Vec<String>,
    /// The file holding the API key of provider NAME: NAME=FILE (repeatable).
    #[arg(long = "llm-api-key-file", value_name = "NAME=FILE")]
    pub llm_api_key_file: Vec<String>,
}

impl LlmArgs {
    /// The checked settings: the providers file's (the `llm.providers_file` setting:
    /// `--llm-providers`, `AETHERIS_LLM_PROVIDERS` or aetheris.toml), then the flags' (a flag
    /// replaces a file provider of its name).
    pub fn settings(&self, providers_file: Option<&Path>) -> Result<LlmSettings, String> {
        let base = match providers_file {
            None => LlmSettings::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("reading {}: {e}", p.display()))?;
                LlmSettings::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
        };
        base.with_flags(&self.llm_provider, &self.llm_api_key_file)
    }

    /// `aetheris dev`'s settings: these, plus a built-in `scripted` provider (offline
    /// answers, for examples/agent.json) unless one of that name is configured.
    pub fn dev_settings(&self, providers_file: Option<&Path>) -> Result<LlmSettings, String> {
        let mut s = self.settings(providers_file)?;
        if !s.providers.iter().any(|p| p.name == "scripted") {
            s.providers.push(LlmProvider {
                name: "scripted".into(),
                kind: LlmProviderKind::Scripted,
                base_url: String::new(),
                models: Vec::new(),
                api_key_env: None,
                api_key_file: None,
            });
        }
        Ok(s)
    }
}

/// `aetheris job replay JOB --model M [--provider P] [--step S] [--json]`.
pub async fn replay(
    api: &Api,
    id: &str,
    model: String,
    provider: Option<String>,
    step: Option<String>,
    json: bool,
) -> Result<ExitCode, String> {
    let mut body = serde_json::json!({ "model": model });
    if let Some(p) = provider {
        body["provider"] = Value::String(p);
    }
    if let Some(s) = step {
        body["step"] = Value::String(s);
    }
    let (_, report) = api
        .send(
            api.post(&format!("/v1/jobs/{}/replay", path_segment(id)))
                .json(&body),
        )
        .await?;
    if json {
        println!("{report}");
    } else {
        for line in replay_lines(&report) {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a decision was, in one short phrase: the tools called with their arguments, or
/// the final answer.
fn decision(d: &Value) -> String {
    match d["tool_calls"].as_array() {
        Some(calls) if !calls.is_empty() => calls
            .iter()
            .map(|c| {
                format!(
                    "{}({})",
                    c["tool"].as_str().unwrap_or("?"),
                    crate::client::truncate(&c["args"].to_string(), 60)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => format!(
            "answer {:?}",
            crate::client::truncate(d["answer"].as_str().unwrap_or(""), 60)
        ),
    }
}

/// The human report of a replay: one line per turn, then the summary.
pub fn replay_lines(report: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for t in report["turns"].as_array().into_iter().flatten() {
        let at = format!("{}.{}", t["step"].as_str().unwrap_or("?"), t["turn"]);
        let recorded = decision(&t["recorded"]);
        let line = if let Some(e) = t["error"].as_str() {
            format!("{at:<14} not asked: {e}")
        } else {
            let diverged: Vec<&str> = t["divergences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if diverged.is_empty() {
                format!("{at:<14} same      {recorded}")
            } else {
                format!(
                    "{at:<14} DIVERGES ({}): {} → {}",
                    diverged.join(", "),
                    recorded,
                    decision(&t["replayed"])
                )
            }
        };
        out.push(line);
    }
    out.push(format!(
        "{} of {} turns diverge with model {}{}",
        report["diverged"],
        report["turns"].as_array().map_or(0, Vec::len),
        report["model"].as_str().unwrap_or("?"),
        report["first_divergence"]
            .as_str()
            .map(|f| format!("; first at {f}"))
            .unwrap_or_default()
    ));
    out
}

/// The lines `job get` prints under an agent step: each turn's model and tokens and its
/// tool calls with their status, then what the step waits for.
pub fn agent_lines(agent: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for t in agent["turns"].as_array().into_iter().flatten() {
        let calls: Vec<String> = t["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let status = if c["awaits_approval"] == true {
                    "awaiting approval"
                } else {
                    c["status"].as_str().unwrap_or("?")
                };
                format!(
                    "{} {}({}) {status}",
                    c["id"].as_str().unwrap_or(""),
                    c["tool"].as_str().unwrap_or("?"),
                    crate::client::truncate(&c["arguments"].to_string(), 40)
                )
            })
            .collect();
        let what = if calls.is_empty() {
            format!(
                "answer: {}",
                crate::client::truncate(t["content"].as_str().unwrap_or(""), 70)
            )
        } else {
            calls.join("; ")
        };
        out.push(format!(
            "    turn {:>3}  {}  tokens {}/{}  {what}",
            t["turn"].as_u64().unwrap_or(0),
            t["model"].as_str().unwrap_or("?"),
            t["input_tokens"],
            t["output_tokens"]
        ));
    }
    if let Some(turn) = agent["model_call_running"].as_u64() {
        out.push(format!("    turn {turn:>3}  asking the model…"));
    }
    if let Some(b) = agent["budget_wait"].as_object() {
        out.push(format!(
            "    budget: the next call needs {} more tokens; {} of the {} budget of {} are used (signal `budget`: {{\"tokens\": N}} or {{\"stop\": true}})",
            b["needed"], b["used"], b["scope"].as_str().unwrap_or("?"), b["limit"]
        ));
    }
    let awaiting: Vec<&str> = agent["awaiting"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !awaiting.is_empty() {
        out.push(format!("    waiting for signal {}", awaiting.join(", ")));
    }
    out.push(format!(
        "    tokens {} in / {} out",
        agent["input_tokens"], agent["output_tokens"]
    ));
    out
}

/// The human summary of an agent event body (`job events`, `job watch`); `None` for an
/// event that is not an agent's.
pub fn event_detail(kind: &str, b: &Value) -> Option<String> {
    let s = |k: &str| b[k].as_str().unwrap_or("").to_string();
    let short = |v: &Value, n| crate::client::truncate(&v.to_string(), n);
    Some(match kind {
        "agent_started" => match b["error"].as_str() {
            Some(e) => format!("{}: {e}", s("step")),
            None => format!("{} with {}/{}", s("step"), s("provider"), s("model")),
        },
        "agent_model_started" => format!(
            "{} asks {}/{}, attempt {}, {} tokens reserved",
            s("call"),
            s("provider"),
            s("model"),
            b["attempt"],
            b["reserved_tokens"]
        ),
        "agent_model_answered" => {
            let answer = b["messages"]
                .as_array()
                .and_then(|m| m.last())
                .map(|m| &m["message"]);
            let what = match answer {
                Some(m) if m.is_object() => match m["tool_calls"].as_array() {
                    Some(calls) if !calls.is_empty() => format!(
                        "calls {}",
                        calls
                            .iter()
                            .map(|c| c["name"].as_str().unwrap_or("?"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    _ => format!(
                        "answer {:?}",
                        crate::client::truncate(m["content"].as_str().unwrap_or(""), 50)
                    ),
                },
                _ => "a message already in the journal".into(),
            };
            format!(
                "{}: {what}; tokens {}/{}",
                s("call"),
                b["input_tokens"],
                b["output_tokens"]
            )
        }
        "agent_model_failed" => match (b["budget"].as_str(), b["retry_after_ms"].as_u64()) {
            (Some(scope), _) => format!("{}: {} ({scope} budget)", s("call"), s("error")),
            (None, Some(ms)) => format!("{}: {}; again in {ms}ms", s("call"), s("error")),
            (None, None) => format!("{}: {}", s("call"), s("error")),
        },
        "agent_tool_started" => format!(
            "{} {} ({}), attempt {}, key {}…",
            s("call"),
            s("tool"),
            s("effect"),
            b["attempt"],
            s("invocation_key").chars().take(12).collect::<String>()
        ),
        "agent_tool_succeeded" => format!("{} → {}", s("call"), short(&b["output"], 60)),
        "agent_tool_failed" => format!("{}: {}", s("call"), s("error")),
        "agent_tool_outcome_unknown" => format!("{}: {} (confirm it)", s("call"), s("reason")),
        "agent_tool_refused" => format!("{}: {}", s("call"), s("reason")),
        "agent_tool_approved" => format!(
            "{} by {}{}",
            s("call"),
            b["by"].as_str().unwrap_or("?"),
            if b["args"].is_null() {
                String::new()
            } else {
                format!(" with {}", short(&b["args"], 50))
            }
        ),
        "agent_budget_reached" => format!(
            "{}: {} budget {} used + {} needed > {}; waits for signal budget",
            s("step"),
            s("scope"),
            b["used"],
            b["needed"],
            b["limit"]
        ),
        "agent_budget_decided" => match (b["stop"].as_bool(), b["by"].as_str()) {
            (Some(true), by) => format!("{}: stopped by {}", s("step"), by.unwrap_or("?")),
            (_, Some(by)) => format!("{}: +{} tokens by {by}", s("step"), b["raise_tokens"]),
            (_, None) => format!("{}: a new day", s("step")),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn agent_turns_read_as_lines() {
        let agent = json!({"turns": [
            {"turn": 1, "model": "m", "input_tokens": 10, "output_tokens": 2, "content": "",
             "tool_calls": [{"id": "a.1.0", "tool": "refund", "status": "pending",
                             "arguments": {"amount": 3}, "awaits_approval": true}]}],
            "awaiting": ["approve:a.1.0"], "input_tokens": 10, "output_tokens": 2});
        let lines = agent_lines(&agent);
        assert!(
            lines[0].contains("a.1.0 refund({\"amount\":3}) awaiting approval"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("waiting for signal approve:a.1.0"),
            "{lines:?}"
        );
    }

    #[test]
    fn a_replay_reads_as_one_line_per_turn() {
        let report = json!({"model": "m2", "diverged": 1, "first_divergence": "a.2", "turns": [
            {"step": "a", "turn": 1, "recorded": {"tool_calls": [{"tool": "x", "args": {}}]},
             "replayed": {"tool_calls": [{"tool": "x", "args": {}}]}, "divergences": []},
            {"step": "a", "turn": 2, "recorded": {"tool_calls": [], "answer": "yes"},
             "replayed": {"tool_calls": [], "answer": "no"}, "divergences": ["answer"]}]});
        let lines = replay_lines(&report);
        assert!(
            lines[0].starts_with("a.1") && lines[0].contains("same"),
            "{lines:?}"
        );
        assert!(
            lines[1].contains("DIVERGES (answer): answer \"yes\" → answer \"no\""),
            "{lines:?}"
        );
        assert_eq!(lines[2], "1 of 2 turns diverge with model m2; first at a.2");
    }
}
