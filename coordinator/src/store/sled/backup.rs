//! The pause a backup takes its snapshot in (`store/backup.rs`).

use super::SledStore;

impl SledStore {
    /// Taken by every write of backed-up records: waits while a backup reads them. Never
    /// taken twice by one thread (a waiting backup would block the second).
    pub(super) fn writing(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` while every write of the records a backup holds waits (writes in progress
    /// finish first): what `f` reads is one consistent state. Leases and the append-only
    /// audit trail are not paused.
    pub fn with_writes_paused<T>(&self, f: impl FnOnce(&Self) -> T) -> T {
        let _paused = self.gate.write().unwrap_or_else(|p| p.into_inner());
        f(self)
    }
}
