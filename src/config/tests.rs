//! Resolution as a whole: precedence and sources, the error for each way a setting can be
//! wrong, `--print-config` read back as a config file, docs/configuration.md against the
//! code, examples/aetheris.toml, and the commands' own settings structs.

use super::settings::{Cmd, Key, Value, SETTINGS};
use super::*;
use std::collections::HashMap;

/// A temporary directory with `aetheris.toml` holding `text`.
fn config_dir(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("aetheris.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn given(config: Option<&Path>, flags: &[(Key, &str)]) -> Given {
    let mut g = Given {
        config: config.map(Path::to_path_buf),
        ..Given::default()
    };
    for (k, v) in flags {
        g.values.entry(*k).or_default().push(v.to_string());
    }
    g
}

fn resolve_env(cmd: Cmd, given: &Given, env: &[(&str, &str)]) -> Result<Effective, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    resolve_with(cmd, given, &move |k| env.get(k).cloned())
}

const URL: &str = "postgres://ada:s3cret@127.0.0.1:5432/aetheris";

#[test]
fn a_flag_beats_a_variable_beats_the_file_beats_the_default() {
    let (_d, path) = config_dir(&format!(
        "[database]\nurl = \"{URL}\"\n[worker]\nmax_jobs = 10\nsnapshot_every = 20\n\
         drain_grace_ms = 30\nadmin_bind = \"127.0.0.1:9001\"\n"
    ));
    let g = given(
        Some(&path),
        &[(Key::MaxJobs, "12"), (Key::AdminBind, "127.0.0.1:9003")],
    );
    let e = resolve_env(
        Cmd::Worker,
        &g,
        &[
            ("AETHERIS_MAX_JOBS", "11"),
            ("AETHERIS_SNAPSHOT_EVERY", "21"),
            ("AETHERIS_ADMIN_BIND", "127.0.0.1:9002"),
            ("AETHERIS_DRAIN_GRACE_MS", ""),
        ],
    )
    .unwrap();
    let file_line = |line| Source::File {
        path: path.clone(),
        line,
    };
    assert_eq!(e.number(Key::MaxJobs), 12);
    assert_eq!(e.source(Key::MaxJobs), Some(&Source::Flag("max-jobs")));
    assert_eq!(e.number(Key::SnapshotEvery), 21);
    assert_eq!(
        e.source(Key::SnapshotEvery),
        Some(&Source::Env("AETHERIS_SNAPSHOT_EVERY"))
    );
    // An empty variable counts as unset.
    assert_eq!(e.number(Key::DrainGraceMs), 30);
    assert_eq!(e.source(Key::DrainGraceMs), Some(&file_line(6)));
    assert_eq!(e.text(Key::AdminBind), Some("127.0.0.1:9003"));
    assert_eq!(e.text(Key::DatabaseUrl), Some(URL));
    assert_eq!(e.source(Key::DatabaseUrl), Some(&file_line(2)));
    assert_eq!(e.number(Key::LeaseTtlMs), 5_000);
    assert_eq!(e.source(Key::LeaseTtlMs), Some(&Source::Default));
    // Settings the worker does not read are not resolved for it.
    assert_eq!(e.value(Key::Bind), &Value::Unset);
    assert_eq!(e.config_file.as_ref().unwrap().named_by, "--config");
}

#[test]
fn the_config_file_is_named_by_flag_or_variable_and_never_found_implicitly() {
    let (dir, path) = config_dir("[worker]\nmax_jobs = 3\n");
    let by_env = resolve_env(
        Cmd::Dev,
        &Given::default(),
        &[("AETHERIS_CONFIG", path.to_str().unwrap())],
    )
    .unwrap();
    assert_eq!(by_env.number(Key::MaxJobs), 3);
    assert_eq!(by_env.config_file.unwrap().named_by, "AETHERIS_CONFIG");
    // `--config` wins over AETHERIS_CONFIG.
    let (_d2, other) = config_dir("[worker]\nmax_jobs = 4\n");
    let both = resolve_env(
        Cmd::Dev,
        &given(Some(&other), &[]),
        &[("AETHERIS_CONFIG", path.to_str().unwrap())],
    )
    .unwrap();
    assert_eq!(both.number(Key::MaxJobs), 4);
    // No flag, no variable: no file, whatever is in the working directory.
    let none = resolve_env(Cmd::Dev, &Given::default(), &[]).unwrap();
    assert!(none.config_file.is_none());
    assert_eq!(none.number(Key::MaxJobs), 256);
    drop(dir);
}

#[test]
fn each_way_a_setting_can_be_wrong_is_one_message_naming_key_and_source() {
    let (_d, path) = config_dir("[worker]\nlease_ttl_ms = \"fast\"\n");
    let p = path.display().to_string();
    let (_d2, shared) = config_dir("[gateway]\nbind = \"127.0.0.1:1\"\n[dev]\ndat_dir = \"x\"\n");
    let s = shared.display().to_string();
    let (_d3, ttl) = config_dir("[worker]\nlease_ttl_ms = 1000\n");
    let t = ttl.display().to_string();
    let db = ("AETHERIS_DATABASE_URL", URL);
    /// Command, flags, environment, the start of the message, whether a flag is wrong.
    type Case<'a> = (Cmd, Given, Vec<(&'a str, &'a str)>, String, bool);
    let cases: Vec<Case> = vec![
        (
            Cmd::Worker,
            given(Some(&path), &[]),
            vec![db],
            format!("{p}:2: [worker] lease_ttl_ms: expected a whole number from 100 to 86400000, got \"fast\""),
            false,
        ),
        (
            Cmd::Worker,
            Given::default(),
            vec![db, ("AETHERIS_MAX_JOBS", "lots")],
            "AETHERIS_MAX_JOBS: expected a whole number from 1 to 1000000, got \"lots\"".into(),
            false,
        ),
        (
            Cmd::Worker,
            given(None, &[(Key::MaxJobs, "0")]),
            vec![db],
            "--max-jobs: expected a whole number from 1 to 1000000, got 0".into(),
            true,
        ),
        // A wrong flag is reported before a missing URL.
        (
            Cmd::Server,
            given(None, &[(Key::Bind, "nowhere")]),
            vec![],
            "--bind: expected HOST:PORT, got \"nowhere\"".into(),
            true,
        ),
        (
            Cmd::Server,
            Given::default(),
            vec![],
            "database.url is required: give --database-url, AETHERIS_DATABASE_URL, or `url` \
             under [database] in the config file (--config)"
                .into(),
            false,
        ),
        (
            Cmd::Dev,
            Given::default(),
            vec![("AETHERIS_NO_MIGRATE", "maybe")],
            "AETHERIS_NO_MIGRATE: expected true or false, got \"maybe\"".into(),
            false,
        ),
        // A key no command knows fails every command, even one that reads nothing of its
        // table.
        (
            Cmd::Migrate,
            given(Some(&shared), &[]),
            vec![db],
            format!("{s}:4: [dev] dat_dir: unknown key; [dev] has data_dir"),
            false,
        ),
        (
            Cmd::Worker,
            given(Some(&ttl), &[(Key::HeartbeatMs, "1000")]),
            vec![db],
            format!(
                "[worker] heartbeat_ms 1000 (--heartbeat-ms) must be below [worker] \
                 lease_ttl_ms 1000 ({t}:2)"
            ),
            false,
        ),
        // A worker's flag on a server that runs no worker would do nothing.
        (
            Cmd::Server,
            given(None, &[(Key::MaxJobs, "8")]),
            vec![db],
            "--max-jobs is a worker's setting: add --with-worker to run a worker in this \
             server, or give it to `aetheris worker`"
                .into(),
            false,
        ),
        (
            Cmd::Server,
            given(Some(&ttl), &[(Key::WithWorker, "true"), (Key::HeartbeatMs, "1000")]),
            vec![db],
            format!(
                "[worker] heartbeat_ms 1000 (--heartbeat-ms) must be below [worker] \
                 lease_ttl_ms 1000 ({t}:2)"
            ),
            false,
        ),
        (
            Cmd::Worker,
            given(Some(Path::new("no/such.toml")), &[]),
            vec![db],
            "--config no/such.toml: cannot read it: No such file or directory (os error 2)".into(),
            false,
        ),
        (
            Cmd::Dev,
            Given::default(),
            vec![("AETHERIS_CONFIG", "gone.toml")],
            "AETHERIS_CONFIG gone.toml: cannot read it: No such file or directory (os error 2)"
                .into(),
            false,
        ),
        (
            Cmd::Dev,
            Given::default(),
            vec![("AETHERIS_LOG", "x=loud")],
            "AETHERIS_LOG: not a log filter".into(),
            false,
        ),
        (
            Cmd::Worker,
            given(None, &[(Key::OtlpEndpoint, "https://collector:4318")]),
            vec![db],
            "--otlp-endpoint: https is not supported".into(),
            true,
        ),
        (
            Cmd::Server,
            Given::default(),
            vec![db, ("AETHERIS_OTLP_ENDPOINT", "collector:4318")],
            "AETHERIS_OTLP_ENDPOINT: expected an http:// URL".into(),
            false,
        ),
    ];
    for (cmd, g, env, want, from_flag) in cases {
        let e = resolve_env(cmd, &g, &env).unwrap_err();
        assert!(
            e.message.starts_with(&want),
            "{cmd:?}:\n got  {}\n want {want}",
            e.message
        );
        assert_eq!(e.from_flag, from_flag, "{}", e.message);
        assert_eq!(e.message.lines().count(), 1, "{}", e.message);
        assert!(!e.message.contains("s3cret"), "{}", e.message);
    }
    // The same file is fine for a command that reads its keys, and one that does not.
    let (_d4, ok) = config_dir("[gateway]\nbind = \"127.0.0.1:1\"\n[dev]\ndata_dir = \"x\"\n");
    assert!(resolve_env(Cmd::Migrate, &given(Some(&ok), &[]), &[db]).is_ok());
    assert!(resolve_env(Cmd::Dev, &given(Some(&ok), &[]), &[]).is_ok());
}

#[test]
fn limits_come_from_a_file_setting_or_inline_and_file_paths_are_relative_to_it() {
    let (dir, path) = config_dir(
        "[limits.defaults]\nadmissions_per_s = 5\n[auth]\nhs256_secret_files = [\"keys/a.key\"]\n\
         [dev]\ndata_dir = \"data\"\n",
    );
    let dev = resolve_env(Cmd::Dev, &given(Some(&path), &[]), &[]).unwrap();
    match dev.limits() {
        Limits::Inline(l) => assert_eq!(l.defaults.admissions_per_s, Some(5.0)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        dev.limits_source(),
        &Source::File {
            path: path.clone(),
            line: 1
        }
    );
    assert_eq!(
        dev.path(Key::DataDir),
        Some(dir.path().join("data").as_path())
    );
    let server = resolve_env(
        Cmd::Server,
        &given(Some(&path), &[]),
        &[("AETHERIS_DATABASE_URL", URL)],
    )
    .unwrap();
    assert_eq!(
        server.paths(Key::Hs256SecretFiles),
        [dir.path().join("keys/a.key")]
    );
    // A limits file from a variable wins over the inline limits (and is relative to the
    // working directory, like every flag and variable).
    let env = resolve_env(
        Cmd::Dev,
        &given(Some(&path), &[]),
        &[("AETHERIS_LIMITS", "l.json")],
    )
    .unwrap();
    assert_eq!(env.limits(), &Limits::File("l.json".into()));
    assert_eq!(env.limits_source(), &Source::Env("AETHERIS_LIMITS"));
    let none = resolve_env(Cmd::Dev, &Given::default(), &[]).unwrap();
    assert_eq!(none.limits(), &Limits::None);
}

/// A file that sets every key (limits inline) to a value that is not its default.
fn every_key_file() -> String {
    format!(
        r#"[database]
url = "{URL}"
pool_size = 3
no_migrate = true

[gateway]
bind = "127.0.0.1:9100"
max_connections = 77
body_timeout_ms = 1234
with_worker = true

[auth]
hs256_secret_files = ["/k/a.key", "/k/b.key"]
ed25519_public_key_files = ["/k/issuer.pub"]
audience = "aetheris-test"
insecure_no_auth = true

[worker]
lease_ttl_ms = 4000
heartbeat_ms = 400
max_jobs = 9
snapshot_every = 7
drain_grace_ms = 250
admin_bind = "127.0.0.1:9101"

[limits]
share = 0.5
[limits.defaults]
admissions_per_s = 50
[limits.tenants."acme corp"]
tool_calls_per_s_by_tool = {{ http = 20 }}
max_running_jobs = 2

[llm]
providers_file = "llm.json"

[evidence]
signing_key_file = "evidence.key"

[retention]
default = "30d"
batch_size = 200
interval_ms = 5000
archive_dir = "archive"

[dev]
data_dir = "/var/lib/aetheris-dev"

[log]
filter = "aetheris_actors=debug,warn"

[tracing]
otlp_endpoint = "http://127.0.0.1:4318"
"#
    )
}

#[test]
fn print_config_is_toml_that_reads_back_to_the_same_settings_without_secrets() {
    let (_d, path) = config_dir(&every_key_file());
    for cmd in Cmd::ALL {
        let first = resolve_env(cmd, &given(Some(&path), &[]), &[]).unwrap();
        let printed = render::effective_toml(&first);
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(
            printed.contains(&format!("# {}:", path.display())),
            "{printed}"
        );
        // Read back (with the password put back), the printout gives the same values.
        let (_d2, again) = config_dir(&printed.replace("***", "s3cret"));
        let second = resolve_env(cmd, &given(Some(&again), &[]), &[]).unwrap();
        for s in SETTINGS.iter().filter(|s| s.used_by(cmd)) {
            assert_eq!(
                first.value(s.key),
                second.value(s.key),
                "{cmd:?} {:?}",
                s.key
            );
            if s.key != Key::LimitsFile {
                assert_ne!(first.source(s.key), Some(&Source::Default), "{:?}", s.key);
            }
        }
        assert_eq!(first.limits(), second.limits(), "{cmd:?}\n{printed}");
    }
    let defaults = resolve_env(
        Cmd::Server,
        &Given::default(),
        &[("AETHERIS_DATABASE_URL", URL)],
    )
    .unwrap();
    let printed = render::effective_toml(&defaults);
    assert!(
        printed.contains(
            "url = \"postgres://ada:***@127.0.0.1:5432/aetheris\"  # AETHERIS_DATABASE_URL"
        ),
        "{printed}"
    );
    assert!(printed.contains("# audience = (not set)"), "{printed}");
    assert!(printed.contains("max_connections = 4096"), "{printed}");
}

#[test]
fn the_commands_read_every_setting_they_are_documented_to_read() {
    let (_d, path) = config_dir(&every_key_file());
    let worker = resolve_env(Cmd::Worker, &given(Some(&path), &[]), &[]).unwrap();
    let db = crate::cluster::DbSettings::from_config(&worker).unwrap();
    assert_eq!(
        (db.database_url.as_str(), db.pool_size, db.no_migrate),
        (URL, 3, true)
    );
    let w = crate::cluster::WorkerSettings::from_config(&worker);
    assert_eq!(
        (
            w.lease_ttl_ms,
            w.heartbeat_ms,
            w.max_jobs,
            w.snapshot_every,
            w.drain_grace_ms
        ),
        (4000, 400, 9, 7, 250)
    );
    assert_eq!(w.admin_bind, "127.0.0.1:9101");
    assert!(matches!(w.limits, Limits::Inline(_)));
    let config = w.config().unwrap();
    assert_eq!((config.lease_ttl_ms, config.max_jobs), (4000, 9));

    let server = resolve_env(Cmd::Server, &given(Some(&path), &[]), &[]).unwrap();
    let auth = crate::cluster::AuthSettings::from_config(&server);
    assert_eq!(auth.auth_hs256_secret_file.len(), 2);
    assert_eq!(
        auth.auth_ed25519_public_key_file,
        [PathBuf::from("/k/issuer.pub")]
    );
    assert_eq!(auth.auth_audience.as_deref(), Some("aetheris-test"));
    assert!(auth.insecure_no_auth);
    let gateway = crate::cluster::GatewaySettings::from_config(&server);
    assert_eq!(
        (gateway.max_connections, gateway.body_timeout_ms),
        (77, 1234)
    );
    assert_eq!(server.text(Key::Bind), Some("127.0.0.1:9100"));
    assert_eq!(
        server.text(Key::LogFilter),
        Some("aetheris_actors=debug,warn")
    );
    for cmd in [Cmd::Dev, Cmd::Server, Cmd::Worker] {
        let e = resolve_env(cmd, &given(Some(&path), &[]), &[]).unwrap();
        assert_eq!(e.text(Key::OtlpEndpoint), Some("http://127.0.0.1:4318"));
    }
}

#[test]
fn every_command_starts_from_its_defaults() {
    for cmd in Cmd::ALL {
        let env: &[(&str, &str)] = match cmd {
            Cmd::Dev => &[],
            _ => &[("AETHERIS_DATABASE_URL", URL)],
        };
        let e = resolve_env(cmd, &Given::default(), env).unwrap();
        for s in SETTINGS.iter().filter(|s| s.used_by(cmd)) {
            let want = match s.default_for(cmd) {
                settings::Fallback::Required => continue,
                f => f.value(),
            };
            assert_eq!(e.value(s.key), &want, "{cmd:?} {:?}", s.key);
        }
    }
}

#[test]
fn the_example_config_file_is_valid_for_every_command() {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/aetheris.toml"
    ));
    for cmd in Cmd::ALL {
        let e = resolve_env(cmd, &given(Some(path), &[]), &[]);
        assert!(e.is_ok(), "{cmd:?}: {:?}", e.err());
    }
}

const BEGIN: &str = "<!-- BEGIN settings: generated from src/config/settings.rs -->\n";
const END: &str = "<!-- END settings -->";

/// docs/configuration.md holds the reference the code renders. `BLESS=1 cargo test
/// config::` rewrites it.
#[test]
fn docs_configuration_md_is_the_reference_the_code_renders() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let doc = std::fs::read_to_string(path).expect("docs/configuration.md exists");
    let (Some(begin), Some(end)) = (doc.find(BEGIN), doc.find(END)) else {
        panic!("docs/configuration.md lacks the markers {BEGIN:?} … {END:?}");
    };
    let committed = &doc[begin + BEGIN.len()..end];
    let rendered = render::reference_markdown();
    if committed != rendered && std::env::var_os("BLESS").is_some() {
        let updated = format!("{}{BEGIN}{rendered}{}", &doc[..begin], &doc[end..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    assert!(
        committed == rendered,
        "docs/configuration.md is out of date (BLESS=1 cargo test config:: rewrites it); \
         its settings reference must read exactly\n{rendered}"
    );
}

/// A server runs a worker only with `with_worker`, and then reads the worker's settings;
/// without it the file and the environment may still carry them (servers and workers
/// share both), but a worker's flag is refused (see the error cases above).
#[test]
fn a_server_reads_worker_settings_with_its_worker() {
    let (_d, shared) = config_dir("[worker]\nmax_jobs = 9\n");
    let env = [("AETHERIS_DATABASE_URL", URL)];
    let with = resolve_env(
        Cmd::Server,
        &given(None, &[(Key::WithWorker, "true"), (Key::MaxJobs, "12")]),
        &env,
    )
    .unwrap();
    assert!(with.switch(Key::WithWorker));
    assert_eq!(with.number(Key::MaxJobs), 12);
    let plain = resolve_env(Cmd::Server, &given(Some(&shared), &[]), &env).unwrap();
    assert!(!plain.switch(Key::WithWorker));
    assert_eq!(
        plain.number(Key::MaxJobs),
        9,
        "the shared file's value, unused"
    );
}
