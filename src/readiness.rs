//! Readiness kept on disk with each copy, so that a standby restarted while
//! its primary is down still knows which copies were ready (docs/design.md,
//! "Readiness").
//!
//! - A **record** in the copy's own directory
//!   (`pg_replslot/<slot>/sync_logical_slot.verdict`) says "this copy was
//!   ready at these positions". Only ready verdicts are recorded: a copy that
//!   stops being ready loses its record in the same pass, and a dropped copy
//!   takes its record with its directory. pg_basebackup and pg_rewind copy
//!   nothing of `pg_replslot`, so a record never travels to another server.
//! - A **heartbeat** (`pg_logical/sync_logical_slot.verified`) says when a
//!   pass last renewed every record on disk (at most once a second): the age
//!   of a verdict read from disk is counted from it.
//!
//! Neither is fsynced. Losing one (an operating-system crash, a torn write)
//! can only make a copy look not ready from disk, never ready: a record is
//! used only when it parses whole, names positions the copy has not moved
//! back from, and the copy is persistent and not invalidated. A copy moves
//! only forward and only to positions a pass found safe, so a copy ahead of
//! its record (a crash between moving it and writing the record) is still
//! the copy that was ready. Every verdict read from disk is marked as such,
//! with its age, in the status view and `sync_logical_slot_readiness()`.
//! A promotion or a missing prerequisite removes every record.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use pgrx::pg_sys;

use crate::plan::State;
use crate::slot;
use crate::status::SlotStatus;
use crate::types::{Lsn, SlotFilter, Xid};

const RECORD: &str = "sync_logical_slot.verdict";
const HEARTBEAT: &str = "pg_logical/sync_logical_slot.verified";
const HEADER: &str = "sync_logical_slot verdict 1";
/// The heartbeat is written at most this often (microseconds): a verdict
/// read from disk may look up to this much older than it is, never younger.
const HEARTBEAT_EVERY_US: i64 = 1_000_000;

/// What a ready copy was verified against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub database: String,
    pub plugin: String,
    pub remote: (Lsn, Lsn, Xid),
    pub local: (Lsn, Lsn, Xid),
    /// TimestampTz of the pass that wrote it.
    pub verified_at: i64,
}

impl Record {
    fn to_text(&self) -> String {
        format!(
            "{HEADER}\ndatabase={}\nplugin={}\nremote_restart_lsn={}\nremote_confirmed_flush_lsn={}\nremote_catalog_xmin={}\nlocal_restart_lsn={}\nlocal_confirmed_flush_lsn={}\nlocal_catalog_xmin={}\nverified_at={}\nend\n",
            self.database,
            self.plugin,
            self.remote.0,
            self.remote.1,
            self.remote.2,
            self.local.0,
            self.local.1,
            self.local.2,
            self.verified_at
        )
    }

    /// None unless the text is a whole record of this version.
    pub fn parse(text: &str) -> Option<Record> {
        let mut lines = text.lines();
        if lines.next()? != HEADER {
            return None;
        }
        let mut fields = HashMap::new();
        let mut ended = false;
        for line in lines {
            if line == "end" {
                ended = true;
                break;
            }
            let (k, v) = line.split_once('=')?;
            fields.insert(k, v);
        }
        if !ended {
            return None;
        }
        let lsn = |k: &str| fields.get(k)?.parse::<Lsn>().ok();
        let xid = |k: &str| fields.get(k)?.parse::<Xid>().ok();
        Some(Record {
            database: fields.get("database")?.to_string(),
            plugin: fields.get("plugin")?.to_string(),
            remote: (
                lsn("remote_restart_lsn")?,
                lsn("remote_confirmed_flush_lsn")?,
                xid("remote_catalog_xmin")?,
            ),
            local: (
                lsn("local_restart_lsn")?,
                lsn("local_confirmed_flush_lsn")?,
                xid("local_catalog_xmin")?,
            ),
            verified_at: fields.get("verified_at")?.parse().ok()?,
        })
    }

    /// Whether the copy stands where the record says, or moved forward from
    /// there (only a pass moves a copy, only forward, only to safe positions).
    pub fn still_describes(&self, local: (Lsn, Lsn, Xid)) -> bool {
        let (r, c, x) = local;
        r >= self.local.0
            && c >= self.local.1
            && (x == self.local.2 || self.local.2.precedes(x))
            && r.is_valid()
    }
}

fn record_path(name: &str) -> PathBuf {
    PathBuf::from("pg_replslot").join(name).join(RECORD)
}

/// Replaces `path` with `text` (a new file renamed over the old one, so a
/// reader sees one or the other whole; no fsync, see the module comment).
fn replace_file(path: &PathBuf, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    drop(f);
    fs::rename(&tmp, path)
}

fn remove(path: &PathBuf) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn read_record(name: &str) -> Option<Record> {
    Record::parse(&fs::read_to_string(record_path(name)).ok()?)
}

/// When a pass last renewed every record (0: unknown).
fn heartbeat() -> i64 {
    fs::read_to_string(HEARTBEAT)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Keeps the records in step with the worker's passes.
#[derive(Default)]
pub struct Keeper {
    /// The records on disk, as this worker last wrote (or found) them.
    written: HashMap<String, Record>,
    /// `written` was filled from disk (once per worker start).
    scanned: bool,
    heartbeat_at: i64,
}

impl Keeper {
    /// After a pass: the ready rows' records written (when their verdict or
    /// positions changed), the others removed, then the heartbeat.
    pub fn record_pass(&mut self, rows: &[SlotStatus], now: i64) {
        if !self.scanned {
            self.scanned = true;
            for l in slot::local_logical_slots() {
                if let Some(r) = read_record(&l.name) {
                    self.written.insert(l.name, r);
                } else if record_path(&l.name).exists() {
                    // Unreadable: remove it below unless this pass writes it.
                    self.written.insert(
                        l.name,
                        Record {
                            database: String::new(),
                            plugin: String::new(),
                            remote: (Lsn(0), Lsn(0), Xid(0)),
                            local: (Lsn(0), Lsn(0), Xid(0)),
                            verified_at: 0,
                        },
                    );
                }
            }
        }
        let mut failed = false;
        let mut keep = std::collections::HashSet::new();
        for r in rows {
            let Some(local) = r.local.filter(|_| r.ready) else {
                continue;
            };
            keep.insert(r.name.as_str());
            let remote = (
                r.remote_restart_lsn,
                r.remote_confirmed_flush_lsn,
                r.remote_catalog_xmin,
            );
            // Most passes change nothing for most copies: no allocation then.
            if self.written.get(&r.name).is_some_and(|w| {
                w.local == local
                    && w.remote == remote
                    && w.database == r.database
                    && w.plugin == r.plugin
            }) {
                continue;
            }
            let record = Record {
                database: r.database.clone(),
                plugin: r.plugin.clone(),
                remote,
                local,
                verified_at: now,
            };
            match replace_file(&record_path(&r.name), &record.to_text()) {
                Ok(()) => {
                    self.written.insert(r.name.clone(), record);
                }
                Err(_) => {
                    failed |= remove(&record_path(&r.name)).is_err();
                    self.written.remove(&r.name);
                }
            }
        }
        let stale: Vec<String> = self
            .written
            .keys()
            .filter(|n| !keep.contains(n.as_str()))
            .cloned()
            .collect();
        for name in stale {
            failed |= remove(&record_path(&name)).is_err();
            self.written.remove(&name);
        }
        if failed {
            // A record that may say more than the pass found: no heartbeat
            // vouches for any record until every one is right again.
            let _ = remove(&PathBuf::from(HEARTBEAT));
            self.heartbeat_at = 0;
            self.scanned = false;
            self.written.clear();
            return;
        }
        self.renewed(now);
    }

    /// A pass (or the long poll) found every verdict as it was.
    pub fn renewed(&mut self, now: i64) {
        if now - self.heartbeat_at < HEARTBEAT_EVERY_US {
            return;
        }
        if replace_file(&PathBuf::from(HEARTBEAT), &format!("{now}\n")).is_ok() {
            self.heartbeat_at = now;
        }
    }

    /// No verdict can be renewed any more (promotion, missing prerequisite):
    /// every record goes.
    pub fn forget(&mut self) {
        forget_all();
        self.written.clear();
        self.scanned = true;
        self.heartbeat_at = 0;
    }
}

/// Removes every record and the heartbeat.
pub fn forget_all() {
    let _ = remove(&PathBuf::from(HEARTBEAT));
    if let Ok(dir) = fs::read_dir("pg_replslot") {
        for e in dir.flatten() {
            let _ = remove(&e.path().join(RECORD));
        }
    }
}

/// At the worker's start, before any pass: one row per persistent copy of
/// ours that the filter may select, ready when its record on disk still
/// describes it. Call inside a transaction (database names).
pub fn load(filter: &SlotFilter) -> Vec<SlotStatus> {
    let beat = heartbeat();
    slot::local_logical_slots()
        .into_iter()
        .filter(|l| l.persistent && slot::is_ours(&l.name))
        .filter(|l| filter.selects(&l.name, &l.plugin))
        .map(|l| {
            let local = (l.restart_lsn, l.confirmed_flush_lsn, l.catalog_xmin);
            let record = read_record(&l.name);
            let why_not = match (&record, l.invalidated) {
                (_, Some(cause)) => Some(format!(
                    "the copy is invalidated on this standby ({})",
                    cause.as_str()
                )),
                (None, _) => Some("no ready verdict is kept on disk for this copy".into()),
                (Some(r), _) if !r.still_describes(local) => {
                    Some("the copy is not where its last ready verdict found it".into())
                }
                (Some(_), None) => None,
            };
            let database = record
                .as_ref()
                .map(|r| r.database.clone())
                .or_else(|| slot::database_name(l.database_oid))
                .unwrap_or_default();
            let (remote, verified_at) = match &record {
                Some(r) => (r.remote, r.verified_at.max(beat)),
                None => ((Lsn(0), Lsn(0), Xid(0)), 0),
            };
            SlotStatus {
                name: l.name.clone(),
                database,
                plugin: l.plugin.clone(),
                state: if why_not.is_none() {
                    State::Synced
                } else {
                    State::Error
                },
                ready: why_not.is_none(),
                remote_restart_lsn: remote.0,
                remote_confirmed_flush_lsn: remote.1,
                remote_catalog_xmin: remote.2,
                local: Some(local),
                last_sync_at: if why_not.is_none() { verified_at } else { 0 },
                verified_at,
                from_disk: true,
                idle: false,
                last_error: why_not,
            }
        })
        .collect()
}

/// Now, as a TimestampTz.
pub fn now() -> i64 {
    // SAFETY: reads the clock.
    unsafe { pg_sys::GetCurrentTimestamp() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            database: "app".into(),
            plugin: "pgoutput".into(),
            remote: (Lsn(0x1500028), Lsn(0x1500060), Xid(745)),
            local: (Lsn(0x1500028), Lsn(0x1500060), Xid(745)),
            verified_at: 123456789,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let r = record();
        assert_eq!(Record::parse(&r.to_text()), Some(r));
    }

    #[test]
    fn a_torn_or_foreign_record_is_no_record() {
        let text = record().to_text();
        // Cut anywhere before its last line: never a record.
        for cut in 0..text.len() - "end\n".len() {
            assert_eq!(Record::parse(&text[..cut]), None, "cut at {cut}");
        }
        assert_eq!(Record::parse(&text.replace("verdict 1", "verdict 2")), None);
        assert_eq!(
            Record::parse(&text.replace("remote_catalog_xmin=745", "remote_catalog_xmin=x")),
            None
        );
    }

    #[test]
    fn a_copy_ahead_of_its_record_is_described_a_copy_behind_is_not() {
        let r = record();
        assert!(r.still_describes(r.local));
        assert!(r.still_describes((Lsn(0x1600000), Lsn(0x1600000), Xid(800))));
        assert!(!r.still_describes((Lsn(0x1500000), Lsn(0x1500060), Xid(745))));
        assert!(!r.still_describes((Lsn(0x1500028), Lsn(0x1500050), Xid(745))));
        assert!(!r.still_describes((Lsn(0x1500028), Lsn(0x1500060), Xid(700))));
    }
}
