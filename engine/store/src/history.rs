//! The event history: every action with its start time, duration, result and reason, and every
//! scheduler decision worth telling an operator. Kept in memory (the last [`KEEP`]) and appended
//! to `<state_dir>/events.jsonl` by a dedicated writer thread.
//!
//! The file is a log of JSON lines. Its damage model, and what is done about each case:
//! - a crash mid-write leaves a torn last line: cut at open, so the next record starts on a
//!   line of its own;
//! - a failed write (a full disk) could leave part of a line: the file is cut back to its length
//!   before the write, so two records are never glued together; if even that fails, the next
//!   record starts with a newline, isolating the fragment on a line of its own;
//! - a damaged line (bad UTF-8, bad JSON) costs that line only: the rest is read;
//! - records that could not be written are counted, and a marker record says how many once
//!   writing works again, so a gap is visible rather than silent;
//! - sequence numbers continue after the highest one on disk (the file and its rotated
//!   predecessor), so `events --since N` never sees a number twice.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
#[cfg(not(test))]
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use crate::unix_ms;

/// Records kept in memory for `since` and `last`.
pub const KEEP: usize = 5000;

/// The history file is rotated (to `events.jsonl.1`, replacing the previous one) past this size.
pub const ROTATE_BYTES: u64 = 16 << 20;

/// Records waiting for the writer thread. Past this (a hung or very slow disk) records are kept
/// in memory and on the feed only, and counted as not written.
pub const QUEUE: usize = 4096;

/// A record's `message` is cut to this many bytes (the cut mark included).
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// `kind`, `subject`, `action` and `result` are cut to this many bytes (the cut mark included).
pub const MAX_FIELD_BYTES: usize = 256;

/// Appended to a field that was cut.
pub const CUT_MARK: &str = "… [cut]";

/// How long dropping a [`History`] waits for the writer to drain its queue.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub seq: u64,
    /// Unix time in milliseconds when the action started (or the decision was taken).
    pub at_ms: u64,
    /// `action`, `monitor`, `decision`, `operator`, `node`.
    pub kind: String,
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// `ok`, `failed`, `timeout`, or empty for decisions.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// What the caller and the writer thread share.
#[derive(Default)]
struct Shared {
    /// Records the writer could not write, handed over once a later write succeeded (so the
    /// marker saying so has a chance to be written).
    reportable: AtomicU64,
    /// Records the writer could not write and has not handed over yet (writing still fails).
    failing: AtomicU64,
    /// Records the writer has taken off the queue (written or not); lets `flush` wait.
    processed: Mutex<u64>,
    processed_cv: Condvar,
    #[cfg(test)]
    hooks: test_hooks::Hooks,
}

pub struct History {
    recent: VecDeque<EventRecord>,
    next_seq: u64,
    path: PathBuf,
    pub feed: broadcast::Sender<EventRecord>,
    tx: Option<SyncSender<EventRecord>>,
    /// Records handed to the writer.
    queued: u64,
    /// Records that never reached the writer (queue full, or writer gone), not yet reported.
    unqueued: u64,
    shared: Arc<Shared>,
    problems: Vec<String>,
    /// Disconnects when the writer thread ends: lets drop wait with a timeout.
    done: Option<Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl History {
    /// Read what is on disk (cutting a torn last line), and start the writer thread. Never
    /// fails: without a usable file the history is kept in memory, and the problems found are
    /// listed by [`problems`](Self::problems). This reads the disk, so call it at startup, not
    /// from the deciding loop.
    pub fn open(path: PathBuf) -> Self {
        let mut recent = VecDeque::new();
        let mut max_seq = 0;
        let mut problems = Vec::new();
        scan(&rotated(&path), false, &mut recent, &mut max_seq, &mut problems);
        scan(&path, true, &mut recent, &mut max_seq, &mut problems);
        for p in &problems {
            tracing::warn!(path = %path.display(), "event history: {p}");
        }
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (done_tx, done) = mpsc::channel::<()>();
        let writer = Writer { path: path.clone(), file: None, needs_newline: false, failed: 0, dirty: false, shared: shared.clone() };
        let (tx, done, thread) = match std::thread::Builder::new().name("warden-history".into()).spawn(move || {
            let _done = done_tx;
            writer.run(rx);
        }) {
            Ok(t) => (Some(tx), Some(done), Some(t)),
            Err(e) => {
                problems.push(format!("cannot start the history writer thread ({e}); keeping the history in memory only"));
                (None, None, None)
            }
        };
        let (feed, _) = broadcast::channel(1024);
        Self { recent, next_seq: max_seq + 1, path, feed, tx, queued: 0, unqueued: 0, shared, problems, done, thread }
    }

    /// What [`open`](Self::open) found wrong on disk (torn tail cut, damaged lines skipped,
    /// unreadable files), one sentence each; worth recording as events.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records not written to disk and not yet reported by a marker record.
    pub fn unwritten(&self) -> u64 {
        self.unqueued + self.shared.reportable.load(Ordering::Relaxed) + self.shared.failing.load(Ordering::Relaxed)
    }

    /// Number `e` (its `seq` is replaced), bound its size, keep it in memory, publish it on the
    /// feed and queue it for the writer. Never touches the disk, never blocks.
    pub fn record(&mut self, mut e: EventRecord) {
        let lost = self.unqueued + self.shared.reportable.swap(0, Ordering::Relaxed);
        if lost > 0 {
            let marker = EventRecord {
                seq: self.next_seq,
                at_ms: unix_ms(SystemTime::now()),
                kind: "node".into(),
                subject: "history".into(),
                action: None,
                duration_ms: None,
                result: String::new(),
                message: format!(
                    "{lost} records could not be written to {} (disk error or hung disk); they were kept in memory only",
                    self.path.display()
                ),
            };
            // Only when the writer can take it: a marker that is not written itself would just
            // grow the gap it reports (and flood memory while the disk hangs).
            if self.tx.as_ref().is_some_and(|tx| tx.try_send(marker.clone()).is_ok()) {
                self.queued += 1;
                self.unqueued = 0;
                self.next_seq += 1;
                self.keep(marker);
            } else {
                self.unqueued = lost;
            }
        }
        bound(&mut e);
        e.seq = self.next_seq;
        self.next_seq += 1;
        // Full queue (hung disk) or no writer: kept in memory and on the feed, counted.
        if self.tx.as_ref().is_some_and(|tx| tx.try_send(e.clone()).is_ok()) {
            self.queued += 1;
        } else {
            if self.unqueued == 0 {
                tracing::warn!(path = %self.path.display(), "the event history writer is not keeping up (hung disk?); keeping records in memory only");
            }
            self.unqueued += 1;
        }
        self.keep(e);
    }

    fn keep(&mut self, e: EventRecord) {
        let _ = self.feed.send(e.clone());
        self.recent.push_back(e);
        while self.recent.len() > KEEP {
            self.recent.pop_front();
        }
    }

    /// Wait until the writer has handled every queued record (written or counted as failed),
    /// at most `wait`; false on timeout. For tests and orderly shutdown.
    pub fn flush(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut processed = self.shared.processed.lock().unwrap_or_else(|p| p.into_inner());
        while *processed < self.queued {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            processed = self.shared.processed_cv.wait_timeout(processed, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    pub fn since(&self, seq: u64) -> Vec<EventRecord> {
        self.recent.iter().filter(|e| e.seq > seq).cloned().collect()
    }

    pub fn last(&self, n: usize) -> Vec<EventRecord> {
        self.recent.iter().rev().take(n).rev().cloned().collect()
    }
}

impl Drop for History {
    fn drop(&mut self) {
        // Closing the queue lets the writer drain it and stop; a hung disk gets a bounded wait.
        self.tx.take();
        let Some(done) = self.done.take() else { return };
        match done.recv_timeout(CLOSE_WAIT) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                tracing::error!(path = %self.path.display(), "the event history writer did not finish in {CLOSE_WAIT:?}; leaving it behind");
            }
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }
        let lost = self.unwritten();
        if lost > 0 {
            tracing::warn!(path = %self.path.display(), lost, "event history records were not written");
        }
    }
}

/// `<path>.1`, the previous generation.
fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// Cut the record's fields to their bounds, so one runaway message (a plugin's whole stderr)
/// cannot blow up memory, the file or the control socket's answers.
fn bound(e: &mut EventRecord) {
    cut(&mut e.message, MAX_MESSAGE_BYTES);
    cut(&mut e.kind, MAX_FIELD_BYTES);
    cut(&mut e.subject, MAX_FIELD_BYTES);
    cut(&mut e.result, MAX_FIELD_BYTES);
    if let Some(a) = &mut e.action {
        cut(a, MAX_FIELD_BYTES);
    }
}

fn cut(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut at = max - CUT_MARK.len();
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    s.push_str(CUT_MARK);
}

/// Read one history file into `recent` (keeping the last [`KEEP`]) and raise `max_seq` to the
/// highest number in it, damaged lines skipped and counted.
fn scan(path: &Path, cut_torn: bool, recent: &mut VecDeque<EventRecord>, max_seq: &mut u64, problems: &mut Vec<String>) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            problems.push(format!("cannot read {} ({e}); its records are not shown", path.display()));
            return;
        }
    };
    let parse = |line: &[u8]| std::str::from_utf8(line).ok().and_then(|s| serde_json::from_str::<EventRecord>(s).ok());
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() {
        // A torn line might still name a sequence number; it must not be handed out again.
        if let Some(e) = parse(&bytes[complete..]) {
            *max_seq = (*max_seq).max(e.seq);
        }
        let torn = bytes.len() - complete;
        if cut_torn {
            let cut = OpenOptions::new().write(true).open(path).and_then(|f| {
                f.set_len(complete as u64)?;
                f.sync_all()
            });
            match cut {
                Ok(()) => problems.push(format!("cut a torn last line of {torn} bytes from {} (an interrupted write)", path.display())),
                // The writer starts with a newline then, so the fragment stays on its own line.
                Err(e) => problems.push(format!("cannot cut a torn last line of {torn} bytes from {} ({e})", path.display())),
            }
        } else {
            problems.push(format!("ignored a torn last line of {torn} bytes in {}", path.display()));
        }
    }
    let mut bad = 0;
    for line in bytes[..complete].split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        match parse(line) {
            Some(e) => {
                *max_seq = (*max_seq).max(e.seq);
                recent.push_back(e);
                if recent.len() > KEEP {
                    recent.pop_front();
                }
            }
            None => bad += 1,
        }
    }
    if bad > 0 {
        problems.push(format!("skipped {bad} damaged lines (not UTF-8 or not a record) in {}", path.display()));
    }
}

/// The writer thread's state: the only code that touches the history file after `open`.
struct Writer {
    path: PathBuf,
    /// Opened on first use and after a failure, so a file that went bad (or a directory that
    /// came back) is retried with each record.
    file: Option<File>,
    /// A failed write could not be cut back: start the next record on a line of its own.
    needs_newline: bool,
    /// Consecutive records that could not be written.
    failed: u64,
    /// Written since the last fsync.
    dirty: bool,
    shared: Arc<Shared>,
}

impl Writer {
    fn run(mut self, rx: Receiver<EventRecord>) {
        loop {
            let e = match rx.try_recv() {
                Ok(e) => e,
                Err(TryRecvError::Empty) => {
                    // Idle: make what was written durable, once per burst rather than per record.
                    self.sync();
                    match rx.recv() {
                        Ok(e) => e,
                        Err(_) => break,
                    }
                }
                Err(TryRecvError::Disconnected) => break,
            };
            #[cfg(test)]
            let shared = self.shared.clone();
            #[cfg(test)]
            let _stall = shared.hooks.stall.lock().unwrap_or_else(|p| p.into_inner());
            self.write(&e);
            *self.shared.processed.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            self.shared.processed_cv.notify_all();
        }
        self.sync();
    }

    fn sync(&mut self) {
        if let (true, Some(f)) = (self.dirty, &self.file) {
            if let Err(e) = f.sync_data() {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot fsync the event history");
            }
        }
        self.dirty = false;
    }

    fn write(&mut self, e: &EventRecord) {
        match self.append(e) {
            Ok(()) => {
                if self.failed > 0 {
                    self.shared.failing.store(0, Ordering::Relaxed);
                    self.shared.reportable.fetch_add(self.failed, Ordering::Relaxed);
                    self.failed = 0;
                }
            }
            Err(err) => {
                if self.failed == 0 {
                    tracing::warn!(path = %self.path.display(), error = %err, "cannot append to the event history; counting lost records");
                }
                self.failed += 1;
                self.shared.failing.store(self.failed, Ordering::Relaxed);
            }
        }
    }

    fn append(&mut self, e: &EventRecord) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(512);
        if self.needs_newline {
            buf.push(b'\n');
        }
        serde_json::to_writer(&mut buf, e)?;
        buf.push(b'\n');
        if self.file.is_none() {
            self.file = Some(OpenOptions::new().create(true).append(true).open(&self.path)?);
        }
        self.rotate_if_large();
        let f = self.file.as_mut().expect("opened above");
        let before = f.metadata()?.len();
        // One write of the whole line on an O_APPEND file: the record goes in whole, or is cut
        // back out below.
        #[cfg(test)]
        let result = self.shared.hooks.write(f, &buf);
        #[cfg(not(test))]
        let result = f.write_all(&buf);
        match result {
            Ok(()) => {
                self.needs_newline = false;
                self.dirty = true;
                Ok(())
            }
            Err(err) => {
                if f.set_len(before).is_err() {
                    self.needs_newline = true;
                }
                // Reopen next time, in case the handle itself went bad.
                self.file = None;
                Err(err)
            }
        }
    }

    /// Keep the file bounded: one previous generation is kept beside it.
    fn rotate_if_large(&mut self) {
        let Some(f) = &self.file else { return };
        if f.metadata().map(|m| m.len()).unwrap_or(0) < ROTATE_BYTES {
            return;
        }
        let _ = f.sync_all();
        let old = rotated(&self.path);
        if let Err(e) = std::fs::rename(&self.path, &old) {
            // Keep appending to the big file rather than losing records.
            tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate the event history file");
            return;
        }
        self.file = None;
        match OpenOptions::new().create(true).append(true).open(&self.path) {
            Ok(f) => self.file = Some(f),
            Err(e) => tracing::warn!(path = %self.path.display(), error = %e, "cannot open a new event history file"),
        }
        if let Some(dir) = self.path.parent() {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
    }
}

#[cfg(test)]
mod test_hooks {
    use std::io::Write;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Mutex;

    /// Faults the tests inject into the writer thread.
    #[derive(Default)]
    pub(super) struct Hooks {
        /// The next this many writes write half the line, then fail as a full disk would.
        pub fail_writes: AtomicU32,
        /// Held by a test to make the writer hang before each record, as on a frozen disk.
        pub stall: Mutex<()>,
    }

    impl Hooks {
        pub fn write(&self, f: &mut std::fs::File, buf: &[u8]) -> std::io::Result<()> {
            if self.fail_writes.load(Ordering::SeqCst) > 0 {
                self.fail_writes.fetch_sub(1, Ordering::SeqCst);
                f.write_all(&buf[..buf.len() / 2])?;
                return Err(std::io::Error::from(std::io::ErrorKind::StorageFull));
            }
            f.write_all(buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    const WAIT: Duration = Duration::from_secs(30);

    fn rec(msg: &str) -> EventRecord {
        EventRecord {
            seq: 0,
            at_ms: 1,
            kind: "node".into(),
            subject: "n".into(),
            action: None,
            duration_ms: None,
            result: String::new(),
            message: msg.into(),
        }
    }

    fn line(seq: u64, msg: &str) -> String {
        serde_json::to_string(&EventRecord { seq, ..rec(msg) }).unwrap() + "\n"
    }

    /// Every line of the file must be a whole record.
    fn on_disk(path: &Path) -> Vec<EventRecord> {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.is_empty() || text.ends_with('\n'));
        text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("glued or damaged line {l:?}: {e}"))).collect()
    }

    fn seqs(v: &[EventRecord]) -> Vec<u64> {
        v.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn the_serde_shape_is_unchanged() {
        let e = EventRecord { seq: 7, action: Some("start".into()), duration_ms: Some(3), result: "ok".into(), ..rec("") };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"seq":7,"at_ms":1,"kind":"node","subject":"n","action":"start","duration_ms":3,"result":"ok"}"#
        );
        assert_eq!(serde_json::from_str::<EventRecord>(r#"{"seq":1,"at_ms":2,"kind":"k","subject":"s"}"#).unwrap().message, "");
    }

    #[test]
    fn sequence_continues_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut h = History::open(path.clone());
        h.record(rec("a"));
        h.record(rec("b"));
        drop(h);
        let mut h = History::open(path.clone());
        assert!(h.problems().is_empty(), "{:?}", h.problems());
        h.record(rec("c"));
        assert_eq!(seqs(&h.last(3)), vec![1, 2, 3]);
        assert_eq!(h.since(2).len(), 1);
        assert!(h.flush(WAIT));
        assert_eq!(seqs(&on_disk(&path)), vec![1, 2, 3]);
    }

    #[test]
    fn a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let torn = line(3, "torn");
        std::fs::write(&path, line(1, "a") + &line(2, "b") + &torn[..torn.len() / 2]).unwrap();
        let mut h = History::open(path.clone());
        assert!(h.problems().iter().any(|p| p.contains("cut a torn last line")), "{:?}", h.problems());
        assert_eq!(seqs(&h.last(10)), vec![1, 2]);
        h.record(rec("c"));
        assert!(h.flush(WAIT));
        assert_eq!(seqs(&on_disk(&path)), vec![1, 2, 3]);
    }

    #[test]
    fn a_bad_line_is_skipped_keeping_the_rest_and_numbering_continues_after_the_highest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut bytes = line(1, "a").into_bytes();
        let mut bad = line(9, "bad").into_bytes();
        bad[20] = 0xff; // one invalid UTF-8 byte
        bytes.extend(bad);
        bytes.extend(line(40, "highest").into_bytes());
        bytes.extend(b"not json at all\n");
        bytes.extend(line(3, "after").into_bytes());
        std::fs::write(&path, bytes).unwrap();
        let mut h = History::open(path.clone());
        assert_eq!(seqs(&h.last(10)), vec![1, 40, 3]);
        assert!(h.problems().iter().any(|p| p.contains("skipped 2 damaged lines")), "{:?}", h.problems());
        h.record(rec("next"));
        assert_eq!(h.last(1)[0].seq, 41);
        assert!(h.flush(WAIT));
        // The bad lines stay for a post-mortem; the new record is whole after them.
        let text = std::fs::read(&path).unwrap();
        let last = text[..text.len() - 1].split(|&b| b == b'\n').next_back().unwrap();
        assert_eq!(serde_json::from_slice::<EventRecord>(last).unwrap().seq, 41);
    }

    #[test]
    fn numbering_continues_from_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(dir.path().join("events.jsonl.1"), line(99, "old") + &line(100, "older file, higher")).unwrap();
        std::fs::write(&path, line(5, "odd")).unwrap();
        let mut h = History::open(path.clone());
        assert_eq!(seqs(&h.last(10)), vec![99, 100, 5]);
        h.record(rec("x"));
        assert_eq!(h.last(1)[0].seq, 101);
        drop(h);
        // Even with no current file at all.
        std::fs::remove_file(&path).unwrap();
        let mut h = History::open(path.clone());
        h.record(rec("y"));
        assert_eq!(h.last(1)[0].seq, 101);
    }

    #[test]
    fn a_failed_write_leaves_no_glued_lines_and_a_marker_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut h = History::open(path.clone());
        h.record(rec("a"));
        assert!(h.flush(WAIT));
        h.shared.hooks.fail_writes.store(2, Ordering::SeqCst);
        h.record(rec("lost 1"));
        h.record(rec("lost 2"));
        assert!(h.flush(WAIT));
        assert_eq!(h.unwritten(), 2);
        h.record(rec("b"));
        assert!(h.flush(WAIT));
        h.record(rec("c"));
        assert!(h.flush(WAIT));
        assert_eq!(h.unwritten(), 0);
        let disk = on_disk(&path);
        assert_eq!(seqs(&disk), vec![1, 4, 5, 6]);
        assert!(disk[2].message.starts_with("2 records could not be written"), "{:?}", disk[2]);
        // Memory and the feed keep everything, the marker included.
        assert_eq!(seqs(&h.last(10)), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn a_hung_writer_never_blocks_recording_and_the_gap_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut h = History::open(path.clone());
        let shared = h.shared.clone();
        let stall = shared.hooks.stall.lock().unwrap();
        let total = QUEUE + 100;
        for i in 0..total {
            h.record(rec(&format!("r{i}")));
        }
        // The writer takes its first record whenever its thread gets to it (before the stall
        // hook holds it): if that frees a slot after the queue first filled, a marker for the
        // gap so far is queued and kept too. Every record is kept, besides any such marker, and
        // what is not queued is counted (unwritten, or already in such a marker).
        let is_marker = |e: &EventRecord| e.subject == "history";
        let count = |e: &EventRecord| e.message.split(' ').next().unwrap().parse::<u64>().unwrap();
        let kept = h.last(KEEP);
        assert_eq!(kept.iter().filter(|e| !is_marker(e)).count(), total);
        let marked: u64 = kept.iter().filter(|e| is_marker(e)).map(count).sum();
        assert!(h.unwritten() + marked >= 99, "{} + {marked}", h.unwritten());
        drop(stall);
        assert!(h.flush(WAIT));
        let unqueued = h.unwritten();
        h.record(rec("after"));
        assert!(h.flush(WAIT));
        let disk = on_disk(&path);
        let marker = &disk[disk.len() - 2];
        assert_eq!(marker.message.split(' ').next().unwrap(), unqueued.to_string());
        // What is on disk and what the markers say is missing add up to every record.
        let reported: u64 = disk.iter().filter(|e| is_marker(e)).map(count).sum();
        let written = disk.iter().filter(|e| !is_marker(e) && e.message != "after").count() as u64;
        assert_eq!(written + reported, total as u64);
        assert_eq!(h.unwritten(), 0);
    }

    #[test]
    fn records_are_bounded_in_size_and_number() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::open(dir.path().join("events.jsonl"));
        let mut e = rec(&"é".repeat(10_000));
        e.subject = "s".repeat(1000);
        e.action = Some("ä".repeat(1000));
        h.record(e);
        let got = h.last(1).pop().unwrap();
        assert!(got.message.len() <= MAX_MESSAGE_BYTES && got.message.len() > MAX_MESSAGE_BYTES - 16);
        assert!(got.message.ends_with(CUT_MARK));
        assert!(got.subject.len() <= MAX_FIELD_BYTES && got.subject.ends_with(CUT_MARK));
        assert!(got.action.unwrap().len() <= MAX_FIELD_BYTES);
        for _ in 0..KEEP + 10 {
            h.record(rec("x"));
        }
        assert_eq!(h.last(KEEP + 100).len(), KEEP);
        assert_eq!(h.since(0).len(), KEEP);
    }

    #[test]
    fn the_file_rotates_keeping_one_previous_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut h = History::open(path.clone());
        let big = "x".repeat(MAX_MESSAGE_BYTES);
        let n = (2 * ROTATE_BYTES as usize) / MAX_MESSAGE_BYTES + 100;
        for i in 0..n {
            h.record(rec(&big));
            if i % 1000 == 0 {
                assert!(h.flush(WAIT));
            }
        }
        assert!(h.flush(WAIT));
        assert_eq!(h.unwritten(), 0);
        drop(h);
        let old = on_disk(&dir.path().join("events.jsonl.1"));
        let cur = on_disk(&path);
        assert!(std::fs::metadata(&path).unwrap().len() < ROTATE_BYTES);
        // Two rotations happened: the oldest generation is gone, the two kept are contiguous.
        assert!(old[0].seq > 1);
        assert_eq!(old.last().unwrap().seq + 1, cur[0].seq);
        assert_eq!(cur.last().unwrap().seq, n as u64);
        let mut h = History::open(path.clone());
        h.record(rec("y"));
        assert_eq!(h.last(1)[0].seq, n as u64 + 1);
    }
}
