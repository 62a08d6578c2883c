//! Live processes of the embedded store, kept in memory: only one OS process can open a
//! redb file, so its live processes are that process's own (gateway and worker of
//! `aetheris dev`). Announcements expire `ttl_ms` after they were made, on the store clock,
//! and are listed (as not live) for `FORGET_AFTER_MS` more, as on PostgreSQL.

use super::{now_ms, RedbStore};
use crate::{Presence, ProcessKind, ProcessStatus, Result, FORGET_AFTER_MS};
use async_trait::async_trait;
use std::collections::BTreeMap;

/// One announcement: when it was made and expires, and the report that came with it.
#[derive(Debug, Clone)]
struct Announced {
    seen_ms: i64,
    expires_ms: i64,
    report: String,
}

/// Announced processes by kind and id.
#[derive(Debug, Default)]
pub(super) struct LocalPresence(std::sync::Mutex<BTreeMap<(ProcessKind, String), Announced>>);

impl LocalPresence {
    fn announce(&self, kind: ProcessKind, id: &str, ttl_ms: u64, report: &str, now_ms: i64) -> u32 {
        let Ok(mut all) = self.0.lock() else {
            tracing::error!("live-process table poisoned; counting this process alone");
            return 1;
        };
        all.retain(|_, a| a.expires_ms >= now_ms - FORGET_AFTER_MS);
        all.insert(
            (kind, id.to_string()),
            Announced {
                seen_ms: now_ms,
                expires_ms: now_ms.saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX)),
                report: report.to_string(),
            },
        );
        let n = all
            .iter()
            .filter(|((k, _), a)| *k == kind && a.expires_ms > now_ms)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX).max(1)
    }

    fn retire(&self, kind: ProcessKind, id: &str) {
        if let Ok(mut all) = self.0.lock() {
            all.remove(&(kind, id.to_string()));
        }
    }

    fn list(&self, now_ms: i64) -> Vec<ProcessStatus> {
        let Ok(all) = self.0.lock() else {
            return Vec::new();
        };
        all.iter()
            .filter(|(_, a)| a.expires_ms >= now_ms - FORGET_AFTER_MS)
            .map(|((kind, id), a)| ProcessStatus {
                kind: *kind,
                id: id.clone(),
                live: a.expires_ms > now_ms,
                heartbeat_age_ms: Some(u64::try_from(now_ms - a.seen_ms).unwrap_or(0)),
                ttl_ms: Some(u64::try_from(a.expires_ms - a.seen_ms).unwrap_or(0)),
                report: a.report.clone(),
            })
            .collect()
    }
}

#[async_trait]
impl Presence for RedbStore {
    async fn announce_process(
        &self,
        kind: ProcessKind,
        id: &str,
        ttl_ms: u64,
        report: &str,
    ) -> Result<u32> {
        Ok(self.presence.announce(kind, id, ttl_ms, report, now_ms()))
    }

    async fn retire_process(&self, kind: ProcessKind, id: &str) -> Result<()> {
        self.presence.retire(kind, id);
        Ok(())
    }

    async fn list_processes(&self) -> Result<Vec<ProcessStatus>> {
        Ok(self.presence.list(now_ms()))
    }
}
