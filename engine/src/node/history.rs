//! The event history: every action with its start time, duration, result and reason, and every
//! scheduler decision worth telling an operator. Kept in memory (the last [`KEEP`]) and appended
//! to `<state_dir>/events.jsonl`.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub const KEEP: usize = 5000;

/// The history file is rotated (to `events.jsonl.1`, replacing the previous one) past this size.
pub const ROTATE_BYTES: u64 = 16 << 20;

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

pub struct History {
    recent: VecDeque<EventRecord>,
    next_seq: u64,
    file: Option<std::fs::File>,
    path: PathBuf,
    pub feed: broadcast::Sender<EventRecord>,
}

pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl History {
    pub fn open(path: PathBuf) -> Self {
        // Continue the sequence after what is on disk, so `events --since` stays meaningful
        // across restarts.
        let mut recent = VecDeque::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for line in text.lines().rev().take(KEEP) {
                if let Ok(e) = serde_json::from_str::<EventRecord>(line) {
                    recent.push_front(e);
                }
            }
        }
        let next_seq = recent.back().map_or(1, |e| e.seq + 1);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(
                |e| tracing::warn!(path = %path.display(), error = %e, "cannot write the event history file; keeping it in memory only"),
            )
            .ok();
        let (feed, _) = broadcast::channel(1024);
        Self { recent, next_seq, file, path, feed }
    }

    pub fn record(&mut self, mut e: EventRecord) {
        e.seq = self.next_seq;
        self.next_seq += 1;
        self.rotate_if_large();
        if let Some(f) = &mut self.file {
            if let Ok(line) = serde_json::to_string(&e) {
                if writeln!(f, "{line}").is_err() {
                    tracing::warn!(path = %self.path.display(), "cannot append to the event history file");
                }
            }
        }
        let _ = self.feed.send(e.clone());
        self.recent.push_back(e);
        while self.recent.len() > KEEP {
            self.recent.pop_front();
        }
    }

    /// Keep the file bounded: one previous generation is kept beside it.
    fn rotate_if_large(&mut self) {
        let Some(f) = &self.file else { return };
        if f.metadata().map(|m| m.len()).unwrap_or(0) < ROTATE_BYTES {
            return;
        }
        let old = self.path.with_extension("jsonl.1");
        if let Err(e) = std::fs::rename(&self.path, &old) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot rotate the event history file");
            return;
        }
        self.file = std::fs::OpenOptions::new().create(true).append(true).open(&self.path).ok();
    }

    pub fn since(&self, seq: u64) -> Vec<EventRecord> {
        self.recent.iter().filter(|e| e.seq > seq).cloned().collect()
    }

    pub fn last(&self, n: usize) -> Vec<EventRecord> {
        self.recent.iter().rev().take(n).rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn sequence_continues_across_restarts_and_the_file_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut h = History::open(path.clone());
        h.record(rec("a"));
        h.record(rec("b"));
        drop(h);
        let mut h = History::open(path.clone());
        h.record(rec("c"));
        assert_eq!(h.last(3).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(h.since(2).len(), 1);
        // Past the size limit the file moves aside and a new one starts.
        let big = "x".repeat(1 << 20);
        for _ in 0..17 {
            h.record(rec(&big));
        }
        assert!(dir.path().join("events.jsonl.1").exists());
        assert!(std::fs::metadata(&path).unwrap().len() < ROTATE_BYTES);
    }
}
