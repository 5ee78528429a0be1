use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;
use warden_cluster::store::{self, LogStore, StateMachineStore};
use warden_cluster::{RaftId, TypeConfig};

/// A store in a fresh directory; the directory lives as long as the guard.
struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<RaftId>> {
        let dir = TempDir::new().expect("temp dir");
        let (log, sm) = store::open(&dir.path().join("raft.redb")).await.expect("open store");
        Ok((dir, log, sm))
    }
}

/// openraft's own storage suite: log, vote, purge, truncate, apply, snapshots.
#[test]
fn redb_store_passes_openraft_suite() {
    Suite::test_all(RedbBuilder).expect("openraft storage suite");
}
