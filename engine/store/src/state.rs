//! A state file kept in generations, written durably, loaded with fallback, and written off the
//! deciding loop by [`StateWriter`].

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::{unix_ms, StoreError};

/// A JSON file `<dir>/<name>` with its previous generation `<dir>/<name>.prev`.
#[derive(Debug, Clone)]
pub struct DurableFile {
    dir: PathBuf,
    name: String,
}

/// Which generation [`DurableFile::load`] used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// `<name>`: the last write that completed.
    Current,
    /// `<name>.prev`: the one before, used when the current one is missing or damaged.
    Previous,
    /// Nothing usable: start from scratch (and say so when `problems` is not empty).
    None,
}

/// What [`DurableFile::load`] found.
#[derive(Debug)]
pub struct Load<T> {
    pub value: Option<T>,
    pub used: Generation,
    /// One sentence per file that was missing while another was used, or damaged and set aside
    /// (with where it went). Empty when the current generation loaded cleanly, or when there was
    /// no state at all.
    pub problems: Vec<String>,
}

impl DurableFile {
    pub fn new(dir: impl Into<PathBuf>, name: &str) -> DurableFile {
        DurableFile { dir: dir.into(), name: name.to_string() }
    }

    /// `<dir>/<name>`.
    pub fn path(&self) -> PathBuf {
        self.dir.join(&self.name)
    }

    /// `<dir>/<name>.prev`.
    pub fn prev_path(&self) -> PathBuf {
        self.dir.join(format!("{}.prev", self.name))
    }

    fn tmp_path(&self) -> PathBuf {
        self.dir.join(format!("{}.tmp", self.name))
    }

    /// Serialise `value` (pretty JSON) and [`write_bytes`](Self::write_bytes) it.
    pub fn write<T: Serialize>(&self, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Encode { path: self.path(), source })?;
        self.write_bytes(&bytes)
    }

    /// Make `bytes` the current generation, durably: when this returns `Ok`, a crash or power
    /// loss cannot bring back an older generation.
    ///
    /// Order matters: the old current file becomes `.prev` *before* the new one is renamed into
    /// place, so a crash between the two renames leaves `.prev` (the last acknowledged state)
    /// and no current file, which [`load`](Self::load) handles; the new state was not yet
    /// acknowledged, so losing it is correct.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let (tmp, cur, prev) = (self.tmp_path(), self.path(), self.prev_path());
        let mut f = File::create(&tmp).map_err(|e| StoreError::io("cannot create", &tmp, e))?;
        f.write_all(bytes).map_err(|e| StoreError::io("cannot write", &tmp, e))?;
        // The data must be on disk before a rename can make it the current generation, or a
        // crash could leave an empty or partial current file.
        f.sync_all().map_err(|e| StoreError::io("cannot fsync", &tmp, e))?;
        drop(f);
        match std::fs::symlink_metadata(&cur) {
            Ok(_) => std::fs::rename(&cur, &prev).map_err(|e| StoreError::io("cannot move the previous generation to", &prev, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("cannot stat", &cur, e)),
        }
        std::fs::rename(&tmp, &cur).map_err(|e| StoreError::io("cannot rename the new generation to", &cur, e))?;
        // A rename is durable only once the directory is.
        sync_dir(&self.dir)
    }

    /// Load the current generation, falling back to the previous one. Damaged files are renamed
    /// to `<file>.corrupt-<unix_ms>` so they are kept but never read again. `validate` can
    /// reject a well-formed value (wrong cluster, unknown version); that counts as damage too.
    pub fn load<T: DeserializeOwned>(&self, validate: impl Fn(&T) -> Result<(), String>) -> Load<T> {
        let mut problems = Vec::new();
        let mut missing = Vec::new();
        for (generation, path) in [(Generation::Current, self.path()), (Generation::Previous, self.prev_path())] {
            let damage = match std::fs::read(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    missing.push(path);
                    continue;
                }
                Err(e) => format!("unreadable ({e})"),
                Ok(bytes) if bytes.is_empty() => "empty".to_string(),
                Ok(bytes) => match serde_json::from_slice::<T>(&bytes) {
                    Err(e) => format!("not valid JSON for the state ({e})"),
                    Ok(value) => match validate(&value) {
                        Err(why) => format!("invalid ({why})"),
                        Ok(()) => {
                            if generation == Generation::Previous {
                                for m in &missing {
                                    problems.push(format!("{} is missing; using the previous generation", m.display()));
                                }
                            }
                            return Load { value: Some(value), used: generation, problems };
                        }
                    },
                },
            };
            problems.push(format!("{} is {damage}; {}", path.display(), set_aside(&path)));
        }
        Load { value: None, used: Generation::None, problems }
    }
}

/// Rename a damaged file out of the way and say where it went.
fn set_aside(path: &Path) -> String {
    let base = format!("{}.corrupt-{}", path.display(), unix_ms(SystemTime::now()));
    // Two files damaged in the same millisecond must not overwrite each other's evidence.
    let mut aside = PathBuf::from(&base);
    let mut n = 1;
    while aside.exists() {
        aside = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    match std::fs::rename(path, &aside) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                let _ = sync_dir(dir);
            }
            format!("set aside as {}", aside.display())
        }
        Err(e) => format!("could not be set aside as {} ({e}); ignored", aside.display()),
    }
}

/// Replace one file so that after a crash or power cut it holds the old bytes or the new ones
/// (no previous generation kept): write a temporary file, fsync, rename, fsync the directory.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(|e| StoreError::io("cannot create", &tmp, e))?;
    f.write_all(bytes).map_err(|e| StoreError::io("cannot write", &tmp, e))?;
    f.sync_all().map_err(|e| StoreError::io("cannot fsync", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io("cannot rename to", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Remove a file durably (a missing file is fine).
pub fn remove_durably(path: &Path) -> Result<(), StoreError> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_dir(path.parent().unwrap_or(Path::new("."))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("cannot remove", path, e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    let d = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(d).and_then(|f| f.sync_all()).map_err(|e| StoreError::io("cannot fsync the directory", d, e))
}

/// The outcome of one write attempt by a [`StateWriter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteAck {
    /// The caller's generation number given to [`StateWriter::submit`].
    pub generation: u64,
    /// `Ok` once that generation is durable; the error text otherwise (it will be retried
    /// unless a newer generation replaces it).
    pub result: Result<(), String>,
}

/// First retry delay after a failed write; doubles up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(5);
/// How long dropping a [`StateWriter`] waits for the last write.
pub const DROP_WAIT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Shared {
    pending: Option<(u64, Vec<u8>)>,
    shutdown: bool,
    /// The last attempt's failure, cleared by a success; reported by shutdown.
    failing: Option<(u64, String)>,
    /// Held by a test to make each write hang, as on a frozen filesystem.
    #[cfg(test)]
    stall: Arc<Mutex<()>>,
}

/// Writes a [`DurableFile`] on a dedicated thread, so the caller never waits for the disk.
pub struct StateWriter {
    path: PathBuf,
    shared: Arc<(Mutex<Shared>, Condvar)>,
    /// Disconnects when the thread ends: lets shutdown wait with a timeout, which `join` cannot.
    done: Option<std_mpsc::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StateWriter {
    /// Start the writer thread. Every attempt is acknowledged on `acks` (a closed receiver is
    /// fine: writes go on). Panics only if the OS cannot start a thread, like `std::thread::spawn`.
    pub fn spawn(file: DurableFile, acks: UnboundedSender<WriteAck>) -> StateWriter {
        let shared = Arc::new((Mutex::new(Shared::default()), Condvar::new()));
        let (done_tx, done) = std_mpsc::channel::<()>();
        let path = file.path();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("warden-store:{}", file.name))
            .spawn(move || {
                let _done = done_tx;
                writer_loop(&file, &s, &acks);
            })
            .expect("cannot spawn the state writer thread");
        StateWriter { path, shared, done: Some(done), thread: Some(thread) }
    }

    /// Serialise `value` here (CPU only) and queue it; see [`submit_bytes`](Self::submit_bytes).
    pub fn submit<T: Serialize>(&self, generation: u64, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|source| StoreError::Encode { path: self.path.clone(), source })?;
        self.submit_bytes(generation, bytes);
        Ok(())
    }

    /// Queue `bytes` as generation `generation` and return at once. A newer submission replaces
    /// a pending older one: only the latest state matters, and writing stale ones would delay it.
    pub fn submit_bytes(&self, generation: u64, bytes: Vec<u8>) {
        let (lock, cv) = &*self.shared;
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        s.pending = Some((generation, bytes));
        cv.notify_all();
    }

    /// Finish the pending write (one attempt if it had been failing) and stop the thread,
    /// waiting at most `wait`. On timeout the thread is left detached: a hung disk must not
    /// hang the daemon's exit.
    pub fn shutdown(mut self, wait: Duration) -> Result<(), StoreError> {
        self.stop(wait)
    }

    fn stop(&mut self, wait: Duration) -> Result<(), StoreError> {
        let Some(done) = self.done.take() else { return Ok(()) };
        {
            let (lock, cv) = &*self.shared;
            lock.lock().unwrap_or_else(|p| p.into_inner()).shutdown = true;
            cv.notify_all();
        }
        match done.recv_timeout(wait) {
            Err(std_mpsc::RecvTimeoutError::Timeout) => {
                self.thread.take();
                return Err(StoreError::ShutdownTimedOut { waited: wait });
            }
            Ok(()) | Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }
        let s = self.shared.0.lock().unwrap_or_else(|p| p.into_inner());
        match &s.failing {
            Some((generation, error)) => Err(StoreError::Unwritten { generation: *generation, error: error.clone() }),
            None => Ok(()),
        }
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        if let Err(e) = self.stop(DROP_WAIT) {
            tracing::error!(path = %self.path.display(), error = %e, "the state writer stopped without writing the latest state");
        }
    }
}

fn writer_loop(file: &DurableFile, shared: &(Mutex<Shared>, Condvar), acks: &UnboundedSender<WriteAck>) {
    let (lock, cv) = shared;
    let mut backoff = RETRY_FIRST;
    let mut retry_at: Option<Instant> = None;
    loop {
        let (generation, bytes) = {
            let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if s.shutdown {
                    // Finish what is pending, even if it is waiting for a retry; then stop.
                    match s.pending.take() {
                        Some(p) => break p,
                        None => return,
                    }
                }
                match (s.pending.is_some(), retry_at) {
                    (false, _) => s = cv.wait(s).unwrap_or_else(|p| p.into_inner()),
                    (true, Some(at)) if Instant::now() < at => {
                        // Backing off; a shutdown wakes us early, a newer state just replaces
                        // the pending one and waits its turn.
                        s = cv.wait_timeout(s, at - Instant::now()).unwrap_or_else(|p| p.into_inner()).0;
                    }
                    (true, _) => break s.pending.take().expect("checked"),
                }
            }
        };
        #[cfg(test)]
        let stall = lock.lock().unwrap_or_else(|p| p.into_inner()).stall.clone();
        #[cfg(test)]
        let _stall = stall.lock().unwrap_or_else(|p| p.into_inner());
        let result = file.write_bytes(&bytes).map_err(|e| e.to_string());
        let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(()) => {
                backoff = RETRY_FIRST;
                retry_at = None;
                s.failing = None;
            }
            Err(e) => {
                tracing::warn!(path = %file.path().display(), generation, error = %e, retry_in = ?backoff, "cannot write the state; retrying");
                s.failing = Some((generation, e.clone()));
                // At shutdown each state gets one attempt: a failing disk must not hold the exit.
                // Otherwise retry this state later, unless a newer one has replaced it.
                if !s.shutdown && s.pending.is_none() {
                    s.pending = Some((generation, bytes));
                }
                retry_at = Some(Instant::now() + backoff);
                backoff = (backoff * 2).min(RETRY_MAX);
            }
        }
        drop(s);
        let _ = acks.send(WriteAck { generation, result });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct S {
        n: u64,
    }

    fn ok(_: &S) -> Result<(), String> {
        Ok(())
    }

    fn corrupt_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".corrupt-"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_keep_the_previous_generation_and_load_the_current() {
        let dir = tempfile::tempdir().unwrap();
        let f = DurableFile::new(dir.path(), "state.json");
        let l = f.load::<S>(ok);
        assert_eq!((l.value, l.used, l.problems.len()), (None, Generation::None, 0));
        f.write(&S { n: 1 }).unwrap();
        f.write(&S { n: 2 }).unwrap();
        let l = f.load::<S>(ok);
        assert_eq!((l.value, l.used), (Some(S { n: 2 }), Generation::Current));
        assert!(l.problems.is_empty());
        assert_eq!(serde_json::from_slice::<S>(&std::fs::read(f.prev_path()).unwrap()).unwrap(), S { n: 1 });
        assert!(!dir.path().join("state.json.tmp").exists());
    }

    #[test]
    fn a_crash_between_the_renames_leaves_the_previous_generation() {
        let dir = tempfile::tempdir().unwrap();
        let f = DurableFile::new(dir.path(), "state.json");
        f.write(&S { n: 1 }).unwrap();
        // The steps of write_bytes for n = 2, stopped after the first rename.
        std::fs::write(dir.path().join("state.json.tmp"), serde_json::to_vec(&S { n: 2 }).unwrap()).unwrap();
        std::fs::rename(f.path(), f.prev_path()).unwrap();
        let l = f.load::<S>(ok);
        assert_eq!((l.value, l.used), (Some(S { n: 1 }), Generation::Previous));
        assert_eq!(l.problems.len(), 1);
        assert!(l.problems[0].contains("missing"), "{:?}", l.problems);
        // The next write works from there, and the one after keeps a previous generation.
        f.write(&S { n: 3 }).unwrap();
        assert_eq!(f.load::<S>(ok).value, Some(S { n: 3 }));
        f.write(&S { n: 4 }).unwrap();
        assert_eq!(serde_json::from_slice::<S>(&std::fs::read(f.prev_path()).unwrap()).unwrap(), S { n: 3 });
    }

    #[test]
    fn damaged_files_are_set_aside_and_the_previous_generation_used() {
        let dir = tempfile::tempdir().unwrap();
        let f = DurableFile::new(dir.path(), "state.json");
        f.write(&S { n: 1 }).unwrap();
        f.write(&S { n: 2 }).unwrap();
        // An empty current file is damage, not "no state".
        std::fs::write(f.path(), b"").unwrap();
        let l = f.load::<S>(ok);
        assert_eq!((l.value, l.used), (Some(S { n: 1 }), Generation::Previous));
        assert!(l.problems[0].contains("is empty; set aside as"), "{:?}", l.problems);
        assert!(!f.path().exists());
        assert_eq!(corrupt_files(dir.path()).len(), 1);

        // Not JSON, and a previous generation rejected by validation: nothing usable, both kept.
        std::fs::write(f.path(), b"{\"n\": 3").unwrap();
        let l = f.load::<S>(|s| if s.n == 1 { Err("n = 1 is not accepted".into()) } else { Ok(()) });
        assert_eq!((l.value, l.used), (None, Generation::None));
        assert_eq!(l.problems.len(), 2, "{:?}", l.problems);
        assert!(l.problems[0].contains("not valid JSON"), "{:?}", l.problems);
        assert!(l.problems[1].contains("invalid (n = 1 is not accepted)"), "{:?}", l.problems);
        assert_eq!(corrupt_files(dir.path()).len(), 3);
        // Set aside means never read again.
        let l = f.load::<S>(ok);
        assert_eq!((l.value, l.used, l.problems.len()), (None, Generation::None, 0));
    }

    #[test]
    fn a_failed_write_is_returned_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = DurableFile::new(dir.path(), "state.json");
        f.write(&S { n: 1 }).unwrap();
        // A directory where the temporary file goes: fails even as root, unlike permissions.
        std::fs::create_dir(dir.path().join("state.json.tmp")).unwrap();
        let err = f.write(&S { n: 2 }).unwrap_err();
        assert!(matches!(&err, StoreError::Io { path, .. } if path.ends_with("state.json.tmp")), "{err}");
        assert_eq!(f.load::<S>(ok).value, Some(S { n: 1 }));
    }

    fn next_ack(rx: &mut tokio::sync::mpsc::UnboundedReceiver<WriteAck>) -> WriteAck {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match rx.try_recv() {
                Ok(a) => return a,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("no acknowledgement: {e}"),
            }
        }
    }

    #[test]
    fn the_writer_acknowledges_retries_after_a_fault_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let f = DurableFile::new(dir.path(), "state.json");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let w = StateWriter::spawn(f.clone(), tx);
        w.submit(1, &S { n: 1 }).unwrap();
        assert_eq!(next_ack(&mut rx), WriteAck { generation: 1, result: Ok(()) });

        let blocker = dir.path().join("state.json.tmp");
        std::fs::create_dir(&blocker).unwrap();
        w.submit(2, &S { n: 2 }).unwrap();
        let a = next_ack(&mut rx);
        assert_eq!(a.generation, 2);
        assert!(a.result.as_ref().unwrap_err().contains("state.json.tmp"), "{a:?}");
        // Retried with backoff, acknowledged each time; a newer state replaces the failing one.
        let a = next_ack(&mut rx);
        assert_eq!((a.generation, a.result.is_err()), (2, true));
        w.submit(3, &S { n: 3 }).unwrap();
        loop {
            let a = next_ack(&mut rx);
            assert!(a.result.is_err());
            if a.generation == 3 {
                break;
            }
        }
        std::fs::remove_dir(&blocker).unwrap();
        loop {
            let a = next_ack(&mut rx);
            assert_eq!(a.generation, 3, "generation 2 must never be written after 3");
            if a.result.is_ok() {
                break;
            }
        }
        assert_eq!(f.load::<S>(ok).value, Some(S { n: 3 }));
        w.shutdown(Duration::from_secs(5)).unwrap();
    }

    #[test]
    fn a_hung_disk_does_not_block_submit_or_hang_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let f = DurableFile::new(dir.path(), "state.json");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let w = StateWriter::spawn(f.clone(), tx);
        let stall = w.shared.0.lock().unwrap().stall.clone();
        let frozen = stall.lock().unwrap();
        let started = Instant::now();
        for n in 1..=1000 {
            w.submit(n, &S { n }).unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        let err = w.shutdown(Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, StoreError::ShutdownTimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
        // The thread was left behind, still waiting for the disk; thawing lets it finish.
        drop(frozen);
    }

    #[test]
    fn shutdown_finishes_the_pending_write_or_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = DurableFile::new(dir.path(), "state.json");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let w = StateWriter::spawn(f.clone(), tx);
        for n in 1..=50 {
            w.submit(n, &S { n }).unwrap();
        }
        w.shutdown(Duration::from_secs(5)).unwrap();
        assert_eq!(f.load::<S>(ok).value, Some(S { n: 50 }));

        std::fs::create_dir(dir.path().join("state.json.tmp")).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let w = StateWriter::spawn(f.clone(), tx);
        w.submit(51, &S { n: 51 }).unwrap();
        let started = Instant::now();
        let err = w.shutdown(Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, StoreError::Unwritten { generation: 51, .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(next_ack(&mut rx).result.is_err());
        assert_eq!(f.load::<S>(ok).value, Some(S { n: 50 }));
    }
}
