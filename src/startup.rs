//! Start-up of the long-running commands (`dev`, `server`, `worker`, `migrate`): owns the
//! rule that every start-up failure is one `error: …` line and a non-zero exit — never a
//! panic — and that nothing is started (no actor, no migration) when a check that can be
//! made up front fails.
//!
//! - `check_bind`: the listen address is tried before the store is opened and before any
//!   actor exists (a port in use is the most common start-up failure).
//! - `run_system`: runs a command on an actix system. If the command fails, the system is
//!   not dropped: actors spawned but not yet started (e.g. by a node whose bind failed
//!   after its worker was created) would be started by the drop, outside the runtime, and
//!   panic ("there is no reactor running"). The process exits right after, so the
//!   leaked system costs nothing and its never-started actors do nothing.
//! - `database_error`: turns a failed PostgreSQL connection into a message that says where
//!   the CLI tried to connect and why it failed (refused, unknown database, bad URL),
//!   without ever printing the URL's password.

use std::future::Future;
use std::process::ExitCode;

/// Checks that `addr` can be listened on now (the same `SO_REUSEADDR` bind the gateway
/// makes), so a taken port or a malformed address fails before anything starts.
pub fn check_bind(addr: &str) -> Result<(), String> {
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// Runs `command` on a new actix system; see the module doc for why a failed command's
/// system is leaked rather than dropped.
pub fn run_system<F>(command: F) -> Result<ExitCode, String>
where
    F: Future<Output = Result<ExitCode, String>>,
{
    let system = actix_rt::System::new();
    let result = system.block_on(command);
    if result.is_err() {
        std::mem::forget(system);
    }
    result
}

/// Where a PostgreSQL URL points, for messages: `HOST:PORT/DATABASE` (never the user's
/// password), or why the URL cannot be used.
pub fn describe_database_url(url: &str) -> Result<String, String> {
    let config: tokio_postgres::Config = url.parse().map_err(|e| {
        format!(
            "--database-url is not a PostgreSQL URL ({e}); expected \
             postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        )
    })?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    Ok(format!("{host}:{port}/{db}"))
}

/// The message for a failed connection to `url`, whose store-level error was `store_error`:
/// connects once more without a pool to learn the cause (the pool's error hides it).
pub async fn database_error(url: &str, store_error: String) -> String {
    let place = match describe_database_url(url) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let cause = match probe(url).await {
        Ok(()) => store_error,
        Err(cause) => cause,
    };
    format!("cannot connect to PostgreSQL at {place}: {cause}")
}

async fn probe(url: &str) -> Result<(), String> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| format!("{e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(10));
    }
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| driver_message(&e))?;
    drop(client);
    // The client is gone, so the connection ends at once.
    let _ = connection.await;
    Ok(())
}

/// The server's own message (e.g. `database "x" does not exist`), else the I/O cause.
fn driver_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = format!("{msg}: {s}");
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_url_is_described_without_its_password() {
        assert_eq!(
            describe_database_url("postgres://ada:s3cret@db.example:6543/jobs").unwrap(),
            "db.example:6543/jobs"
        );
        assert_eq!(
            describe_database_url("postgres://postgres@127.0.0.1/aetheris").unwrap(),
            "127.0.0.1:5432/aetheris"
        );
        let e = describe_database_url("not a url").unwrap_err();
        assert!(
            e.starts_with("--database-url is not a PostgreSQL URL"),
            "{e}"
        );
        assert!(!describe_database_url("postgres://ada:s3cret@h/d")
            .unwrap()
            .contains("s3cret"));
    }

    #[test]
    fn a_taken_address_is_refused_before_anything_starts() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap().to_string();
        let e = check_bind(&addr).unwrap_err();
        assert!(e.starts_with(&format!("cannot listen on {addr}: ")), "{e}");
        drop(held);
        assert!(check_bind("127.0.0.1:0").is_ok());
        assert!(check_bind("not an address").is_err());
    }
}
