//! Live processes of the embedded store, kept in memory: only one OS process can open a
//! redb file, so its live processes are that process's own (gateway and worker of
//! `aetheris dev`). Announcements expire `ttl_ms` after they were made, on the store clock.

use super::{now_ms, RedbStore};
use crate::{Presence, ProcessKind, Result};
use async_trait::async_trait;

/// Live processes by kind and id, with when each announcement expires.
#[derive(Debug, Default)]
pub(super) struct LocalPresence(
    std::sync::Mutex<std::collections::HashMap<(ProcessKind, String), i64>>,
);

impl LocalPresence {
    fn announce(&self, kind: ProcessKind, id: &str, ttl_ms: u64, now_ms: i64) -> u32 {
        let Ok(mut live) = self.0.lock() else {
            tracing::error!("live-process table poisoned; counting this process alone");
            return 1;
        };
        live.retain(|_, expires| *expires > now_ms);
        live.insert(
            (kind, id.to_string()),
            now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX)),
        );
        let n = live.keys().filter(|(k, _)| *k == kind).count();
        u32::try_from(n).unwrap_or(u32::MAX).max(1)
    }

    fn retire(&self, kind: ProcessKind, id: &str) {
        if let Ok(mut live) = self.0.lock() {
            live.remove(&(kind, id.to_string()));
        }
    }
}

#[async_trait]
impl Presence for RedbStore {
    async fn announce_process(&self, kind: ProcessKind, id: &str, ttl_ms: u64) -> Result<u32> {
        Ok(self.presence.announce(kind, id, ttl_ms, now_ms()))
    }

    async fn retire_process(&self, kind: ProcessKind, id: &str) -> Result<()> {
        self.presence.retire(kind, id);
        Ok(())
    }
}
