//! The README's command blocks, run as written: the docs cannot drift from the binary.
//!
//! `readme_walkthrough_runs_top_to_bottom` takes the README's first ```sh block (the
//! quickstart: `cargo run -- dev --data-dir /tmp/aetheris-quickstart --run …`) and every
//! ```sh block of the "Five-minute walkthrough" section, and runs them in order as ONE
//! bash script (so `export`s and `JOB=$(…)` carry from line to line, as in the user's
//! shell) in a fresh directory holding the repository's `examples/`. The README's second
//! block, `cargo test --workspace`, is the only one left out (it is this test's own
//! runner; the test checks that it is exactly that line). The production section is run
//! the same way by `pg_bootstrap.rs` on a throwaway PostgreSQL.
//!
//! The blocks run unchanged except for what ties them to one machine:
//! - `cargo run [flags] -- ARGS` runs the built binary with ARGS (a `cargo` shell
//!   function; any other cargo command fails the test), and `aetheris` on `PATH` is the
//!   built binary;
//! - the default address `127.0.0.1:7420` becomes a free port, both in the text and in
//!   `AETHERIS_BIND` (the default of `dev --bind`), and `/tmp/aetheris-quickstart`
//!   becomes a directory of the test; each replaced text must occur in the blocks, so a
//!   README that changes them fails here instead of silently using the real port;
//! - no `AETHERIS_*` variable of the test's environment reaches the script.
//!
//! The script runs under `set -Eeuo pipefail` with `inherit_errexit`, so any failing
//! command — also inside `$(…)` and pipes — fails the test, which prints the command
//! (an ERR trap), the trace (`set -x`) and the output. `export NAME=$(…)` would hide a
//! failure (the exit status is `export`'s), so the harness refuses blocks that use it.
//! The script's process group — background `dev`, `server`, `worker` included — is
//! killed (SIGTERM, then SIGKILL) when the test ends, however it ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The README's text.
pub fn readme() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The ```sh blocks of the section under the level-2 heading `## {heading}` (up to the
/// next level-2 heading), or, with `None`, of the text before the first level-2 heading.
pub fn sh_blocks(markdown: &str, heading: Option<&str>) -> Vec<String> {
    let mut inside = heading.is_none();
    let mut found = heading.is_none();
    let mut blocks = Vec::new();
    // In a fenced block: `Some(lines)` collecting a ```sh block of the section, `None`
    // skipping any other.
    let mut fence: Option<Option<Vec<&str>>> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        if let Some(block) = fence.as_mut() {
            if trimmed.starts_with("```") {
                if let Some(lines) = block.take() {
                    blocks.push(lines.join("\n"));
                }
                fence = None;
            } else if let Some(lines) = block.as_mut() {
                lines.push(trimmed);
            }
            continue;
        }
        if trimmed.starts_with("```") {
            fence = Some((inside && trimmed == "```sh").then(Vec::new));
            continue;
        }
        if let Some(h) = line.strip_prefix("## ") {
            inside = heading == Some(h.trim());
            found |= inside;
        }
    }
    assert!(
        found,
        "README has no section \"## {}\"",
        heading.unwrap_or("")
    );
    blocks
}

/// A free loopback port (bound and released; good enough for a test).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// Bash before the README's lines: strict mode, the failing command on stderr, and
/// `cargo run … -- ARGS` as the built binary.
const PREAMBLE: &str = r#"set -Eeuo pipefail
shopt -s inherit_errexit
trap 'rc=$?; if [ -n "${FUNCNAME[0]:-}" ]; then l=${BASH_LINENO[0]}; else l=$LINENO; fi; echo "README COMMAND FAILED (exit $rc): $(sed -n "${l}p" "$0")" >&2' ERR
cargo() {
  if [ "${1:-}" != run ]; then echo "the README may only use cargo run, not: cargo $*" >&2; return 97; fi
  shift
  while [ "$#" -gt 0 ] && [ "$1" != -- ]; do shift; done
  if [ "$#" -eq 0 ]; then echo "cargo run without --" >&2; return 97; fi
  shift
  aetheris "$@"
}
set -x
"#;

/// One README script run: where it ran and what it printed.
pub struct ScriptRun {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The README's blocks as a script, with the given replacements made (each must occur).
pub fn script_of(blocks: &[String], replace: &[(&str, String)]) -> String {
    let mut text = blocks.join("\n");
    for line in text.lines() {
        let l = line.trim_start();
        assert!(
            !(l.starts_with("export ") && l.contains("=$(")),
            "README line {l:?}: `export NAME=$(…)` hides a failure of the command; \
             write `NAME=$(…)` and use or export it after"
        );
    }
    for (from, to) in replace {
        assert!(
            text.contains(from),
            "the README blocks no longer contain {from:?}, which this test replaces; \
             update tests/e2e/readme.rs with the README"
        );
        text = text.replace(from, to);
    }
    text
}

/// The process group of a running script; killed on drop.
struct Group(Child);

impl Group {
    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
    }
    fn alive(&self) -> bool {
        Command::new("kill")
            .args(["-0", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.alive() && Instant::now() < deadline {
            let _ = self.0.try_wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        self.signal("-KILL");
        let _ = self.0.wait();
    }
}

/// Runs `script` with bash in `cwd` (after the preamble), with `aetheris` and the
/// directories of `path_dirs` first on `PATH` and `env` set; gives up after `limit`.
pub fn run_script(
    cwd: &Path,
    script: &str,
    env: &[(&str, String)],
    path_dirs: &[PathBuf],
    limit: Duration,
) -> ScriptRun {
    use std::os::unix::process::CommandExt;
    let bin = cwd.join(".readme-bin");
    std::fs::create_dir_all(&bin).expect("create bin dir");
    let link = bin.join("aetheris");
    if !link.exists() {
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_aetheris"), &link).expect("symlink");
    }
    let mut path = vec![bin];
    path.extend(path_dirs.iter().cloned());
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let file = cwd.join(".readme-script.sh");
    std::fs::write(&file, format!("{PREAMBLE}{script}\n")).expect("write script");
    let (out, err) = (cwd.join(".readme-stdout"), cwd.join(".readme-stderr"));
    let mut cmd = Command::new("bash");
    cmd.arg(&file)
        .current_dir(cwd)
        .env("PATH", std::env::join_paths(path).expect("PATH"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("stdout file"))
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .process_group(0);
    for (k, _) in std::env::vars() {
        if k.starts_with("AETHERIS_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut group = Group(cmd.spawn().expect("run bash"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = group.0.try_wait().expect("wait for bash") {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(group);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let mut stderr = read(&err);
    if status.is_none() {
        stderr.push_str(&format!("\nREADME SCRIPT TIMED OUT after {limit:?}"));
    }
    ScriptRun {
        ok: status.is_some_and(|s| s.success()),
        stdout: read(&out),
        stderr,
    }
}

/// Panics with the script's output unless it succeeded.
pub fn assert_ran(what: &str, run: &ScriptRun) {
    assert!(
        run.ok,
        "{what} failed.\n--- stderr (trace) ---\n{}\n--- stdout ---\n{}",
        run.stderr, run.stdout
    );
}

/// A fresh working directory holding the repository's `examples/`, as the README's
/// "from the repository root" expects.
pub fn workdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::os::unix::fs::symlink(repo().join("examples"), dir.path().join("examples"))
        .expect("link examples");
    dir
}

#[test]
fn readme_walkthrough_runs_top_to_bottom() {
    let text = readme();
    let intro = sh_blocks(&text, None);
    assert_eq!(
        intro.len(),
        2,
        "the README starts with the quickstart and the test command"
    );
    assert_eq!(intro[1].trim(), "cargo test --workspace");
    assert!(
        intro[0].trim().starts_with(
            "cargo run -- dev --data-dir /tmp/aetheris-quickstart --run examples/quickstart.json"
        ),
        "{}",
        intro[0]
    );
    let walkthrough = sh_blocks(&text, Some("Five-minute walkthrough"));
    assert!(walkthrough.len() >= 4, "{walkthrough:?}");
    let mut blocks = vec![intro[0].clone()];
    blocks.extend(walkthrough);

    let dir = workdir();
    let addr = format!("127.0.0.1:{}", free_port());
    let quickstart_dir = dir.path().join("aetheris-quickstart");
    let script = script_of(
        &blocks,
        &[
            ("127.0.0.1:7420", addr.clone()),
            (
                "/tmp/aetheris-quickstart",
                quickstart_dir.display().to_string(),
            ),
        ],
    );
    let run = run_script(
        dir.path(),
        &script,
        &[("AETHERIS_BIND", addr)],
        &[],
        Duration::from_secs(300),
    );
    assert_ran("the README walkthrough", &run);
    // Shown with --nocapture: what a user would see.
    println!("{}", run.stdout);
    // The quickstart printed its trace and succeeded on the node's own address.
    assert!(
        run.stdout.contains("job_succeeded"),
        "stdout: {}",
        run.stdout
    );
    assert!(
        quickstart_dir.join("aetheris.redb").exists(),
        "the quickstart used its --data-dir"
    );
    assert!(
        run.stdout.contains("created tenant acme"),
        "stdout: {}",
        run.stdout
    );
}

#[test]
fn a_failing_readme_command_fails_the_run() {
    let dir = workdir();
    for script in [
        "true\nfalse\ntrue",
        "X=$(false)\necho $X",
        "false | cat",
        "cargo build",
        "aetheris job get nope --server 127.0.0.1:1",
    ] {
        let run = run_script(dir.path(), script, &[], &[], Duration::from_secs(60));
        assert!(!run.ok, "{script:?} passed: {}", run.stderr);
        assert!(
            run.stderr.contains("README COMMAND FAILED"),
            "{script:?}: {}",
            run.stderr
        );
    }
    let ok = run_script(
        dir.path(),
        "cargo run -q -- --version",
        &[],
        &[],
        Duration::from_secs(60),
    );
    assert_ran("cargo run -q -- --version", &ok);
    assert!(ok.stdout.starts_with("aetheris "), "{}", ok.stdout);
}

#[test]
fn blocks_are_taken_from_their_section_only() {
    let md = "intro\n```sh\na\n```\n## One\n```sh\nb\n  c\n```\n```text\n## not a heading\n```\n### Sub\n  ```sh\n  d\n  ```\n## Two\n```sh\ne\n```\n";
    assert_eq!(sh_blocks(md, None), vec!["a"]);
    assert_eq!(sh_blocks(md, Some("One")), vec!["b\nc", "d"]);
    assert_eq!(sh_blocks(md, Some("Two")), vec!["e"]);
    let hidden = std::panic::catch_unwind(|| {
        script_of(&["export T=$(aetheris token issue)".to_string()], &[])
    });
    assert!(hidden.is_err(), "export NAME=$(…) must be refused");
}

#[test]
fn readme_agents_section_runs() {
    let blocks = sh_blocks(&readme(), Some("Agents"));
    assert_eq!(blocks.len(), 1, "{blocks:?}");
    assert!(blocks[0].contains("examples/agent.json"), "{}", blocks[0]);
    let dir = workdir();
    let addr = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("aetheris-agents");
    let script = script_of(
        &blocks,
        &[("/tmp/aetheris-agents", data.display().to_string())],
    );
    let run = run_script(
        dir.path(),
        &script,
        &[("AETHERIS_BIND", addr)],
        &[],
        Duration::from_secs(120),
    );
    assert_ran("the README's agent example", &run);
    for want in [
        "agent_model_answered",
        "agent_tool_succeeded",
        "job_succeeded",
    ] {
        assert!(run.stdout.contains(want), "{want} not in {}", run.stdout);
    }
}
