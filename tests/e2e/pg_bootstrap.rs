//! PostgreSQL from nothing to a first job, exactly as the README's "Production
//! (PostgreSQL)" section types it: `CREATE DATABASE`, `aetheris migrate`, `token keygen
//! --hs256`, `server` and `worker` in the background, an admin token of the system tenant
//! `default` (which the migrations create), `tenant create acme`, a token of `acme`, and
//! `job submit … --wait` with it.
//!
//! The section's ```sh blocks run as one script through `readme.rs`'s harness, on a
//! private throwaway cluster (so `CREATE DATABASE aetheris` is the README's own line);
//! the README's `127.0.0.1:5432` becomes the cluster's address, `127.0.0.1:7420` a free
//! port, and the worker's admin listener (default `127.0.0.1:7421`) takes a free port
//! through `AETHERIS_ADMIN_BIND`, so a test run never depends on that port. Afterwards the database itself is checked: the tenants `default` and `acme`
//! exist, and `acme`'s one job succeeded.
//!
//! The section's "With Docker Compose" commands need a container engine, which the test
//! machines lack: they are fenced ```bash, not ```sh, so this test does not run them, and
//! it checks that they are there and that no ```sh block of the section calls `docker`
//! or `helm`. `deploy/checks/deploy_checks.py` (in CI) runs their `aetheris` lines
//! against the compose services' commands and settings, started without containers.

use crate::readme::{assert_ran, free_port, readme, run_script, script_of, sh_blocks, workdir};
use crate::support::rt;
use std::time::Duration;

#[test]
fn pg_bootstrap_from_an_empty_database_to_a_first_job_as_the_readme_says() {
    let text = readme();
    let blocks = sh_blocks(&text, Some("Production (PostgreSQL)"));
    assert!(
        !blocks.is_empty(),
        "no command block in the production section"
    );
    for block in &blocks {
        assert!(
            !block.contains("docker ") && !block.contains("helm "),
            "a ```sh block of the production section needs a container engine or a cluster, \
             which this test does not have: fence it ```bash\n{block}"
        );
    }
    let section = text
        .split("\n## Production (PostgreSQL)\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .unwrap_or_default();
    assert!(
        section.contains("\n```bash\n")
            && section.contains("docker compose -f deploy/compose.yaml up"),
        "the production section's \"With Docker Compose\" block is gone"
    );
    let cluster = aetheris_store::testing::pg_cluster::private_cluster();
    let pg_addr = format!("127.0.0.1:{}", cluster.port);
    let script = script_of(
        &blocks,
        &[
            ("127.0.0.1:5432", pg_addr.clone()),
            ("127.0.0.1:7420", format!("127.0.0.1:{}", free_port())),
        ],
    );
    let dir = workdir();
    let run = run_script(
        dir.path(),
        &script,
        &[("AETHERIS_ADMIN_BIND", "127.0.0.1:0".to_string())],
        std::slice::from_ref(&cluster.bin_dir),
        Duration::from_secs(300),
    );
    assert_ran("the README's production section", &run);
    // Shown with --nocapture: what a user would see.
    println!("{}", run.stdout);
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("job ") && l.ends_with(" succeeded")),
        "stdout: {}",
        run.stdout
    );

    let url = format!("postgres://postgres@{pg_addr}/aetheris");
    let (tenants, jobs) = rt().block_on(async {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let driver = tokio::spawn(conn);
        let tenants: Vec<String> = client
            .query("SELECT id FROM tenants ORDER BY id", &[])
            .await
            .expect("tenants")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let jobs: Vec<(String, String)> = client
            .query("SELECT tenant, status FROM jobs ORDER BY created_at", &[])
            .await
            .expect("jobs")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        drop(client);
        let _ = driver.await;
        (tenants, jobs)
    });
    assert_eq!(tenants, ["acme", "default"]);
    assert_eq!(jobs, [("acme".to_string(), "succeeded".to_string())]);
}
