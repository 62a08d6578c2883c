//! The LISTEN connection: one dedicated, non-pooled connection per store that LISTENs on
//! `aetheris_work` and `aetheris_cmd` and turns notifications into the local hints. It
//! reconnects with backoff when it drops and fires the work hint after every (re)connect,
//! since notifications sent while it was away are lost; the hints are only hints (workers
//! also poll). A work notification from one of the store's own pooled connections is
//! skipped: the submit or release that sent it fired the hint when it committed, and every
//! firing costs a claim.

use super::OwnBackends;
use aetheris_runtime::JobId;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

const LISTEN_BACKOFF_MIN: Duration = Duration::from_millis(100);
const LISTEN_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Keeps one LISTEN connection alive for the life of the store.
pub(super) async fn listen_loop(
    config: tokio_postgres::Config,
    own: OwnBackends,
    hint: Arc<Notify>,
    commands: tokio::sync::broadcast::Sender<JobId>,
) {
    let mut delay = LISTEN_BACKOFF_MIN;
    loop {
        match listen_once(&config, &own, &hint, &commands).await {
            Ok(()) => {
                tracing::warn!("aetheris: LISTEN connection closed; reconnecting");
                delay = LISTEN_BACKOFF_MIN;
            }
            Err((e, was_listening)) => {
                tracing::warn!(error = %e, "aetheris: LISTEN connection failed; reconnecting");
                if was_listening {
                    delay = LISTEN_BACKOFF_MIN;
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(LISTEN_BACKOFF_MAX);
    }
}

/// One LISTEN session: connect, LISTEN, fire the hint (anything sent while we were away
/// was lost), then fire it on every notification until the connection ends. The error
/// side says whether LISTEN had succeeded, so the backoff resets after a good session.
async fn listen_once(
    config: &tokio_postgres::Config,
    own: &OwnBackends,
    hint: &Notify,
    commands: &tokio::sync::broadcast::Sender<JobId>,
) -> std::result::Result<(), (tokio_postgres::Error, bool)> {
    let (client, mut conn) = config.connect(NoTls).await.map_err(|e| (e, false))?;
    let listen = client.batch_execute("LISTEN aetheris_work; LISTEN aetheris_cmd");
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            r = &mut listen, if !listening => {
                r.map_err(|e| (e, false))?;
                listening = true;
                super::fire(hint);
            }
            m = std::future::poll_fn(|cx| conn.poll_message(cx)) => match m {
                Some(Ok(AsyncMessage::Notification(n))) if n.channel() == super::COMMAND_CHANNEL => {
                    if let Ok(job) = n.payload().parse::<JobId>() {
                        let _ = commands.send(job);
                    }
                    // A command may make a parked job claimable: wake the claimers too.
                    super::fire(hint);
                }
                Some(Ok(AsyncMessage::Notification(n))) if own.contains(n.process_id()) => {}
                Some(Ok(AsyncMessage::Notification(_))) => super::fire(hint),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err((e, listening)),
                None => return Ok(()),
            },
        }
    }
}
