//! One sync pass: read, decide, apply.
//!
//! # Why a copy is safe
//! A copy of a logical slot on a standby is only worth something if, after a
//! failover, decoding from it yields every change the consumer has not
//! confirmed, exactly once. That needs four things on the standby: the WAL
//! from the copy's `restart_lsn`; the catalog rows as of its `catalog_xmin`;
//! a decoding snapshot valid at `restart_lsn`; and a `confirmed_flush_lsn` no
//! further than the WAL the standby has. The rules (docs/design.md invariants 1-6):
//!
//! - **Created temporary.** A new copy is a temporary slot reserved at the
//!   standby's own horizons (its last restartpoint for WAL, or the primary's
//!   `restart_lsn` when every segment from there is still here; its oldest
//!   safe decoding xid for catalog rows). The primary's slot may be behind those
//!   (its WAL or rows are already gone here); then the copy waits, state
//!   `waiting_for_remote`, re-checked every pass, never blocking the pass.
//! - **Persistent only when honourable.** Once the primary's slot has passed
//!   the reservation, the copy is moved to the primary's position and made
//!   persistent. From then on it survives restarts.
//! - **Forward only, within the flushed WAL.** Positions never move back;
//!   `confirmed_flush_lsn` is capped at the standby's flushed WAL.
//! - **Snapshot before restart_lsn.** `restart_lsn` (and `catalog_xmin`, which
//!   protects decoding from it) moves only to an LSN whose serialized snapshot
//!   the standby holds (see `snapshot.rs`).
//! - **Ready needs feedback.** A copy is `ready` (state `synced`) only when
//!   the primary holds, for this standby's physical slot, a `catalog_xmin` no
//!   newer than the copy's: otherwise vacuum on the primary may remove rows
//!   the copy needs (`waiting_for_feedback`).
//! - **Dropped only when ours.** Copies whose slot is gone on the primary (or
//!   no longer selected) are dropped when `drop_extra_slots` is on, and only
//!   if this extension created them (a marker in the slot's directory).
//! - **A switchover's leftovers are replaced.** On a primary the worker marks
//!   its logical slots (and promoted copies) as the primary's own. When the
//!   server becomes a standby again, a selected slot of the same name with
//!   that mark is dropped and copied afresh: its positions come from another
//!   history (after pg_rewind, perhaps from WAL that no longer exists).
//! - **One slot never stops the others.** Each slot is applied in its own
//!   subtransaction; an ERROR becomes that slot's `error` state.
//!
//! # Glossary
//! remote slot: the primary's slot. local slot / copy: the standby's slot of
//! the same name. synced: the copy is ready for a failover.

use std::collections::{HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use pgrx::pg_sys;
use pgrx::PgSqlErrorCode;

use crate::error::SyncError;
use crate::guc;
use crate::pgver;
use crate::plan::{self, Action, LocalSlot, StandbyPosition, State, Target};
use crate::readiness;
use crate::remote::Primary;
use crate::report::note as log;
use crate::slot;
use crate::snapshot;
use crate::status::{self, SlotStatus};
use crate::types::{Lsn, RemoteSlot, Xid};

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassCounts {
    pub created: u32,
    pub advanced: u32,
    pub dropped: u32,
    /// Slots the filter selects on the primary, and how many of their copies are ready.
    pub selected: u32,
    pub ready: u32,
    /// Copies whose confirmed_flush_lsn is the primary's: not held back by
    /// the WAL this standby has flushed (that needs another pass when more
    /// WAL arrives; a restart_lsn held back for want of a snapshot file waits
    /// for the primary's slot to move, which the long poll sees).
    pub current: u32,
}

impl PassCounts {
    pub fn changed(&self) -> bool {
        self.created + self.advanced + self.dropped > 0
    }
}

/// State kept across passes: what was last said about each slot, and when it
/// was last found synced.
#[derive(Default)]
pub struct Syncer {
    said: HashMap<String, (State, Option<String>)>,
    last_synced: HashMap<String, i64>,
    selected: Option<Vec<String>>,
    /// The primary lacked this standby's physical slot at the last pass (warned once).
    physical_missing: bool,
    /// Why a slot's copy was replaced by a fresh one (it was invalidated on
    /// this standby): shown as its `last_error` until the new copy is ready.
    recopied: HashMap<String, String>,
    snapshot_request: SnapshotRequest,
    /// Two-phase copies whose two_phase_at was compared with the primary's
    /// (read from its slot's state file) since this worker started: others
    /// are compared at their next pass, so that a two_phase_at set on the
    /// standby (16: a refused consumer) is never taken for the primary's.
    two_phase_verified: HashSet<String>,
    /// Each selected slot's confirmed_flush_lsn when this worker first saw
    /// it on the primary: a slot still there with no consumer is idle.
    first_seen: HashMap<String, Lsn>,
    /// The ready verdicts kept on disk with the copies (readiness.rs).
    verdicts: readiness::Keeper,
}

/// `sync_logical_slot.log_standby_snapshot`: when the primary was last asked
/// for a running-xacts record, for which waiting copies, and what was said.
#[derive(Default)]
struct SnapshotRequest {
    waiting: Vec<String>,
    next_at: Option<Instant>,
    last_at: Option<Instant>,
    interval: Duration,
    said: Option<String>,
}

/// The first request follows a new copy at once; while the same copies wait
/// (an idle consumer confirms nothing), requests back off to this.
const SNAPSHOT_REQUEST_MAX_INTERVAL: Duration = Duration::from_secs(300);
/// Never more than one request (one WAL record on the primary) in this time,
/// however copies come and go.
const SNAPSHOT_REQUEST_MIN_INTERVAL: Duration = Duration::from_secs(1);

struct Outcome {
    state: State,
    reason: Option<String>,
    local: Option<(Lsn, Lsn, Xid)>,
}

impl Syncer {
    /// One pass. Call inside a transaction, with a connection to the primary.
    pub fn pass(&mut self, primary: &mut Primary) -> Result<PassCounts, SyncError> {
        let physical = guc::server_setting(c"primary_slot_name");
        let (remote, feedback) = primary.fetch_slots(&physical)?;
        self.check_physical_slot(&physical, feedback.is_some());
        let feedback = feedback.unwrap_or(Xid::INVALID);
        // Malformed only if let in at start, and then the worker does not
        // pass (missing prerequisites): nothing is selected.
        let filter = guc::slot_filter().unwrap_or_default();
        let selected: Vec<&RemoteSlot> = remote
            .iter()
            .filter(|s| filter.selects(&s.name, &s.plugin))
            .collect();
        self.log_selection(&selected, remote.len());

        let standby = StandbyPosition {
            flushed_lsn: slot::flushed_lsn(),
            feedback_catalog_xmin: feedback,
        };
        let locals: HashMap<String, LocalSlot> = slot::local_logical_slots()
            .into_iter()
            .map(|l| (l.name.clone(), to_plan_local(&l)))
            .collect();

        let mut counts = PassCounts::default();
        let mut rows = Vec::with_capacity(selected.len());
        for r in &selected {
            // A reload (new settings) or a promotion ends the pass here; the
            // worker decides what next (see stop_check).
            stop_check()?;
            let local = locals.get(&r.name);
            let mut verified = self.two_phase_verified.contains(&r.name);
            let outcome = match unchanged(r, local, &standby, verified) {
                Some(o) => Ok(o),
                None => {
                    per_slot(|| sync_one(primary, r, local, &standby, &mut counts, &mut verified))
                }
            };
            let outcome = match outcome {
                Ok(o) => o,
                // Not this slot's failure: the pass stops (a reload may also
                // have cancelled a query on the way).
                Err(e @ (SyncError::Reloaded | SyncError::NotInRecovery)) => return Err(e),
                Err(e) => {
                    stop_check()?;
                    Outcome {
                        state: State::Error,
                        reason: Some(e.to_string()),
                        local: local.map(positions),
                    }
                }
            };
            if verified && r.two_phase {
                self.two_phase_verified.insert(r.name.clone());
            } else {
                self.two_phase_verified.remove(&r.name);
            }
            self.say(r, &outcome);
            // SAFETY: reads the clock.
            let now = unsafe { pg_sys::GetCurrentTimestamp() };
            let recopy = outcome.state != State::Invalidated && outcome.state != State::Error;
            if let Some(cause) = local
                .filter(|l| l.ours && recopy)
                .and_then(|l| l.invalidated)
            {
                self.recopied.insert(
                    r.name.clone(),
                    format!(
                        "the previous copy was invalidated on this standby ({}) and is copied afresh",
                        cause.as_str()
                    ),
                );
            }
            if outcome.state == State::Synced {
                self.last_synced.insert(r.name.clone(), now);
                self.recopied.remove(&r.name);
            }
            let first = *self
                .first_seen
                .entry(r.name.clone())
                .or_insert(r.confirmed_flush_lsn);
            let idle = outcome.state == State::WaitingForRemote
                && !r.active
                && r.confirmed_flush_lsn == first;
            rows.push(SlotStatus {
                name: r.name.clone(),
                database: r.database.clone(),
                plugin: r.plugin.clone(),
                two_phase: r.two_phase,
                state: outcome.state,
                ready: outcome.state == State::Synced,
                remote_restart_lsn: r.restart_lsn,
                remote_confirmed_flush_lsn: r.confirmed_flush_lsn,
                remote_catalog_xmin: r.catalog_xmin,
                local: outcome.local,
                last_sync_at: self.last_synced.get(&r.name).copied().unwrap_or(0),
                verified_at: now,
                from_disk: false,
                idle,
                last_error: matches!(outcome.state, State::Error | State::Invalidated)
                    .then(|| outcome.reason.clone())
                    .flatten()
                    .or_else(|| self.recopied.get(&r.name).cloned()),
            });
        }

        let names: HashSet<&str> = selected.iter().map(|r| r.name.as_str()).collect();
        stop_check()?;
        for l in locals.values() {
            if plan::should_drop_extra(l, names.contains(l.name.as_str()), guc::drop_extra_slots())
            {
                match per_slot(|| {
                    slot::drop_slot(&l.name);
                    Ok(())
                }) {
                    Ok(()) => {
                        counts.dropped += 1;
                        log(
                            &format!("dropped replication slot \"{}\"", l.name),
                            Some(if l.persistent {
                                "The primary server no longer has this slot, or sync_logical_slot.slot_names no longer selects it, and sync_logical_slot.drop_extra_slots is on.".into()
                            } else {
                                "It was a temporary copy that had not become persistent; its slot is gone from the primary server or no longer selected.".into()
                            }),
                        );
                    }
                    Err(e) => log(
                        &format!("could not drop replication slot \"{}\"", l.name),
                        Some(e.to_string()),
                    ),
                }
                self.said.remove(&l.name);
                self.last_synced.remove(&l.name);
            }
        }
        self.said.retain(|k, _| names.contains(k.as_str()));
        self.last_synced.retain(|k, _| names.contains(k.as_str()));
        self.recopied.retain(|k, _| names.contains(k.as_str()));
        self.first_seen.retain(|k, _| names.contains(k.as_str()));
        self.two_phase_verified
            .retain(|k| names.contains(k.as_str()));

        // Snapshot files older than every local slot's restart_lsn (core's own
        // rule). Never after a promotion: decoding writes its own files then.
        stop_check()?;
        let oldest = slot::local_logical_slots()
            .iter()
            .map(|l| l.restart_lsn)
            .filter(|l| l.is_valid())
            .min();
        snapshot::remove_older_than(oldest);

        counts.selected = rows.len() as u32;
        counts.ready = rows.iter().filter(|r| r.ready).count() as u32;
        counts.current = rows
            .iter()
            .filter(|r| {
                r.local
                    .is_some_and(|(_, c, _)| c == r.remote_confirmed_flush_lsn)
            })
            .count() as u32;
        // Records first: a verdict withdrawn is off the disk before it is
        // off the view.
        self.verdicts.record_pass(&rows, readiness::now());
        status::publish(&rows);
        // Copies that reserved WAL (or catalog rows) past where the primary's
        // slot stands: only a running-xacts record decoded there moves it on.
        let waiting: Vec<String> = rows
            .iter()
            .filter(|r| {
                r.state == State::WaitingForRemote
                    && r.local.is_some_and(|(restart, _, xmin)| {
                        restart > r.remote_restart_lsn
                            || (restart == r.remote_restart_lsn
                                && r.remote_catalog_xmin.precedes(xmin))
                    })
            })
            .map(|r| r.name.clone())
            .collect();
        self.request_snapshot(primary, waiting)?;
        Ok(counts)
    }

    /// With `sync_logical_slot.log_standby_snapshot` on, while copies wait for
    /// the primary's slot to pass what this standby reserved: asks the
    /// primary for a running-xacts record, which the slot's consumer decodes
    /// and confirms past (else the next one comes from the primary's
    /// bgwriter within 15 s while it writes, or at its next checkpoint while
    /// it is idle). At once for a newly waiting copy, then backing off.
    fn request_snapshot(
        &mut self,
        primary: &mut Primary,
        waiting: Vec<String>,
    ) -> Result<(), SyncError> {
        let req = &mut self.snapshot_request;
        if waiting.is_empty() || !guc::log_standby_snapshot() {
            req.waiting.clear();
            return Ok(());
        }
        if !pgver::HAS_LOG_STANDBY_SNAPSHOT {
            let text = "sync_logical_slot.log_standby_snapshot is on, but pg_log_standby_snapshot() needs PostgreSQL 16: ignored".to_string();
            if req.said.as_ref() != Some(&text) {
                log(&text, None);
                req.said = Some(text);
            }
            return Ok(());
        }
        let now = Instant::now();
        if waiting.iter().any(|n| !req.waiting.contains(n)) {
            req.next_at = Some(now);
            req.interval = Duration::from_secs(1);
        }
        req.waiting = waiting;
        if req.next_at.is_some_and(|at| now < at)
            || req
                .last_at
                .is_some_and(|at| now.duration_since(at) < SNAPSHOT_REQUEST_MIN_INTERVAL)
        {
            return Ok(());
        }
        req.last_at = Some(now);
        req.next_at = Some(now + req.interval);
        req.interval = (req.interval * 2).min(SNAPSHOT_REQUEST_MAX_INTERVAL);
        match primary.log_standby_snapshot() {
            Ok(lsn) => {
                if req.said.is_some() {
                    log(
                        "the primary server logs running-xacts records for new copies again",
                        Some(format!("pg_log_standby_snapshot() answered {lsn}.")),
                    );
                }
                req.said = None;
                Ok(())
            }
            Err(e @ (SyncError::Reloaded | SyncError::NotInRecovery)) => Err(e),
            Err(e) => {
                let text = e.to_string();
                if req.said.as_ref() != Some(&text) {
                    let denied = text.contains("permission denied");
                    crate::report::warning(
                        if denied {
                            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE
                        } else {
                            PgSqlErrorCode::ERRCODE_WARNING
                        },
                        "could not ask the primary server for a running-xacts record",
                        Some(format!("{text}. New copies become ready once the primary logs one by itself (within 15 s while it writes).")),
                        denied.then_some("On the primary, GRANT EXECUTE ON FUNCTION pg_catalog.pg_log_standby_snapshot() TO the worker's role, or turn sync_logical_slot.log_standby_snapshot off."),
                    );
                    req.said = Some(text);
                }
                Ok(())
            }
        }
    }

    /// Nothing moved since the last pass (the long poll said so on the
    /// primary's side, the slot array on ours): the copies synced then are
    /// synced now.
    pub fn still_synced(&mut self) {
        // SAFETY: reads the clock.
        let now = unsafe { pg_sys::GetCurrentTimestamp() };
        for (name, (state, _)) in &self.said {
            if *state == State::Synced {
                self.last_synced.insert(name.clone(), now);
            }
        }
        status::touch_synced(now);
        self.verdicts.renewed(now);
    }

    /// No verdict can be renewed any more: none stays on disk either.
    pub fn forget_verdicts(&mut self) {
        self.verdicts.forget();
    }

    /// Warns once when the primary has no slot named by primary_slot_name:
    /// without it no copy can become ready (its feedback protects them).
    fn check_physical_slot(&mut self, physical: &str, exists: bool) {
        if exists || self.physical_missing {
            self.physical_missing = !exists;
            return;
        }
        self.physical_missing = true;
        crate::report::warning(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            &format!("replication slot \"{physical}\" does not exist on the primary server"),
            Some("primary_slot_name names it; without it the primary does not hold this standby's hot_standby_feedback, and no copy can become ready.".into()),
            Some(&format!(
                "Create it on the primary: SELECT pg_create_physical_replication_slot('{physical}');"
            )),
        );
    }

    /// Logs the selected set when it changes.
    fn log_selection(&mut self, selected: &[&RemoteSlot], total: usize) {
        let names: Vec<String> = selected.iter().map(|s| s.name.clone()).collect();
        if self.selected.as_ref() == Some(&names) {
            return;
        }
        let detail = if names.is_empty() {
            format!(
                "The primary has {total} logical slot(s); sync_logical_slot.slot_names = '{}' selects none of them.",
                guc::slot_names()
            )
        } else {
            format!("Selected slots: {}.", names.join(", "))
        };
        log(
            &format!(
                "primary server has {} logical slot(s) selected for sync",
                names.len()
            ),
            Some(detail),
        );
        self.selected = Some(names);
    }

    /// Logs a slot's state when it changes (once, not every pass).
    fn say(&mut self, r: &RemoteSlot, o: &Outcome) {
        let key = (o.state, o.reason.clone());
        if self.said.get(&r.name) == Some(&key) {
            return;
        }
        let (lr, lc, lx) = o.local.unwrap_or((Lsn(0), Lsn(0), Xid(0)));
        let positions = format!(
            "Primary: restart_lsn {}, confirmed_flush_lsn {}, catalog_xmin {}. Standby copy: restart_lsn {}, confirmed_flush_lsn {}, catalog_xmin {}.",
            r.restart_lsn, r.confirmed_flush_lsn, r.catalog_xmin, lr, lc, lx
        );
        let message = match o.state {
            State::Synced => format!("replication slot \"{}\" is synced and ready", r.name),
            State::Invalidated => format!(
                "replication slot \"{}\" is invalidated on the primary server: not syncing it",
                r.name
            ),
            State::Error => format!("could not sync replication slot \"{}\"", r.name),
            waiting => format!(
                "replication slot \"{}\" is not ready: {}",
                r.name,
                waiting.as_str()
            ),
        };
        let detail = match &o.reason {
            Some(reason) => format!("{}. {positions}", capitalize(reason)),
            None => positions,
        };
        log(&message, Some(detail));
        self.said.insert(r.name.clone(), key);
    }
}

/// A copy of ours that already stands where its primary slot stands: the
/// plan can only keep it (no write, no file, no network), so it needs no
/// subtransaction either. With a thousand slots of which one moves, this is
/// most of a pass.
fn unchanged(
    remote: &RemoteSlot,
    local: Option<&LocalSlot>,
    standby: &StandbyPosition,
    two_phase_verified: bool,
) -> Option<Outcome> {
    let l = local?;
    let same = l.ours
        && l.persistent
        && l.invalidated.is_none()
        && (!remote.two_phase || (l.two_phase_at.is_valid() && two_phase_verified))
        // Two-phase decoding on a copy whose primary slot lacks it: the plan re-makes it.
        && (!l.two_phase || remote.two_phase)
        && !remote.is_invalidated()
        && positions(l)
            == (
                remote.restart_lsn,
                remote.confirmed_flush_lsn,
                remote.catalog_xmin,
            );
    if !same {
        return None;
    }
    // The database exists (the copy lives in it) and restart_lsn does not move.
    match plan::plan(remote, Some(l), standby, true, true) {
        Action::Keep { state, reason } => Some(Outcome {
            state,
            reason,
            local: Some(positions(l)),
        }),
        // Anything else (a plugin or option that differs...) takes the full way.
        _ => None,
    }
}

/// Decides and applies one slot. Runs inside its own subtransaction.
fn sync_one(
    primary: &mut Primary,
    remote: &RemoteSlot,
    local: Option<&LocalSlot>,
    standby: &StandbyPosition,
    counts: &mut PassCounts,
    two_phase_verified: &mut bool,
) -> Result<Outcome, SyncError> {
    // A two-phase slot's two_phase_at is read from the primary until the copy
    // has it, and once more to compare it (the plan re-makes a copy whose
    // two_phase_at is not the primary's).
    let with_two_phase_at;
    let remote = if remote.two_phase
        && !(local.is_some_and(|l| l.two_phase_at.is_valid()) && *two_phase_verified)
    {
        let mut r = remote.clone();
        r.two_phase_at = primary.two_phase_at_of(&remote.name)?.unwrap_or(Lsn(0));
        *two_phase_verified =
            r.two_phase_at.is_valid() && local.is_some_and(|l| l.two_phase_at == r.two_phase_at);
        with_two_phase_at = r;
        &with_two_phase_at
    } else {
        remote
    };
    let database_oid = slot::database_oid(&remote.database);
    let held = snapshot_held(primary, remote, local, standby)?;
    // The snapshot read may have waited on the network: check again before writing.
    stop_check()?;
    let action = plan::plan(remote, local, standby, database_oid.is_some(), held);
    match action {
        Action::Create => {}
        Action::Recreate { reason } => {
            log(
                &format!("re-creating replication slot \"{}\"", remote.name),
                Some(format!("{}.", capitalize(&reason))),
            );
            slot::drop_slot(&remote.name);
            counts.dropped += 1;
        }
        other => return apply(remote, local, other, counts),
    }
    // Create a temporary copy at this standby's horizons, then decide again at
    // once: if the primary's slot is already past them, the copy moves there
    // in this same pass.
    let oid = database_oid.expect("plan creates only when the database exists");
    // Two-phase is enabled later, together with the primary's two_phase_at.
    let made =
        slot::create_temporary(&remote.name, oid, &remote.plugin, false, remote.restart_lsn)?;
    counts.created += 1;
    slot::request_feedback();
    log(
        &format!("created a temporary copy of replication slot \"{}\"", remote.name),
        Some(format!(
            "It reserves WAL from {} and catalog rows from xid {} on this standby; it becomes persistent once the primary's slot stands at or past both.",
            made.restart_lsn, made.catalog_xmin
        )),
    );
    let mut fresh = to_plan_local(&made);
    fresh.ours = true;
    let held = snapshot_held(primary, remote, Some(&fresh), standby)?;
    let again = plan::plan(remote, Some(&fresh), standby, true, held);
    apply(remote, Some(&fresh), again, counts)
}

/// Applies a decision other than Create/Recreate.
fn apply(
    remote: &RemoteSlot,
    local: Option<&LocalSlot>,
    action: Action,
    counts: &mut PassCounts,
) -> Result<Outcome, SyncError> {
    match action {
        Action::Advance {
            target,
            persist,
            state,
        } => {
            slot::advance(&remote.name, &target, persist)?;
            counts.advanced += 1;
            if persist {
                log(
                    &format!("replication slot \"{}\" is now persistent", remote.name),
                    Some(format!(
                        "The primary's slot stands at or past what this standby reserved; the copy is at restart_lsn {}, confirmed_flush_lsn {}, catalog_xmin {}.",
                        target.restart_lsn, target.confirmed_flush_lsn, target.catalog_xmin
                    )),
                );
            }
            Ok(Outcome {
                state,
                reason: None,
                local: Some(target_positions(&target)),
            })
        }
        Action::Keep { state, reason } => Ok(Outcome {
            state,
            reason,
            local: local.map(positions),
        }),
        Action::Skip { state, reason } => Ok(Outcome {
            state,
            reason: Some(reason),
            local: local.map(positions),
        }),
        Action::Drop { state, reason } => {
            log(
                &format!("dropped the copy of replication slot \"{}\"", remote.name),
                Some(format!("{}.", capitalize(&reason))),
            );
            slot::drop_slot(&remote.name);
            counts.dropped += 1;
            Ok(Outcome {
                state,
                reason: Some(reason),
                local: None,
            })
        }
        Action::Create | Action::Recreate { .. } => Err(SyncError::Internal(format!(
            "replication slot \"{}\" was planned for creation twice in one pass",
            remote.name
        ))),
    }
}

/// Whether the standby holds the decoding snapshot for the primary's
/// `restart_lsn`, fetching it first when the copy is about to move there.
fn snapshot_held(
    primary: &mut Primary,
    remote: &RemoteSlot,
    local: Option<&LocalSlot>,
    standby: &StandbyPosition,
) -> Result<bool, SyncError> {
    let lsn = remote.restart_lsn;
    // Needed when the copy would move to `lsn`, or become persistent there.
    let would_move = local.is_some_and(|l| {
        l.ours && (lsn > l.restart_lsn || (!l.persistent && lsn == l.restart_lsn))
    }) && lsn.is_valid()
        && lsn <= standby.flushed_lsn;
    if !would_move || snapshot::held(lsn) {
        return Ok(true);
    }
    match primary.read_snapshot(lsn)? {
        Some(bytes) => {
            snapshot::write(lsn, &bytes).map_err(|e| {
                SyncError::Internal(format!(
                    "could not write file \"{}\": {e}",
                    snapshot::remote_path(lsn)
                ))
            })?;
            Ok(true)
        }
        // The primary has no file for this LSN: if its slot still restarts
        // there, decoding on the primary would rebuild the snapshot exactly as
        // the promoted standby will (files are removed only below every
        // slot's restart_lsn, so a slot still at `lsn` means there never was one).
        None => Ok(primary.restart_lsn_of(&remote.name)? == Some(lsn)),
    }
}

/// Ends the pass early when the server was promoted meanwhile (nothing may be
/// written as a standby any more) or a reload is pending (new settings apply
/// at once; a network wait may have been cancelled by it).
fn stop_check() -> Result<(), SyncError> {
    // SAFETY: reads shared state.
    if !unsafe { pg_sys::RecoveryInProgress() } {
        return Err(SyncError::NotInRecovery);
    }
    if crate::signals::reload_pending() {
        return Err(SyncError::Reloaded);
    }
    // The startup process waits for a slot this worker holds (16): the
    // pass ends here, and the worker releases its temporary copies.
    if slot::slot_conflict_pending() {
        return Err(SyncError::Reloaded);
    }
    Ok(())
}

/// Runs `f` in a subtransaction: an ERROR inside rolls it back (releasing
/// locks and the slot) and comes back as a value, so the pass goes on.
fn per_slot<T>(f: impl FnOnce() -> Result<T, SyncError>) -> Result<T, SyncError> {
    // SAFETY: inside the pass's transaction; the memory context and resource
    // owner are restored after the subtransaction ends, as PL/pgSQL does.
    let (context, owner) = unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        (context, owner)
    };
    let result = catch_unwind(AssertUnwindSafe(f));
    // SAFETY: ends the subtransaction begun above.
    unsafe {
        match &result {
            Ok(_) => pg_sys::ReleaseCurrentSubTransaction(),
            Err(_) => {
                slot::release_if_held();
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            }
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
    match result {
        Ok(r) => r,
        Err(payload) => Err(SyncError::from_panic(payload)),
    }
}

fn to_plan_local(l: &slot::Local) -> LocalSlot {
    // One file lookup for the primary-life mark; the ownership mark only without it.
    let from_primary_life = slot::is_from_primary_life(&l.name);
    LocalSlot {
        name: l.name.clone(),
        plugin: l.plugin.clone(),
        database: slot::database_name(l.database_oid).unwrap_or_default(),
        two_phase: l.two_phase,
        two_phase_at: l.two_phase_at,
        persistent: l.persistent,
        ours: !from_primary_life && slot::is_ours(&l.name),
        from_primary_life,
        invalidated: l.invalidated,
        restart_lsn: l.restart_lsn,
        confirmed_flush_lsn: l.confirmed_flush_lsn,
        catalog_xmin: l.catalog_xmin,
    }
}

fn positions(l: &LocalSlot) -> (Lsn, Lsn, Xid) {
    (l.restart_lsn, l.confirmed_flush_lsn, l.catalog_xmin)
}

fn target_positions(t: &Target) -> (Lsn, Lsn, Xid) {
    (t.restart_lsn, t.confirmed_flush_lsn, t.catalog_xmin)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}
