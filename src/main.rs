//! The `aetheris` command: CLI parsing and wiring only. `dev` runs gateway and worker in
//! one process on the embedded store; `job …` and `tenant …` are HTTP clients of a running
//! server. Every failure prints one line on stderr and exits non-zero (G8).

mod admin;
mod bench;
mod bench_w5;
mod client;
mod cluster;
mod dev;
mod tenant;
mod token;

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
        db: cluster::DbArgs,
        /// Address to listen on.
        #[arg(long, env = "AETHERIS_BIND", default_value = "127.0.0.1:7420")]
        bind: String,
        /// Per-tenant rate limits (JSON file; see docs/limits.md).
        #[arg(long, env = "AETHERIS_LIMITS")]
        limits: Option<PathBuf>,
        #[command(flatten)]
        auth: cluster::AuthArgs,
    },
    /// Issue tokens for clients (docs/auth.md).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run a worker (claims and runs jobs) on PostgreSQL.
    Worker {
        #[command(flatten)]
        db: cluster::DbArgs,
        #[command(flatten)]
        worker: cluster::WorkerArgs,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[command(flatten)]
        db: cluster::DbArgs,
    },
    /// Run the benchmark workloads (DESIGN §7) on the embedded store or `--database-url`.
    Bench(bench::BenchArgs),
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
    /// Read your tenant's access audit log (needs `audit:read`: roles admin, auditor).
    Audit {
        #[command(flatten)]
        conn: ServerConn,
        #[command(subcommand)]
        command: admin::AuditCommand,
    },
}

/// Which server a client command talks to, and as whom (shared by `job`, `tenant`,
/// `user` and `audit`).
#[derive(clap::Args)]
struct ServerConn {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "AETHERIS_SERVER",
        default_value = "http://127.0.0.1:7420"
    )]
    server: String,
    /// Bearer token for a server with authentication (default: `.aetheris/token`, written
    /// by `aetheris dev`).
    #[arg(long, global = true, env = "AETHERIS_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Sign a token: `aetheris token issue --secret-file F --tenant T --role admin --ttl 1h`
    /// (or `--ed25519-signing-key-file F` for an EdDSA token).
    Issue(token::IssueArgs),
    /// Make an Ed25519 key pair: `aetheris token keygen --out keys/issuer` writes
    /// `issuer.key` (the signing key; keep it secret) and `issuer.pub` (for the server).
    Keygen(token::KeygenArgs),
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Submit a job from a JSON file (or `-` for stdin).
    Submit {
        file: PathBuf,
        /// Wait until the job finishes and print its trace.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show one job and its steps.
    Get {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (queued, running, waiting, succeeded, failed).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue after this cursor (from a previous page).
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: stored durably, then applied by the worker running it.
    Cancel {
        id: String,
        /// Why (recorded in the job_cancelled event).
        #[arg(long)]
        reason: Option<String>,
        /// Who cancels (recorded; replaced by the token's identity once auth exists).
        #[arg(long)]
        by: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Send a signal (e.g. an approval) to a job; `wait` steps for that name resume.
    Signal {
        id: String,
        name: String,
        /// JSON payload.
        #[arg(long, default_value = "null")]
        payload: String,
        /// Idempotency: the same signal id is applied once.
        #[arg(long)]
        signal_id: Option<String>,
        /// Who sends it (an approval's approver).
        #[arg(long)]
        by: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Resolve an outcome_unknown step: it did happen (`succeeded`) or not (`not_executed`).
    Confirm {
        id: String,
        step: String,
        /// succeeded or not_executed.
        #[arg(long)]
        outcome: String,
        /// JSON output of the step (with `succeeded`).
        #[arg(long)]
        output: Option<String>,
        #[arg(long)]
        note: Option<String>,
        #[arg(long)]
        by: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Follow a job's events live (Server-Sent Events) until it finishes.
    Watch {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Show a job's events (its hash-chained log).
    Events {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Dev(args) => dev::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Server {
            db,
            bind,
            limits,
            auth,
        } => cluster::server(db, bind, limits, auth),
        Command::Token {
            command: TokenCommand::Issue(a),
        } => token::issue(a),
        Command::Token {
            command: TokenCommand::Keygen(a),
        } => token::keygen(a),
        Command::Worker { db, worker } => cluster::worker(db, worker),
        Command::Migrate { db } => cluster::migrate(db),
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
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
