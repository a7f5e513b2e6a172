//! Readiness kept on disk with each copy, so that a standby restarted while
//! its primary is down still knows which copies were ready (docs/design.md,
//! "Readiness").
//!
//! - A **record** in the copy's own directory
//!   (`pg_replslot/<slot>/sync_logical_slot.verdict`) says "this copy was
//!   ready at these positions, verified against these primary positions, on
//!   this timeline". Only ready verdicts are recorded: a copy that stops
//!   being ready loses its record before the pass publishes the change, and
//!   a dropped copy takes its record with its directory.
//! - The **selection** (`pg_replslot/sync_logical_slot.selected`) lists the
//!   slots the last pass selected on the primary, so that a slot whose copy
//!   did not survive the restart (it was still temporary) is known missing.
//! - A **heartbeat** (`pg_replslot/sync_logical_slot.verified`) says when a
//!   pass last renewed every record (at most once a second): the age of a
//!   verdict read from disk counts from it.
//!
//! pg_basebackup and pg_rewind copy nothing of `pg_replslot`, and core skips
//! its plain files at startup, so none of these travels to another server.
//! Writes are not fsynced (a record is rewritten each time its copy moves);
//! removals are. So a crash can lose a new record or heartbeat, never bring
//! back a removed one, and a lost write only makes a copy look not ready: a
//! record counts only when it parses whole, on the timeline being replayed,
//! for a persistent copy of ours that is not invalidated and stands between
//! where the record found it and the primary's positions then (a copy past
//! them was moved by someone else: decoded from on a 16 standby, say).
//! A promotion or a missing prerequisite removes every record.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use pgrx::pg_sys;

use crate::plan::State;
use crate::slot;
use crate::status::SlotStatus;
use crate::types::{Lsn, SlotFilter, Xid};

const RECORD: &str = "sync_logical_slot.verdict";
const SELECTED: &str = "pg_replslot/sync_logical_slot.selected";
const HEARTBEAT: &str = "pg_replslot/sync_logical_slot.verified";
const HEADER: &str = "sync_logical_slot verdict 1";
/// The heartbeat is written at most this often (microseconds): a verdict
/// read from disk may look up to this much older than it is, never younger.
const HEARTBEAT_EVERY_US: i64 = 1_000_000;

/// What a ready copy was verified against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub database: String,
    pub plugin: String,
    pub two_phase: bool,
    pub timeline: u32,
    pub remote: (Lsn, Lsn, Xid),
    pub local: (Lsn, Lsn, Xid),
    /// TimestampTz of the pass that wrote it.
    pub verified_at: i64,
}

impl Record {
    fn to_text(&self) -> String {
        format!(
            "{HEADER}\ndatabase={}\nplugin={}\ntwo_phase={}\ntimeline={}\nremote_restart_lsn={}\nremote_confirmed_flush_lsn={}\nremote_catalog_xmin={}\nlocal_restart_lsn={}\nlocal_confirmed_flush_lsn={}\nlocal_catalog_xmin={}\nverified_at={}\nend\n",
            self.database,
            self.plugin,
            self.two_phase,
            self.timeline,
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
            two_phase: fields.get("two_phase")?.parse().ok()?,
            timeline: fields.get("timeline")?.parse().ok()?,
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

    /// Whether the copy is still the one this record found ready: where it
    /// stood then, or moved forward by a later pass (a crash may have kept
    /// the record from following), but never past the primary's positions
    /// of then (no pass moves a copy there: someone else did).
    pub fn still_describes(&self, local: (Lsn, Lsn, Xid)) -> bool {
        let (r, c, x) = local;
        let xid_between = |x: Xid, low: Xid, high: Xid| {
            (x == low || low.precedes(x)) && (x == high || x.precedes(high))
        };
        r.is_valid()
            && r >= self.local.0
            && r <= self.remote.0
            && c >= self.local.1
            && c <= self.remote.1
            && xid_between(x, self.local.2, self.remote.2)
    }
}

fn record_path(name: &str) -> PathBuf {
    PathBuf::from("pg_replslot").join(name).join(RECORD)
}

/// Replaces `path` with `text` (a new file renamed over the old one, so a
/// reader sees one or the other whole; no fsync, see the module comment).
fn replace_file(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    drop(f);
    fs::rename(&tmp, path)
}

/// Removes `path` durably (its directory fsynced), if it exists.
fn remove(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(()) => match path.parent() {
            Some(dir) => fs::File::open(dir).and_then(|d| d.sync_all()),
            None => Ok(()),
        },
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

/// The slots the last pass selected, if the list is whole.
fn selected() -> Option<Vec<String>> {
    let text = fs::read_to_string(SELECTED).ok()?;
    let mut names: Vec<String> = text.lines().map(str::to_string).collect();
    (names.pop()? == "end").then_some(names)
}

/// The timeline this standby replays (the one its copies' positions are on).
pub fn timeline() -> u32 {
    let mut tli = 0;
    // SAFETY: reads the startup process's progress from shared memory.
    unsafe { pg_sys::GetXLogReplayRecPtr(&mut tli) };
    tli
}

/// Keeps the records in step with the worker's passes.
#[derive(Default)]
pub struct Keeper {
    /// The records on disk, as this worker last wrote (or found) them.
    written: HashMap<String, Record>,
    /// `written` was filled from disk (once per worker start).
    scanned: bool,
    /// The selection as last written.
    selection: Option<Vec<String>>,
    heartbeat_at: i64,
}

impl Keeper {
    /// Before a pass publishes its rows: the ready rows' records written
    /// (when their verdict or positions changed), the others removed, the
    /// selection and the heartbeat.
    pub fn record_pass(&mut self, rows: &[SlotStatus], now: i64) {
        if !self.scanned {
            self.scanned = true;
            for l in slot::local_logical_slots() {
                let path = record_path(&l.name);
                match read_record(&l.name) {
                    Some(r) => {
                        self.written.insert(l.name, r);
                    }
                    // Unreadable: it goes now.
                    None if path.exists() => {
                        let _ = remove(&path);
                    }
                    None => {}
                }
            }
        }
        let tli = timeline();
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
                    && w.timeline == tli
                    && w.two_phase == r.two_phase
                    && w.database == r.database
                    && w.plugin == r.plugin
            }) {
                continue;
            }
            let record = Record {
                database: r.database.clone(),
                plugin: r.plugin.clone(),
                two_phase: r.two_phase,
                timeline: tli,
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
        let mut names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
        names.sort();
        if self.selection.as_ref() != Some(&names) {
            let mut text = names.join("\n");
            text.push_str(if names.is_empty() { "end\n" } else { "\nend\n" });
            if replace_file(Path::new(SELECTED), &text).is_ok() {
                self.selection = Some(names);
            } else {
                failed |= remove(Path::new(SELECTED)).is_err();
                self.selection = None;
            }
        }
        if failed {
            // A record that may say more than the pass found: no heartbeat
            // vouches for any record until every one is right again.
            let _ = remove(Path::new(HEARTBEAT));
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
        if replace_file(Path::new(HEARTBEAT), &format!("{now}\n")).is_ok() {
            self.heartbeat_at = now;
        }
    }

    /// No verdict can be renewed any more (promotion, missing prerequisite,
    /// a primary that answers but refuses): every record goes, durably.
    pub fn forget(&mut self) {
        forget_all();
        self.written.clear();
        self.scanned = true;
        self.selection = None;
        self.heartbeat_at = 0;
    }
}

/// Removes every record, the selection and the heartbeat.
pub fn forget_all() {
    let _ = remove(Path::new(HEARTBEAT));
    let _ = remove(Path::new(SELECTED));
    if let Ok(dir) = fs::read_dir("pg_replslot") {
        for e in dir.flatten() {
            let _ = remove(&e.path().join(RECORD));
        }
    }
}

/// At the worker's start, before any pass: one row per slot the last pass
/// selected (and the filter still may), ready when its copy survived,
/// persistent, ours and valid, and its record still describes it. None when
/// the last selection is not on disk: nothing can be told.
/// Call inside a transaction (database names).
pub fn load(filter: &SlotFilter) -> Option<Vec<SlotStatus>> {
    let names = selected()?;
    let beat = heartbeat();
    let tli = timeline();
    let locals = slot::local_logical_slots();
    let rows = names
        .into_iter()
        .filter(|n| filter.may_select_name(n))
        .map(|name| {
            let copy = locals.iter().find(|l| l.name == name);
            let record = copy.and_then(|_| read_record(&name));
            let why_not = match (copy, &record) {
                (None, _) => Some(
                    "no copy of this slot survived the restart (it was not persistent yet)".into(),
                ),
                (Some(l), _)
                    if !l.persistent
                        || !slot::is_ours(&name)
                        || slot::is_from_primary_life(&name) =>
                {
                    Some("this slot is not a persistent copy made by sync_logical_slot".into())
                }
                (Some(l), _) if l.invalidated.is_some() => Some(format!(
                    "the copy is invalidated on this standby ({})",
                    l.invalidated.map_or("", |c| c.as_str())
                )),
                (_, None) => Some("no ready verdict is kept on disk for this copy".into()),
                (Some(l), Some(r))
                    if r.timeline != tli
                        || r.two_phase != l.two_phase
                        || r.plugin != l.plugin
                        || !r.still_describes((
                            l.restart_lsn,
                            l.confirmed_flush_lsn,
                            l.catalog_xmin,
                        )) =>
                {
                    Some("the copy is not where its last ready verdict found it".into())
                }
                _ => None,
            };
            let database = record
                .as_ref()
                .map(|r| r.database.clone())
                .or_else(|| copy.and_then(|l| slot::database_name(l.database_oid)))
                .unwrap_or_default();
            let (remote, verified_at) = match &record {
                Some(r) => (r.remote, r.verified_at.max(beat)),
                None => ((Lsn(0), Lsn(0), Xid(0)), 0),
            };
            let ready = why_not.is_none();
            SlotStatus {
                name,
                database,
                plugin: copy.map(|l| l.plugin.clone()).unwrap_or_default(),
                two_phase: copy.is_some_and(|l| l.two_phase),
                state: if ready { State::Synced } else { State::Error },
                ready,
                remote_restart_lsn: remote.0,
                remote_confirmed_flush_lsn: remote.1,
                remote_catalog_xmin: remote.2,
                local: copy.map(|l| (l.restart_lsn, l.confirmed_flush_lsn, l.catalog_xmin)),
                last_sync_at: if ready { verified_at } else { 0 },
                verified_at,
                from_disk: true,
                idle: false,
                last_error: why_not,
            }
        })
        .collect();
    Some(rows)
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
            two_phase: true,
            timeline: 2,
            remote: (Lsn(0x1600000), Lsn(0x1600060), Xid(800)),
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
            Record::parse(&text.replace("remote_catalog_xmin=800", "remote_catalog_xmin=x")),
            None
        );
        assert_eq!(Record::parse(&text.replace("timeline=2\n", "")), None);
    }

    #[test]
    fn a_copy_is_described_from_where_it_was_to_where_the_primary_was() {
        let r = record();
        assert!(r.still_describes(r.local));
        // A later pass moved it (its record lost in a crash): still the copy.
        assert!(r.still_describes((Lsn(0x1600000), Lsn(0x1600060), Xid(800))));
        // Behind its record: not the copy the record found.
        assert!(!r.still_describes((Lsn(0x1500000), Lsn(0x1500060), Xid(745))));
        assert!(!r.still_describes((Lsn(0x1500028), Lsn(0x1500050), Xid(745))));
        assert!(!r.still_describes((Lsn(0x1500028), Lsn(0x1500060), Xid(700))));
        // Past the primary's positions of then: moved by someone else.
        assert!(!r.still_describes((Lsn(0x1600001), Lsn(0x1600060), Xid(800))));
        assert!(!r.still_describes((Lsn(0x1500028), Lsn(0x1600061), Xid(745))));
        assert!(!r.still_describes((Lsn(0x1500028), Lsn(0x1500060), Xid(801))));
        assert!(!r.still_describes((Lsn(0), Lsn(0x1500060), Xid(745))));
    }
}
