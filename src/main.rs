//! The `aetheris` command: CLI parsing and wiring only. `dev` runs gateway and worker in
//! one process on the embedded store; `job …`, `tenant …` and `status` are HTTP clients of
//! a running server; `evidence verify` checks a package offline. Every failure — bad arguments included — prints one `error: …` line on stderr
//! and exits non-zero (G8); every flag and argument has a help line (a test checks).
//! `dev`, `server`, `worker` and `migrate` first resolve their settings (`config`: flags,
//! `AETHERIS_*` variables, the config file, defaults) and only then start.

mod admin;
mod agents;
mod client;
mod cluster;
mod config;
mod dev;
mod evidence;
mod startup;
mod status;
mod telemetry;
mod tenant;
mod token;

use aetheris_runtime::JobStatus;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "aetheris",
    version,
    about = "Durable execution runtime for AI-agent jobs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run gateway and worker in one process on the embedded store (redb).
    Dev(dev::DevArgs),
    /// Run the HTTP gateway on PostgreSQL.
    Server {
        #[command(flatten)]
        settings: config::Flags<config::ForServer>,
        #[command(flatten)]
        llm: agents::LlmArgs,
    },
    /// Make keys and issue tokens for clients (docs/auth.md).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run a worker (claims and runs jobs) on PostgreSQL.
    ///
    /// It also serves /healthz, /readyz and /metrics on --admin-bind (default
    /// 127.0.0.1:7421; no authentication, so keep it on loopback or a private network).
    Worker {
        #[command(flatten)]
        settings: config::Flags<config::ForWorker>,
        #[command(flatten)]
        llm: agents::LlmArgs,
    },
    /// Apply the database migrations (forward-only, under an advisory lock) and exit;
    /// `server` and `worker` also apply them at start unless `--no-migrate`.
    Migrate {
        #[command(flatten)]
        settings: config::Flags<config::ForMigrate>,
    },
    /// Run the benchmark workloads (W1, W3-W7, hostile; docs/benchmarks.md) on the embedded
    /// store or `--database-url`.
    Bench {
        #[command(flatten)]
        args: aetheris_bench::BenchArgs,
        /// Export the measured node's spans over OTLP/HTTP to this collector (as `dev
        /// --otlp-endpoint`), to measure what tracing costs; unset: no span is exported.
        #[arg(long, value_name = "URL")]
        otlp_endpoint: Option<String>,
    },
    /// Submit and inspect jobs on a running server.
    Job {
        #[command(flatten)]
        conn: ServerConn,
        #[command(subcommand)]
        command: JobCommand,
    },
    /// Manage tenants on a running server (needs a token with `tenant:admin`, role admin).
    Tenant {
        #[command(flatten)]
        conn: ServerConn,
        #[command(subcommand)]
        command: tenant::TenantCommand,
    },
    /// Manage your tenant's users and their roles (needs `tenant:admin`, role admin).
    User {
        #[command(flatten)]
        conn: ServerConn,
        #[command(subcommand)]
        command: admin::UserCommand,
    },
    /// Show every gateway and worker process of the deployment with its actors by kind:
    /// alive, mailbox depth, restarts and panics with the last reason, leases held,
    /// heartbeat age, uptime and version (needs an admin token of the `default` tenant;
    /// docs/operations.md).
    Status {
        #[command(flatten)]
        conn: ServerConn,
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// Read your tenant's access audit log (needs `audit:read`: roles admin, auditor).
    Audit {
        #[command(flatten)]
        conn: ServerConn,
        #[command(subcommand)]
        command: admin::AuditCommand,
    },
    /// Evidence packages and transparency checkpoints (docs/evidence.md): make a signing
    /// key, export a job's signed package, verify one offline, keep and check checkpoints.
    Evidence {
        #[command(subcommand)]
        command: evidence::EvidenceCommand,
    },
}

/// Which server a client command talks to, and as whom (shared by `job`, `tenant`,
/// `user`, `audit` and `status`).
#[derive(clap::Args)]
struct ServerConn {
    /// Server URL; `HOST:PORT` means `http://HOST:PORT`.
    #[arg(
        long,
        global = true,
        env = "AETHERIS_SERVER",
        default_value = "http://127.0.0.1:7420"
    )]
    server: String,
    /// Bearer token (default: the file `.aetheris/token` in the working directory, which
    /// `aetheris dev` writes).
    #[arg(long, global = true, env = "AETHERIS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Sign a token: `aetheris token issue --secret-file F --tenant T --role admin --ttl 1h`
    /// (or `--ed25519-signing-key-file F` for an EdDSA token).
    Issue(token::IssueArgs),
    /// Make a key: `aetheris token keygen --out keys/issuer` writes an Ed25519 pair,
    /// `issuer.key` (the signing key; keep it secret) and `issuer.pub` (for the server);
    /// `--hs256 --out auth` writes the HS256 secret `auth.key` (for both).
    Keygen(token::KeygenArgs),
}

/// The job states `job list --state` accepts, from the runtime's own list.
fn job_states() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(JobStatus::ALL.map(|s| s.as_str()))
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Submit a job. If its plan refers to `${input.server}` and its input does not set
    /// `server`, the URL of the server it is submitted to is filled in.
    Submit {
        /// The job as JSON (`{"input": …, "plan": {"steps": […]}}`), or `-` for stdin.
        file: PathBuf,
        /// Wait until the job stops (succeeded, failed, cancelled or waiting), print its
        /// trace, and exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// Print the server's JSON answer (with `--wait`: the job and its events).
        #[arg(long)]
        json: bool,
    },
    /// Show one job and its steps.
    Get {
        /// Job id.
        id: String,
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state.
        #[arg(long, value_parser = job_states())]
        state: Option<String>,
        /// At most this many jobs (1-1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..=1000))]
        limit: u16,
        /// Continue after this cursor (the `more: --cursor …` of a previous page).
        #[arg(long)]
        cursor: Option<String>,
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: stored durably, then applied by the worker running it.
    Cancel {
        /// Job id.
        id: String,
        /// Why (recorded in the job_cancelled event; at most 1024 bytes).
        #[arg(long)]
        reason: Option<String>,
        /// Who cancels: only honoured by a server without authentication
        /// (`--insecure-no-auth`); otherwise the token's identity (`sub`) is recorded.
        #[arg(long)]
        by: Option<String>,
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// Send a signal (e.g. an approval) to a job; `wait` steps for that name resume.
    Signal {
        /// Job id.
        id: String,
        /// Signal name (what the plan's `wait` step waits for).
        name: String,
        /// JSON payload (at most 64 KiB).
        #[arg(long, default_value = "null")]
        payload: String,
        /// Idempotency: the same signal id is applied once.
        #[arg(long)]
        signal_id: Option<String>,
        /// Who sends it: only honoured by a server without authentication
        /// (`--insecure-no-auth`); otherwise the token's identity (`sub`) is recorded.
        #[arg(long)]
        by: Option<String>,
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// Resolve an outcome_unknown step: it did happen (`succeeded`) or not (`not_executed`,
    /// it runs again with the same invocation key).
    Confirm {
        /// Job id.
        id: String,
        /// Id of the step whose outcome is unknown.
        step: String,
        /// What happened to the call.
        #[arg(long, value_parser = ["succeeded", "not_executed"])]
        outcome: String,
        /// JSON output of the step (with `succeeded`; at most 256 KiB).
        #[arg(long)]
        output: Option<String>,
        /// A note for the record, e.g. where the outcome was checked (at most 1024 bytes).
        #[arg(long)]
        note: Option<String>,
        /// Who confirms: only honoured by a server without authentication
        /// (`--insecure-no-auth`); otherwise the token's identity (`sub`) is recorded.
        #[arg(long)]
        by: Option<String>,
        /// Print the server's JSON answer as is.
        #[arg(long)]
        json: bool,
    },
    /// Follow a job's events live (Server-Sent Events) until it ends; exit 0 only if it
    /// succeeded.
    Watch {
        /// Job id.
        id: String,
        /// Print each event as JSON (one per line).
        #[arg(long)]
        json: bool,
    },
    /// Show a job's events (its hash-chained log).
    Events {
        /// Job id.
        id: String,
        /// Print the events as one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Ask another model every recorded model turn of the job's agent steps (tool results
    /// from the record: no tool is called) and show where its decisions diverge.
    Replay {
        /// Job id.
        id: String,
        /// The model to ask.
        #[arg(long)]
        model: String,
        /// The provider to ask it of (default: each turn's recorded provider).
        #[arg(long)]
        provider: Option<String>,
        /// Only this agent step's turns.
        #[arg(long)]
        step: Option<String>,
        /// Print the server's JSON report as is.
        #[arg(long)]
        json: bool,
    },
}

/// A command-line error as one line: clap's message (without its usage block) and the
/// `--help` of the (sub)command named in `args` (the process's arguments).
fn usage_error_line(e: &clap::Error, args: &[String]) -> String {
    let text = e.render().to_string();
    let message: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    let mut cmd = <Cli as clap::CommandFactory>::command();
    let mut path = vec!["aetheris".to_string()];
    for arg in args.iter().skip(1) {
        let Some(sub) = cmd.find_subcommand(arg).cloned() else {
            continue;
        };
        path.push(sub.get_name().to_string());
        cmd = sub;
    }
    format!("{message} (see `{} --help`)", path.join(" "))
}

/// Runs a command that has settings: resolves them, then prints them (`--print-config`)
/// or starts logging and runs `command`. A bad flag is a usage error (exit 2, like clap's);
/// any other bad setting is an error of the command (exit 1).
fn configured<C: config::ForCommand>(
    flags: &config::Flags<C>,
    command: impl FnOnce(&config::Effective) -> Result<ExitCode, String>,
) -> Result<ExitCode, String> {
    let effective = match flags.resolve() {
        Ok(effective) => effective,
        Err(e) if e.from_flag => {
            eprintln!(
                "error: {} (see `aetheris {} --help`)",
                e.message,
                C::CMD.name()
            );
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.message),
    };
    if flags.print_config() {
        print!("{}", config::render::effective_toml(&effective));
        return Ok(ExitCode::SUCCESS);
    }
    // `_spans` flushes the spans still queued once the command is done.
    let _spans = match effective.text(config::Key::LogFilter) {
        Some(filter) => {
            let otlp = effective.text(config::Key::OtlpEndpoint);
            telemetry::init(filter, otlp, C::CMD.name())?
        }
        None => None,
    };
    command(&effective)
}

/// `aetheris bench`, its node's spans exported if asked (nothing is logged: the report
/// is the output).
fn bench(args: aetheris_bench::BenchArgs, otlp_endpoint: Option<&str>) -> Result<ExitCode, String> {
    let _spans = match otlp_endpoint {
        Some(endpoint) => telemetry::init("off", Some(endpoint), "bench")?,
        None => None,
    };
    aetheris_bench::run(args)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            let args: Vec<String> = std::env::args().collect();
            eprintln!("error: {}", usage_error_line(&e, &args));
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Dev(args) => configured(&args.settings, |c| dev::run(c, args.run, &args.llm)),
        Command::Bench {
            args,
            otlp_endpoint,
        } => bench(args, otlp_endpoint.as_deref()),
        Command::Server { settings, llm } => configured(&settings, |c| cluster::server(c, &llm)),
        Command::Token {
            command: TokenCommand::Issue(a),
        } => token::issue(a),
        Command::Token {
            command: TokenCommand::Keygen(a),
        } => token::keygen(a),
        Command::Worker { settings, llm } => configured(&settings, |c| cluster::worker(c, &llm)),
        Command::Migrate { settings } => configured(&settings, cluster::migrate),
        Command::Job { conn, command } => client::run(&conn.server, conn.token.as_deref(), command),
        Command::Tenant { conn, command } => {
            tenant::run(&conn.server, conn.token.as_deref(), command)
        }
        Command::User { conn, command } => {
            admin::user(&conn.server, conn.token.as_deref(), command)
        }
        Command::Audit { conn, command } => {
            admin::audit(&conn.server, conn.token.as_deref(), command)
        }
        Command::Status { conn, json } => status::run(&conn.server, conn.token.as_deref(), json),
        Command::Evidence { command } => evidence::run(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, whatever the cause's text holds.
            eprintln!(
                "error: {}",
                e.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of every command, `bench`'s (from aetheris-bench) included.
    fn every_arg(cmd: &clap::Command, path: &str, out: &mut Vec<(String, String, Option<String>)>) {
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            out.push((
                path.to_string(),
                id.to_string(),
                a.get_help().map(|h| h.to_string()),
            ));
        }
        for sub in cmd.get_subcommands() {
            every_arg(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    #[test]
    fn every_flag_and_argument_has_help_that_stays_in_the_repository() {
        Cli::command().debug_assert();
        let mut args = Vec::new();
        every_arg(&Cli::command(), "aetheris", &mut args);
        assert!(args.len() > 60, "{}", args.len());
        for (cmd, id, help) in &args {
            let help = help.as_deref().unwrap_or("");
            assert!(!help.trim().is_empty(), "`{cmd}` argument {id} has no help");
            assert!(
                !help.contains("DESIGN") && !help.contains('§'),
                "`{cmd} {id}`: {help}"
            );
        }
        let mut all = Cli::command();
        let text = all.render_long_help().to_string();
        assert!(!text.contains("DESIGN"), "{text}");
        let bench = all
            .find_subcommand_mut("bench")
            .unwrap()
            .render_help()
            .to_string();
        assert!(!bench.contains("DESIGN"), "{bench}");
    }

    #[test]
    fn job_list_offers_every_state_of_the_runtime() {
        let mut cmd = Cli::command();
        let list = cmd
            .find_subcommand_mut("job")
            .unwrap()
            .find_subcommand_mut("list")
            .unwrap();
        let help = list.render_long_help().to_string();
        for s in JobStatus::ALL {
            assert!(
                help.contains(s.as_str()),
                "{} missing in {help}",
                s.as_str()
            );
        }
        assert!(Cli::try_parse_from(["aetheris", "job", "list", "--state", "cancelled"]).is_ok());
        assert!(Cli::try_parse_from(["aetheris", "job", "list", "--state", "done"]).is_err());
        assert!(Cli::try_parse_from(["aetheris", "job", "list", "--limit", "1001"]).is_err());
    }

    #[test]
    fn usage_errors_are_one_line_naming_the_command() {
        let line_for = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            let e = Cli::try_parse_from(&args).err().unwrap();
            let line = usage_error_line(&e, &args);
            assert_eq!(line.lines().count(), 1, "{line}");
            line
        };
        let line = line_for(&["aetheris", "server", "--database-ur", "x"]);
        assert!(
            line.starts_with("unexpected argument '--database-ur'"),
            "{line}"
        );
        assert!(line.ends_with("(see `aetheris server --help`)"), "{line}");
        let line = line_for(&[
            "aetheris", "job", "--server", "x", "list", "--state", "done",
        ]);
        assert!(
            line.starts_with("invalid value 'done' for '--state <STATE>'"),
            "{line}"
        );
        assert!(line.ends_with("(see `aetheris job list --help`)"), "{line}");
        let line = line_for(&["aetheris", "nope"]);
        assert!(line.ends_with("(see `aetheris --help`)"), "{line}");
    }
}
