//! Filesystem access for host imports: resolution without a check-then-open race, and a bounded
//! pool of threads per resource so a hung mount or a FIFO costs at most a few stuck threads.
//!
//! **Resolution.** A path is walked one component at a time from a descriptor of `/`, each step
//! with `openat(…, O_PATH | O_NOFOLLOW)` relative to the directory reached so far. A symlink is
//! never followed by the kernel: its text is read and spliced into the walk, so the walk knows
//! the path it really reached (the *resolved* path) and holds a descriptor of that very object.
//! The caller checks the grants on the resolved path and then opens the final component relative
//! to the held directory, again with `O_NOFOLLOW`: a directory swapped for a symlink after the
//! check cannot redirect the open (the swap makes it fail instead).
//!
//! **Opening.** The target is first opened with `O_PATH` (which never blocks and has no side
//! effects, unlike opening a device or a FIFO) and its type read with `fstat`; only a regular file
//! is then opened for reading (`O_NONBLOCK`, and checked to be the same inode) and only a
//! directory is listed. Anything else (FIFO, socket, device) is refused.
//!
//! **Threads.** Every touch of the filesystem runs on a pool thread, holding one of the
//! resource's [`FsPool`]'s [`POOL_SIZE`] permits (the threads are shared by the resources, the
//! permits are per resource). The pool keeps its threads between calls (a
//! monitor every second would otherwise start and end two or three threads a second per
//! resource) and starts one only when every thread it has is busy; a thread idle for
//! [`IDLE_EXIT`] ends. A call that overruns the action's deadline is abandoned: its thread stays
//! blocked in the kernel (nothing can cancel a blocked `open` on a dead NFS server) but keeps its
//! permit, so at most [`POOL_SIZE`] threads per resource can ever be stuck, and further calls
//! fail at once instead of piling up threads. The threads are detached: the process exits
//! whatever they are doing (unlike tokio's blocking pool, which a runtime waits for when it
//! shuts down).

use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// Filesystem calls of one resource that may be in flight (or stuck) at once.
pub const POOL_SIZE: usize = 4;

/// A pool thread with nothing to do for this long ends (a resource monitored every few seconds
/// keeps one).
pub const IDLE_EXIT: Duration = Duration::from_secs(60);

/// Symlinks followed in one resolution before giving up (as the kernel's own limit).
const MAX_LINKS: u32 = 40;

/// Why a pooled call produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("{POOL_SIZE} earlier filesystem calls of this resource are still waiting for the filesystem; refused at once")]
    Busy,
    #[error("the filesystem did not answer before the action's deadline")]
    Timeout,
    #[error("cannot start a thread for the filesystem call: {0}")]
    Spawn(String),
    #[error("the filesystem call was lost (its thread panicked)")]
    Lost,
}

type Job = Box<dyn FnOnce() + Send>;

/// The bounded set of filesystem threads of one resource (shared by its successive instances).
#[derive(Clone)]
pub struct FsPool {
    permits: Arc<tokio::sync::Semaphore>,
    shared: Arc<Shared>,
}

/// Jobs waiting for a thread, and how many threads wait for jobs.
struct Shared {
    queue: std::sync::Mutex<Queue>,
    ready: std::sync::Condvar,
}

#[derive(Default)]
struct Queue {
    jobs: std::collections::VecDeque<Job>,
    idle: usize,
}

impl std::fmt::Debug for FsPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsPool").field("available", &self.available()).finish()
    }
}

impl Default for FsPool {
    fn default() -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(POOL_SIZE)),
            shared: Arc::new(Shared { queue: std::sync::Mutex::new(Queue::default()), ready: std::sync::Condvar::new() }),
        }
    }
}

impl FsPool {
    /// A pool of one resource whose threads are shared with every other pool made this way;
    /// its permits are its own, so at most [`POOL_SIZE`] of this resource's calls are in flight
    /// or stuck, whatever the others do. A warm thread then serves the calls of many resources
    /// (monitors due together run one after another on it), instead of each resource's own
    /// thread being woken for each of its calls.
    pub fn with_shared_threads() -> Self {
        static SHARED: std::sync::OnceLock<Arc<Shared>> = std::sync::OnceLock::new();
        let shared =
            SHARED.get_or_init(|| Arc::new(Shared { queue: std::sync::Mutex::new(Queue::default()), ready: std::sync::Condvar::new() }));
        Self { permits: Arc::new(tokio::sync::Semaphore::new(POOL_SIZE)), shared: shared.clone() }
    }

    /// Run `op` on a thread of the pool and wait for it at most `within` (host stalls excluded).
    pub async fn run<T: Send + 'static>(&self, within: Duration, op: impl FnOnce() -> T + Send + 'static) -> Result<T, PoolError> {
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| PoolError::Busy)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _permit = permit; // released when the operation returns, however late
            let _ = tx.send(op());
        });
        self.submit(job)?;
        match super::stall::timeout(within, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(PoolError::Lost),
            Err(_) => Err(PoolError::Timeout),
        }
    }

    /// Permits free right now (for tests).
    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Hand a job to an idle thread, or start one. With a permit held there are fewer than
    /// [`POOL_SIZE`] jobs in flight, so no more than that many threads ever exist.
    fn submit(&self, job: Job) -> Result<(), PoolError> {
        let mut q = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.idle > q.jobs.len() {
            q.jobs.push_back(job);
            drop(q);
            self.shared.ready.notify_one();
            return Ok(());
        }
        drop(q);
        let shared = self.shared.clone();
        std::thread::Builder::new()
            .name("warden-fs".into())
            .spawn(move || {
                job();
                worker(&shared);
            })
            .map(|_| ())
            .map_err(|e| PoolError::Spawn(e.to_string()))
    }
}

/// A pool thread: run queued jobs; end after [`IDLE_EXIT`] without one.
fn worker(shared: &Shared) {
    let mut q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(job) = q.jobs.pop_front() {
            drop(q);
            job();
            q = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            continue;
        }
        q.idle += 1;
        let (guard, timeout) = shared.ready.wait_timeout(q, IDLE_EXIT).unwrap_or_else(|p| p.into_inner());
        q = guard;
        q.idle -= 1;
        if timeout.timed_out() && q.jobs.is_empty() {
            return;
        }
    }
}

/// Where a walk ended.
pub struct Resolved {
    /// The path with every symlink resolved (what the grants are checked against).
    pub path: PathBuf,
    /// The directory holding the target, and the target's name in it (`None`: the target is `/`).
    /// `None` as a whole when the target (or a directory on the way) does not exist.
    pub found: Option<(OwnedFd, Option<OsString>)>,
}

fn io(e: rustix::io::Errno) -> std::io::Error {
    e.into()
}

fn open_root() -> std::io::Result<OwnedFd> {
    rustix::fs::open("/", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).map_err(io)
}

/// Walk `path` (absolute) from `/` without letting the kernel follow any symlink (module docs).
pub fn resolve(path: &str) -> std::io::Result<Resolved> {
    let mut queue: std::collections::VecDeque<OsString> = components(path.as_bytes()).collect();
    // The directories reached, root first; `names[i]` is the name of `dirs[i + 1]`.
    let mut dirs: Vec<OwnedFd> = vec![open_root()?];
    let mut names: Vec<OsString> = Vec::new();
    let mut links = 0u32;
    while let Some(c) = queue.pop_front() {
        if c == ".." {
            if names.pop().is_some() {
                dirs.pop();
            }
            continue;
        }
        let dir = dirs.last().expect("root stays");
        let st = match rustix::fs::statat(dir, c.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => {
                // Judge a missing path by where it would be: the resolved prefix plus the rest.
                let mut rest = names;
                rest.push(c);
                for r in queue {
                    if r == ".." {
                        rest.pop();
                    } else {
                        rest.push(r);
                    }
                }
                return Ok(Resolved { path: join(&rest), found: None });
            }
            Err(e) => return Err(io(e)),
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(std::io::Error::from_raw_os_error(libc::ELOOP));
                }
                let target = rustix::fs::readlinkat(dir, c.as_os_str(), Vec::new()).map_err(io)?;
                let target = target.as_bytes();
                if target.first() == Some(&b'/') {
                    dirs.truncate(1);
                    names.clear();
                }
                for (i, t) in components(target).enumerate() {
                    queue.insert(i, t);
                }
            }
            _ if queue.is_empty() => {
                names.push(c.clone());
                let dir = dirs.pop().expect("root stays");
                return Ok(Resolved { path: join(&names), found: Some((dir, Some(c))) });
            }
            FileType::Directory => {
                let fd = rustix::fs::openat(
                    dir,
                    c.as_os_str(),
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(io)?;
                dirs.push(fd);
                names.push(c);
            }
            // A file in the middle of a path: as the kernel says.
            _ => return Err(std::io::Error::from_raw_os_error(libc::ENOTDIR)),
        }
    }
    // Every component consumed by `..` or none at all: the target is a directory we hold.
    let dir = dirs.pop().expect("root stays");
    Ok(Resolved { path: join(&names), found: Some((dir, None)) })
}

fn components(path: &[u8]) -> impl Iterator<Item = OsString> + '_ {
    path.split(|b| *b == b'/').filter(|c| !c.is_empty() && *c != b".").map(|c| OsStr::from_bytes(c).to_owned())
}

fn join(names: &[OsString]) -> PathBuf {
    let mut p = PathBuf::from("/");
    for n in names {
        p.push(n);
    }
    p
}

/// The target of a walk opened with `O_PATH` (no side effects, never blocks on a FIFO).
fn open_path(dir: &OwnedFd, name: Option<&OsStr>) -> std::io::Result<OwnedFd> {
    rustix::fs::openat(dir, name.unwrap_or(OsStr::new(".")), OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()).map_err(io)
}

/// The type of what a walk reached.
pub fn kind(dir: &OwnedFd, name: Option<&OsStr>) -> std::io::Result<FileType> {
    let fd = open_path(dir, name)?;
    Ok(FileType::from_raw_mode(rustix::fs::fstat(&fd).map_err(io)?.st_mode))
}

/// Read at most `cap` bytes of the regular file a walk reached.
pub fn read_regular(dir: &OwnedFd, name: Option<&OsStr>, cap: u64) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let probe = open_path(dir, name).map_err(|e| e.to_string())?;
    let st = rustix::fs::fstat(&probe).map_err(|e| io(e).to_string())?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {}
        FileType::Directory => return Err("it is a directory".into()),
        other => return Err(format!("it is not a regular file ({}); only regular files are read", type_name(other))),
    }
    let fd = rustix::fs::openat(
        dir,
        name.unwrap_or(OsStr::new(".")),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(e).to_string())?;
    let again = rustix::fs::fstat(&fd).map_err(|e| io(e).to_string())?;
    if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino) {
        return Err("it was replaced while being opened".into());
    }
    let mut out = Vec::new();
    std::fs::File::from(fd).take(cap).read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The sorted entry names of the directory a walk reached.
pub fn list_directory(dir: &OwnedFd, name: Option<&OsStr>) -> Result<Vec<String>, String> {
    let fd = rustix::fs::openat(
        dir,
        name.unwrap_or(OsStr::new(".")),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io(e).to_string())?;
    let mut names = Vec::new();
    for entry in rustix::fs::Dir::new(fd).map_err(|e| io(e).to_string())? {
        let entry = entry.map_err(|e| io(e).to_string())?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(String::from_utf8_lossy(n).into_owned());
        }
    }
    names.sort();
    Ok(names)
}

pub fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symlink",
        FileType::Fifo => "a FIFO",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        _ => "of an unknown type",
    }
}

/// `path` resolved as far as it exists, for the operator's own patterns (see `grants.rs`).
pub fn canonical(path: &Path) -> Option<PathBuf> {
    let r = resolve(path.to_str()?).ok()?;
    r.found.map(|_| r.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_links_in_the_middle_and_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("real")).unwrap();
        std::fs::write(base.join("real/f"), "x").unwrap();
        std::os::unix::fs::symlink("real", base.join("rel")).unwrap();
        std::os::unix::fs::symlink(base.join("real/f"), base.join("abs")).unwrap();
        std::os::unix::fs::symlink("../real/f", base.join("real/up")).unwrap();
        for (p, want) in [("rel/f", "real/f"), ("abs", "real/f"), ("real/up", "real/f"), ("rel/missing/x", "real/missing/x")] {
            let r = resolve(&format!("{}/{p}", base.display())).unwrap();
            assert_eq!(r.path, base.join(want), "{p}");
        }
        let r = resolve(&format!("{}/abs", base.display())).unwrap();
        let (d, n) = r.found.unwrap();
        assert_eq!(read_regular(&d, n.as_deref(), 10).unwrap(), b"x");
    }

    #[tokio::test]
    async fn the_pool_reuses_its_threads() {
        let pool = FsPool::default();
        let t = Duration::from_secs(10);
        let first = pool.run(t, || std::thread::current().id()).await.unwrap();
        for _ in 0..20 {
            // Sequential calls: the thread that finished the last one takes the next.
            let mut same = false;
            for _ in 0..100 {
                if pool.run(t, || std::thread::current().id()).await.unwrap() == first {
                    same = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert!(same, "a new thread for a sequential call");
        }
        // Concurrent calls up to the pool's size each get a thread.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let mut held = Vec::new();
        for _ in 0..POOL_SIZE {
            let rx = rx.clone();
            let p = pool.clone();
            held.push(tokio::spawn(async move { p.run(t, move || rx.lock().unwrap().recv().ok()).await }));
        }
        while pool.available() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.run(t, || ()).await, Err(PoolError::Busy));
        for _ in 0..POOL_SIZE {
            tx.send(()).unwrap();
        }
        for h in held {
            assert!(h.await.unwrap().is_ok());
        }
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().canonicalize().unwrap().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, FileType::Fifo, Mode::from_raw_mode(0o600), 0).unwrap();
        let r = resolve(fifo.to_str().unwrap()).unwrap();
        let (d, n) = r.found.unwrap();
        assert!(read_regular(&d, n.as_deref(), 10).unwrap_err().contains("FIFO"));
    }

    #[test]
    fn link_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::os::unix::fs::symlink("b", base.join("a")).unwrap();
        std::os::unix::fs::symlink("a", base.join("b")).unwrap();
        assert!(resolve(&format!("{}/a", base.display())).is_err());
    }
}
