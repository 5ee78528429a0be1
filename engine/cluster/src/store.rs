//! The Raft log, vote and snapshot in one redb file, and the state machine over
//! [`ClusterState`].
//!
//! Durability: every write is one redb write transaction committed with
//! `Durability::Immediate` (redb's default, stated explicitly below), which has fsynced when
//! `commit` returns. openraft is told a log append is done (`LogFlushed`) and a vote is saved
//! only after that, so whatever this node acknowledged to a peer survives a crash or power cut.
//!
//! The state machine itself lives in memory: at start it is the last snapshot, and openraft
//! re-applies the committed log after it (the committed log id is stored too). Snapshots are
//! stored durably before they are reported built or installed, because the log before them may
//! be purged.
//!
//! redb calls block; they run on tokio's blocking pool so that a slow disk does not stall the
//! runtime's workers (heartbeats, the authority renewal, other nodes in tests).

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::{ClusterResponse, ClusterState};
use crate::{Peer, RaftId, TypeConfig};

/// Log entries by index, each as JSON (entries are small: decisions, not observations).
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// The vote, the committed log id, the last purged log id and the snapshot, as JSON.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last-purged";
const SNAPSHOT: &str = "snapshot";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("store task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

macro_rules! redb_error {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
redb_error!(redb::DatabaseError, redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError, redb::SetDurabilityError);

type RaftStorageError = StorageError<RaftId>;

fn io_err(subject: ErrorSubject<RaftId>, verb: ErrorVerb, e: StoreError) -> RaftStorageError {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

/// The redb file, shared by the log store and the state machine.
#[derive(Clone)]
struct Db(Arc<Database>);

impl Db {
    /// Runs `f` in one write transaction and commits it durably (fsync) before returning.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut txn = db.begin_write()?;
            // The default, stated so that no one weakens it: acknowledged means on disk.
            txn.set_durability(Durability::Immediate)?;
            let out = f(&txn)?;
            txn.commit()?;
            Ok(out)
        })
        .await?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = self.0.clone();
        tokio::task::spawn_blocking(move || f(&db.begin_read()?)).await?
    }

    async fn put_meta<V: Serialize>(&self, key: &'static str, value: &V) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value)?;
        self.write(move |txn| {
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
        .await
    }

    async fn get_meta<V: for<'de> Deserialize<'de> + Send + 'static>(&self, key: &'static str) -> Result<Option<V>, StoreError> {
        self.read(move |txn| {
            let table = txn.open_table(META)?;
            let Some(v) = table.get(key)? else { return Ok(None) };
            Ok(Some(serde_json::from_slice(v.value())?))
        })
        .await
    }
}

/// Opens (or creates) the store at `path`: the log store and the state machine, the latter
/// restored from the last snapshot.
pub async fn open(path: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    let path = path.to_owned();
    let db = tokio::task::spawn_blocking(move || -> Result<Database, StoreError> {
        let db = Database::create(&path)?;
        // Create the tables once, so that readers never meet a missing table.
        let txn = db.begin_write()?;
        txn.open_table(LOG)?;
        txn.open_table(META)?;
        txn.commit()?;
        Ok(db)
    })
    .await??;
    let db = Db(Arc::new(db));
    let snapshot: Option<StoredSnapshot> = db.get_meta(SNAPSHOT).await?;
    let mut sm = StateMachineStore {
        db: db.clone(),
        last_applied: None,
        last_membership: StoredMembership::default(),
        state: watch::Sender::new(ClusterState::default()),
        voters: watch::Sender::new(BTreeSet::new()),
        snapshot_count: 0,
    };
    if let Some(s) = snapshot {
        sm.restore(s);
    }
    Ok((LogStore { db }, sm))
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
}

impl LogStore {
    async fn read_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        self.db
            .read(move |txn| {
                let table = txn.open_table(LOG)?;
                let mut out = Vec::new();
                for item in table.range::<u64>((start, end))? {
                    let (_, v) = item?;
                    out.push(serde_json::from_slice(v.value())?);
                }
                Ok(out)
            })
            .await
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, RaftStorageError> {
        self.read_range(range.start_bound().cloned(), range.end_bound().cloned())
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged_log_id: Option<LogId<RaftId>> =
            self.db.get_meta(LAST_PURGED).await.map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        let last = self
            .db
            .read(|txn| {
                let table = txn.open_table(LOG)?;
                let Some((_, v)) = table.last()? else { return Ok(None) };
                let entry: Entry<TypeConfig> = serde_json::from_slice(v.value())?;
                Ok(Some(entry.log_id))
            })
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(LogState { last_purged_log_id, last_log_id: last.or(last_purged_log_id) })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<RaftId>) -> Result<(), RaftStorageError> {
        self.db.put_meta(VOTE, vote).await.map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<RaftId>>, RaftStorageError> {
        self.db.get_meta(VOTE).await.map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId<RaftId>>) -> Result<(), RaftStorageError> {
        self.db.put_meta(COMMITTED, &committed).await.map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<RaftId>>, RaftStorageError> {
        let c: Option<Option<LogId<RaftId>>> =
            self.db.get_meta(COMMITTED).await.map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
        Ok(c.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded: Result<Vec<(u64, Vec<u8>)>, StoreError> =
            entries.into_iter().map(|e| Ok((e.log_id.index, serde_json::to_vec(&e)?))).collect();
        let result = match encoded {
            Ok(encoded) => {
                self.db
                    .write(move |txn| {
                        let mut table = txn.open_table(LOG)?;
                        for (index, bytes) in &encoded {
                            table.insert(*index, bytes.as_slice())?;
                        }
                        Ok(())
                    })
                    .await
            }
            Err(e) => Err(e),
        };
        // Only now, after the durable commit, may openraft count these entries as accepted.
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<RaftId>) -> Result<(), RaftStorageError> {
        let from = log_id.index;
        self.db
            .write(move |txn| {
                txn.open_table(LOG)?.retain_in(from.., |_, _| false)?;
                Ok(())
            })
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<RaftId>) -> Result<(), RaftStorageError> {
        let upto = log_id.index;
        let bytes = serde_json::to_vec(&log_id).map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Write, e.into()))?;
        // One transaction: the purge mark and the deletion are durable together.
        self.db
            .write(move |txn| {
                txn.open_table(META)?.insert(LAST_PURGED, bytes.as_slice())?;
                txn.open_table(LOG)?.retain_in(..=upto, |_, _| false)?;
                Ok(())
            })
            .await
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e))
    }
}

/// A snapshot as stored: its metadata and the state it captures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredSnapshot {
    meta: SnapshotMeta<RaftId, Peer>,
    state: ClusterState,
}

/// The state machine: [`ClusterState`] as of the last applied entry.
pub struct StateMachineStore {
    db: Db,
    last_applied: Option<LogId<RaftId>>,
    last_membership: StoredMembership<RaftId, Peer>,
    /// The applied state, published for the node's executor and for status; every apply
    /// replaces it.
    state: watch::Sender<ClusterState>,
    /// The voters of the last applied (so committed) membership; openraft's metrics show the
    /// effective one, which may not be committed yet.
    voters: watch::Sender<BTreeSet<RaftId>>,
    /// Makes snapshot ids unique within this process's life.
    snapshot_count: u64,
}

impl StateMachineStore {
    /// The applied state; changes are announced to every receiver.
    pub fn subscribe(&self) -> watch::Receiver<ClusterState> {
        self.state.subscribe()
    }

    /// The voters of the last applied membership; changes are announced to every receiver.
    pub fn subscribe_voters(&self) -> watch::Receiver<BTreeSet<RaftId>> {
        self.voters.subscribe()
    }

    fn restore(&mut self, s: StoredSnapshot) {
        self.last_applied = s.meta.last_log_id;
        self.last_membership = s.meta.last_membership;
        self.voters.send_replace(self.last_membership.membership().voter_ids().collect());
        self.state.send_replace(s.state);
    }
}

/// Builds a snapshot of the state as it was when the builder was made.
pub struct SnapshotBuilder {
    db: Db,
    snapshot: StoredSnapshot,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let s = self.snapshot.clone();
        // Stored before it is reported: openraft may purge the log it replaces right after.
        self.db.put_meta(SNAPSHOT, &s).await.map_err(|e| io_err(ErrorSubject::Snapshot(Some(s.meta.signature())), ErrorVerb::Write, e))?;
        Ok(Snapshot { meta: s.meta, snapshot: Box::new(s.state) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<RaftId>>, StoredMembership<RaftId, Peer>), RaftStorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ClusterResponse>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let mut state = self.state.borrow().clone();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Blank => ClusterResponse::Internal,
                EntryPayload::Normal(req) => state.apply(&req),
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), m);
                    self.voters.send_replace(self.last_membership.membership().voter_ids().collect());
                    ClusterResponse::Internal
                }
            });
        }
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_count += 1;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.snapshot_count),
            None => format!("--{}", self.snapshot_count),
        };
        SnapshotBuilder {
            db: self.db.clone(),
            snapshot: StoredSnapshot {
                meta: SnapshotMeta { last_log_id: self.last_applied, last_membership: self.last_membership.clone(), snapshot_id },
                state: self.state.borrow().clone(),
            },
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<ClusterState>, RaftStorageError> {
        // Snapshots arrive whole (`generic-snapshot-data`); this is only a container.
        Ok(Box::default())
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<RaftId, Peer>, snapshot: Box<ClusterState>) -> Result<(), RaftStorageError> {
        let s = StoredSnapshot { meta: meta.clone(), state: *snapshot };
        self.db.put_meta(SNAPSHOT, &s).await.map_err(|e| io_err(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, e))?;
        self.restore(s);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let s: Option<StoredSnapshot> =
            self.db.get_meta(SNAPSHOT).await.map_err(|e| io_err(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(s.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(s.state) }))
    }
}
