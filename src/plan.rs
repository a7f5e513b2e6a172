//! Pure decision logic: what to do with one slot in one pass.
//!
//! `plan(remote, local, standby)` looks at the primary's slot, the standby's
//! copy (if any) and what the standby can honour, and returns one [`Action`].
//! It touches no `pg_sys`, so every branch is a plain `#[test]`. The rules are
//! docs/design.md's safety invariants 1-3 and 5:
//! - a copy never moves backwards; its `confirmed_flush_lsn` never passes the
//!   standby's flushed WAL;
//! - a new copy starts as a temporary slot reserved at the standby's own
//!   horizon (for WAL: its restartpoint, or the primary's `restart_lsn` when
//!   the standby still holds that WAL, see slot.rs) and waits
//!   (`waiting_for_remote`) until the primary's slot stands at or past that
//!   reservation; only then is it moved to the primary's position and made
//!   persistent;
//! - `restart_lsn` moves only to a position whose decoding snapshot the
//!   standby holds (invariant 4; the caller says whether it does), and
//!   `catalog_xmin` moves only together with it, since it protects the catalog
//!   rows that decoding from `restart_lsn` needs;
//! - a copy is `ready` only when persistent, within the flushed WAL, and
//!   protected on the primary by this standby's feedback;
//! - nothing here waits: a slot that cannot move says why, and the pass goes on.
//!
//! `sync.rs` runs it for every selected slot in each pass and applies the result.

use crate::types::{Invalidation, Lsn, RemoteSlot, Xid};

/// The standby's copy of a slot, as the standby's slot array has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSlot {
    pub name: String,
    pub plugin: String,
    pub database: String,
    pub two_phase: bool,
    /// The copy's `two_phase_at` (0/0: not set).
    pub two_phase_at: Lsn,
    /// Persistent (survives restart); false while the copy is a temporary reservation.
    pub persistent: bool,
    /// Created by this extension (only those are ever advanced or dropped).
    pub ours: bool,
    /// Seen on this server while it was a primary (a switchover left it
    /// behind): it is replaced by a fresh copy, never advanced as it is.
    pub from_primary_life: bool,
    /// Invalidated on the standby, and why: it cannot be honoured any more.
    pub invalidated: Option<Invalidation>,
    pub restart_lsn: Lsn,
    pub confirmed_flush_lsn: Lsn,
    pub catalog_xmin: Xid,
}

/// What the standby can honour right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyPosition {
    /// WAL received and flushed to disk.
    pub flushed_lsn: Lsn,
    /// The catalog_xmin of this standby's physical slot on the primary (its
    /// hot_standby_feedback), INVALID when the primary has none yet.
    pub feedback_catalog_xmin: Xid,
}

/// The positions a copy is moved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub restart_lsn: Lsn,
    pub confirmed_flush_lsn: Lsn,
    pub catalog_xmin: Xid,
    /// Two-phase decoding, once enabled on the primary's slot, is enabled on the copy.
    pub two_phase: bool,
    /// With it, the primary's `two_phase_at` (0/0 while not known).
    pub two_phase_at: Lsn,
}

/// The per-slot state shown in the status view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Synced,
    WaitingForRemote,
    WaitingForWal,
    WaitingForFeedback,
    Invalidated,
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Synced => "synced",
            State::WaitingForRemote => "waiting_for_remote",
            State::WaitingForWal => "waiting_for_wal",
            State::WaitingForFeedback => "waiting_for_feedback",
            State::Invalidated => "invalidated",
            State::Error => "error",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// No copy yet: create a temporary one reserved at the standby's horizon.
    Create,
    /// Move the copy forward (never back); `persist` makes a temporary copy persistent.
    Advance {
        target: Target,
        persist: bool,
        state: State,
    },
    /// Nothing to change now; the state says why not ready, if it is not.
    Keep {
        state: State,
        reason: Option<String>,
    },
    /// The copy cannot be used: drop it and create it again.
    Recreate { reason: String },
    /// The slot cannot be synced; the copy (if any) is left as it is.
    Skip { state: State, reason: String },
    /// The slot cannot be synced, and our copy of it is of no use: drop it.
    Drop { state: State, reason: String },
}

/// Whether a copy at `target` is ready for a failover (docs/design.md invariants 1-3).
pub fn ready_state(
    persistent: bool,
    target: Target,
    remote: &RemoteSlot,
    standby: &StandbyPosition,
) -> State {
    if !persistent || (remote.two_phase && !(target.two_phase && target.two_phase_at.is_valid())) {
        State::WaitingForRemote
    } else if target.confirmed_flush_lsn < remote.confirmed_flush_lsn {
        State::WaitingForWal
    } else if !standby.feedback_catalog_xmin.is_valid()
        || target.catalog_xmin.precedes(standby.feedback_catalog_xmin)
    {
        State::WaitingForFeedback
    } else {
        State::Synced
    }
}

/// Decides what to do with one selected remote slot.
///
/// `database_exists`: the slot's database exists on the standby.
/// `snapshot_held`: the standby holds the decoding snapshot for `remote.restart_lsn`.
pub fn plan(
    remote: &RemoteSlot,
    local: Option<&LocalSlot>,
    standby: &StandbyPosition,
    database_exists: bool,
    snapshot_held: bool,
) -> Action {
    if let Some(cause) = remote.invalidation_cause() {
        // Its consumer cannot go on from it on the primary either. A copy of
        // ours would only pin the standby's WAL and catalog rows for ever.
        return match local {
            Some(l) if l.ours => Action::Drop {
                state: State::Invalidated,
                reason: format!("the slot is invalidated on the primary ({cause}); its copy is dropped, so that it holds no WAL or catalog rows on this standby"),
            },
            Some(_) => Action::Skip {
                state: State::Invalidated,
                reason: format!("the slot is invalidated on the primary ({cause})"),
            },
            None => Action::Skip {
                state: State::Invalidated,
                reason: format!(
                    "the slot is invalidated on the primary ({cause}); this standby keeps no copy of it"
                ),
            },
        };
    }
    if !database_exists {
        return Action::Skip {
            state: State::Error,
            reason: format!(
                "database \"{}\" does not exist on this standby",
                remote.database
            ),
        };
    }
    if remote.is_being_created() {
        return Action::Keep {
            state: State::WaitingForRemote,
            reason: Some(
                "the primary's slot is still being created (it has no consistent point yet)".into(),
            ),
        };
    }
    let Some(local) = local else {
        return Action::Create;
    };
    if !local.ours && local.from_primary_life {
        return Action::Recreate {
            reason: "the slot was left from when this server was the primary; its positions belong to that server's history".into(),
        };
    }
    if !local.ours {
        return Action::Skip {
            state: State::Error,
            reason:
                "a slot of this name exists on the standby and was not created by sync_logical_slot"
                    .into(),
        };
    }
    if let Some(cause) = local.invalidated {
        return Action::Recreate {
            reason: format!(
                "the copy was invalidated on this standby ({}): it is dropped and copied afresh",
                cause.as_str()
            ),
        };
    }
    if !local.persistent && (local.restart_lsn == Lsn(0) || !local.catalog_xmin.is_valid()) {
        return Action::Recreate {
            reason: "the copy was left half-made by an error while it was created (it reserves no WAL or catalog rows)".into(),
        };
    }
    if local.plugin != remote.plugin || local.database != remote.database {
        return Action::Recreate {
            reason: "the slot was re-created on the primary with another plugin or database".into(),
        };
    }
    // Two-phase decoding is enabled on a copy only by the sync, with the
    // primary's two_phase_at. Enabled otherwise (on 16, a consumer on the
    // standby whose START_REPLICATION was refused after core had already
    // enabled it), the copy would decode prepared transactions differently
    // from the primary's slot after a failover.
    if local.two_phase
        && (!remote.two_phase
            || (remote.two_phase_at.is_valid() && local.two_phase_at != remote.two_phase_at))
    {
        return Action::Recreate {
            reason: format!(
                "the copy has two-phase decoding enabled at {} but the primary's slot {}: it was enabled on this standby, not copied",
                local.two_phase_at,
                if remote.two_phase {
                    format!("enabled it at {}", remote.two_phase_at)
                } else {
                    "has it disabled".into()
                }
            ),
        };
    }
    // A persistent copy is never ahead of its slot on restart_lsn or
    // catalog_xmin (the primary saves both durably): if the primary's slot is
    // behind, it is another slot of the same name (dropped and re-created,
    // copied, or from another history). confirmed_flush_lsn may legitimately
    // go back after a crash of the primary (it is kept in memory there), so a
    // copy ahead on it alone is kept, never moved back.
    if local.persistent
        && (remote.restart_lsn < local.restart_lsn
            || remote.catalog_xmin.precedes(local.catalog_xmin))
    {
        return Action::Recreate {
            reason: format!(
                "the primary's slot (restart_lsn {}, catalog_xmin {}) is behind the copy (restart_lsn {}, catalog_xmin {}): it is not the slot the copy was made from, or (PostgreSQL 16) the copy was decoded from on this standby",
                remote.restart_lsn, remote.catalog_xmin, local.restart_lsn, local.catalog_xmin
            ),
        };
    }
    if !local.persistent
        && (remote.restart_lsn < local.restart_lsn
            || remote.catalog_xmin.precedes(local.catalog_xmin))
    {
        return Action::Keep {
            state: State::WaitingForRemote,
            reason: Some(format!(
                "the primary's slot (restart_lsn {}, catalog_xmin {}) is behind what this standby reserved (restart_lsn {}, catalog_xmin {})",
                remote.restart_lsn, remote.catalog_xmin, local.restart_lsn, local.catalog_xmin
            )),
        };
    }

    let target = advance_target(remote, local, standby, snapshot_held);
    // A temporary copy becomes persistent only once it stands exactly where the
    // primary's slot restarts, from then on it can be honoured on its own,
    // and the standby holds the decoding snapshot for that LSN (also when the
    // reservation happens to equal the primary's restart_lsn).
    let persist = !local.persistent && target.restart_lsn == remote.restart_lsn && snapshot_held;
    let persistent = local.persistent || persist;
    let state = ready_state(persistent, target, remote, standby);
    let current = Target {
        restart_lsn: local.restart_lsn,
        confirmed_flush_lsn: local.confirmed_flush_lsn,
        catalog_xmin: local.catalog_xmin,
        two_phase: local.two_phase,
        two_phase_at: local.two_phase_at,
    };
    if target == current && !persist {
        let reason = match state {
            State::WaitingForWal => Some(format!(
                "the primary's slot confirmed {} but this standby has flushed WAL up to {} only",
                remote.confirmed_flush_lsn, standby.flushed_lsn
            )),
            State::WaitingForFeedback => Some(
                "the primary does not yet hold this copy's catalog_xmin for this standby (hot_standby_feedback)".into(),
            ),
            State::WaitingForRemote if remote.two_phase && !target.two_phase_at.is_valid() => Some(
                "waiting for the primary's two_phase_at (read with sync_logical_slot_read_slot_state on the primary): without it, a transaction prepared before two-phase decoding was enabled would be skipped after a failover".into(),
            ),
            State::WaitingForRemote => Some(
                "waiting for the decoding snapshot of the primary's restart_lsn".into(),
            ),
            _ => None,
        };
        return Action::Keep { state, reason };
    }
    Action::Advance {
        target,
        persist,
        state,
    }
}

/// Where the copy may move now: forward only, `confirmed_flush_lsn` capped at
/// the flushed WAL, `restart_lsn` (with `catalog_xmin`) only to a position the
/// standby has WAL and a decoding snapshot for, and only together with the
/// primary's `confirmed_flush_lsn` that justifies it.
pub fn advance_target(
    remote: &RemoteSlot,
    local: &LocalSlot,
    standby: &StandbyPosition,
    snapshot_held: bool,
) -> Target {
    let confirmed = local
        .confirmed_flush_lsn
        .max(remote.confirmed_flush_lsn.min(standby.flushed_lsn));
    // The primary's restart_lsn and catalog_xmin are what decoding needs for
    // the transactions that commit after *its* confirmed_flush_lsn: a
    // transaction committing in between may have begun before that
    // restart_lsn. So the copy takes them only together with that confirmed
    // position, never while its own is still capped by the flushed WAL.
    let two_phase_at = if local.two_phase_at.is_valid() {
        local.two_phase_at
    } else {
        remote.two_phase_at
    };
    // At an equal restart_lsn (a fresh copy that reserved exactly where the
    // primary's slot restarts) the primary's later catalog_xmin is taken the
    // same way, with the confirmed position that justifies it.
    let restart_can_move = remote.restart_lsn >= local.restart_lsn
        && remote.restart_lsn <= standby.flushed_lsn
        && confirmed >= remote.confirmed_flush_lsn
        && snapshot_held;
    let (restart_lsn, catalog_xmin) = if restart_can_move {
        (
            remote.restart_lsn,
            local.catalog_xmin.later(remote.catalog_xmin),
        )
    } else {
        (local.restart_lsn, local.catalog_xmin)
    };
    Target {
        restart_lsn,
        // confirmed_flush_lsn is never behind restart_lsn.
        confirmed_flush_lsn: confirmed.max(restart_lsn),
        catalog_xmin,
        // Enabled on the copy only together with where it was enabled on the
        // primary: a copy with two_phase on and no two_phase_at would take
        // every prepared transaction for already sent.
        two_phase: local.two_phase || (remote.two_phase && two_phase_at.is_valid()),
        two_phase_at,
    }
}

/// What a copy holds after writing `target` over `current`, its value read
/// under the slot's spinlock at the moment of writing (pure: no allocation,
/// fit for a spinlock). The plan was made from an earlier read; meanwhile a
/// session's `sync_logical_slot_advance()` may have moved the copy on. So
/// nothing moves back: `confirmed_flush_lsn` is the later of the two;
/// `restart_lsn` and `catalog_xmin` are taken as a pair from whichever is
/// further on (never one from each), and `catalog_xmin` never goes back
/// (compared as transaction ids, across wraparound).
pub fn merge(current: Target, target: Target) -> Target {
    let (restart_lsn, catalog_xmin) = if target.restart_lsn >= current.restart_lsn {
        (
            target.restart_lsn,
            target.catalog_xmin.later(current.catalog_xmin),
        )
    } else {
        (current.restart_lsn, current.catalog_xmin)
    };
    Target {
        restart_lsn,
        confirmed_flush_lsn: current
            .confirmed_flush_lsn
            .max(target.confirmed_flush_lsn)
            .max(restart_lsn),
        catalog_xmin,
        two_phase: current.two_phase || target.two_phase,
        // Set once, where two-phase decoding was enabled: never changed after.
        two_phase_at: if current.two_phase_at.is_valid() {
            current.two_phase_at
        } else {
            target.two_phase_at
        },
    }
}

/// Should a local slot that no selected remote slot matches be dropped?
pub fn should_drop_extra(
    local: &LocalSlot,
    in_remote_selection: bool,
    drop_extra_slots: bool,
) -> bool {
    local.ours && !in_remote_selection && (drop_extra_slots || !local.persistent)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(restart: u64, confirmed: u64, xmin: u32) -> RemoteSlot {
        RemoteSlot {
            two_phase_at: Lsn(0),
            name: "s1".into(),
            plugin: "pgoutput".into(),
            database: "app".into(),
            two_phase: false,
            restart_lsn: Lsn(restart),
            confirmed_flush_lsn: Lsn(confirmed),
            catalog_xmin: Xid(xmin),
            wal_status: "reserved".into(),
            conflicting: false,
            active: false,
        }
    }

    fn local(persistent: bool, restart: u64, confirmed: u64, xmin: u32) -> LocalSlot {
        LocalSlot {
            two_phase_at: Lsn(0),
            name: "s1".into(),
            plugin: "pgoutput".into(),
            database: "app".into(),
            two_phase: false,
            persistent,
            ours: true,
            from_primary_life: false,
            invalidated: None,
            restart_lsn: Lsn(restart),
            confirmed_flush_lsn: Lsn(confirmed),
            catalog_xmin: Xid(xmin),
        }
    }

    fn standby(flushed: u64, feedback: u32) -> StandbyPosition {
        StandbyPosition {
            flushed_lsn: Lsn(flushed),
            feedback_catalog_xmin: Xid(feedback),
        }
    }

    #[test]
    fn no_copy_is_created() {
        assert_eq!(
            plan(&remote(100, 200, 10), None, &standby(300, 10), true, true),
            Action::Create
        );
    }

    #[test]
    fn a_half_made_temporary_copy_is_recreated() {
        for half in [local(false, 0, 0, 10), local(false, 100, 100, 0)] {
            assert!(
                matches!(
                    plan(
                        &remote(100, 200, 10),
                        Some(&half),
                        &standby(300, 10),
                        true,
                        true
                    ),
                    Action::Recreate { .. }
                ),
                "{half:?}"
            );
        }
    }

    #[test]
    fn invalidated_or_missing_database_is_skipped_not_fatal() {
        // 'lost' with a restart_lsn is a passing report, not an invalidation:
        // a ready copy of it is never dropped.
        let mut passing = remote(100, 200, 10);
        passing.wal_status = "lost".into();
        assert!(!matches!(
            plan(
                &passing,
                Some(&local(true, 100, 200, 10)),
                &standby(300, 10),
                true,
                true
            ),
            Action::Drop { .. } | Action::Skip { .. }
        ));
        let mut r = remote(0, 200, 10);
        r.wal_status = "lost".into();
        assert!(matches!(
            plan(&r, None, &standby(300, 10), true, true),
            Action::Skip {
                state: State::Invalidated,
                ..
            }
        ));
        // Our copy of it is dropped (it would pin the standby's WAL); a slot
        // of this name that is not ours is left alone.
        let ours = local(true, 100, 200, 10);
        assert!(matches!(
            plan(&r, Some(&ours), &standby(300, 10), true, true),
            Action::Drop {
                state: State::Invalidated,
                ..
            }
        ));
        let mut foreign = ours.clone();
        foreign.ours = false;
        assert!(matches!(
            plan(&r, Some(&foreign), &standby(300, 10), true, true),
            Action::Skip {
                state: State::Invalidated,
                ..
            }
        ));
        match plan(&remote(100, 200, 10), None, &standby(300, 10), false, true) {
            Action::Skip {
                state: State::Error,
                reason,
            } => assert!(reason.contains("\"app\" does not exist")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_slot_we_did_not_create_is_never_touched() {
        let mut l = local(true, 50, 60, 5);
        l.ours = false;
        assert!(matches!(
            plan(
                &remote(100, 200, 10),
                Some(&l),
                &standby(300, 10),
                true,
                true
            ),
            Action::Skip {
                state: State::Error,
                ..
            }
        ));
        assert!(!should_drop_extra(&l, false, true));
    }

    #[test]
    fn a_slot_left_from_this_servers_primary_life_is_replaced() {
        let mut l = local(true, 500, 600, 50);
        l.ours = false;
        l.from_primary_life = true;
        assert!(matches!(
            plan(
                &remote(100, 200, 10),
                Some(&l),
                &standby(300, 10),
                true,
                true
            ),
            Action::Recreate { .. }
        ));
        // Never dropped as an extra, though: it is not a copy.
        assert!(!should_drop_extra(&l, false, true));
    }

    #[test]
    fn temporary_copy_waits_while_the_primary_is_behind_its_reservation() {
        // Reserved at restart 150 / xmin 20; the primary's slot is at 100 / 10.
        let l = local(false, 150, 150, 20);
        assert!(matches!(
            plan(
                &remote(100, 200, 10),
                Some(&l),
                &standby(300, 10),
                true,
                true
            ),
            Action::Keep {
                state: State::WaitingForRemote,
                ..
            }
        ));
        // restart passed but catalog_xmin still older than reserved: still waiting.
        assert!(matches!(
            plan(
                &remote(160, 200, 19),
                Some(&l),
                &standby(300, 10),
                true,
                true
            ),
            Action::Keep {
                state: State::WaitingForRemote,
                ..
            }
        ));
    }

    #[test]
    fn temporary_copy_becomes_persistent_once_the_primary_passed_it() {
        let l = local(false, 150, 150, 20);
        match plan(
            &remote(160, 200, 25),
            Some(&l),
            &standby(300, 25),
            true,
            true,
        ) {
            Action::Advance {
                target,
                persist,
                state,
            } => {
                assert!(persist);
                assert_eq!(
                    target,
                    Target {
                        restart_lsn: Lsn(160),
                        confirmed_flush_lsn: Lsn(200),
                        catalog_xmin: Xid(25),
                        two_phase: false,
                        two_phase_at: Lsn(0),
                    }
                );
                assert_eq!(state, State::Synced);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn temporary_copy_stays_temporary_without_the_snapshot() {
        let l = local(false, 150, 150, 20);
        match plan(
            &remote(160, 200, 25),
            Some(&l),
            &standby(300, 25),
            true,
            false,
        ) {
            Action::Advance {
                target,
                persist,
                state,
            } => {
                assert!(!persist);
                assert_eq!(target.restart_lsn, Lsn(150));
                assert_eq!(
                    target.catalog_xmin,
                    Xid(20),
                    "catalog_xmin moves only with restart_lsn"
                );
                assert_eq!(state, State::WaitingForRemote);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn never_moves_backwards() {
        let l = local(true, 150, 250, 20);
        // The primary's confirmed_flush_lsn went back (it crashed before saving
        // it): the copy keeps its own, nothing moves.
        assert!(matches!(
            plan(
                &remote(150, 200, 20),
                Some(&l),
                &standby(300, 20),
                true,
                true
            ),
            Action::Keep { .. }
        ));
        let t = advance_target(&remote(100, 200, 10), &l, &standby(300, 20), true);
        assert_eq!(
            t,
            Target {
                restart_lsn: Lsn(150),
                confirmed_flush_lsn: Lsn(250),
                catalog_xmin: Xid(20),
                two_phase: false,
                two_phase_at: Lsn(0),
            }
        );
    }

    #[test]
    fn a_primary_slot_behind_a_persistent_copy_is_another_slot() {
        let l = local(true, 150, 250, 20);
        for r in [remote(100, 300, 20), remote(150, 300, 10)] {
            assert!(matches!(
                plan(&r, Some(&l), &standby(300, 20), true, true),
                Action::Recreate { .. }
            ));
        }
    }

    #[test]
    fn reservation_equal_to_the_primary_still_needs_the_snapshot() {
        // The standby reserved exactly the primary's restart_lsn (an idle
        // primary: both at the same checkpoint's running-xacts record).
        let l = local(false, 150, 150, 20);
        match plan(
            &remote(150, 200, 20),
            Some(&l),
            &standby(300, 20),
            true,
            false,
        ) {
            Action::Advance { persist, state, .. } => {
                assert!(!persist);
                assert_eq!(state, State::WaitingForRemote);
            }
            Action::Keep { state, .. } => assert_eq!(state, State::WaitingForRemote),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan(
                &remote(150, 200, 20),
                Some(&l),
                &standby(300, 20),
                true,
                true
            ),
            Action::Advance { persist: true, .. }
        ));
    }

    #[test]
    fn confirmed_flush_is_capped_at_the_flushed_wal() {
        let l = local(true, 100, 150, 10);
        match plan(
            &remote(120, 400, 12),
            Some(&l),
            &standby(300, 12),
            true,
            true,
        ) {
            Action::Advance { target, state, .. } => {
                assert_eq!(target.confirmed_flush_lsn, Lsn(300));
                // The primary's restart point belongs to its confirmed 400.
                assert_eq!(target.restart_lsn, Lsn(100));
                assert_eq!(target.catalog_xmin, Xid(10));
                assert_eq!(state, State::WaitingForWal);
            }
            other => panic!("{other:?}"),
        }
        // restart_lsn beyond the flushed WAL does not move either.
        let t = advance_target(&remote(350, 400, 12), &l, &standby(300, 12), true);
        assert_eq!(t.restart_lsn, Lsn(100));
        assert_eq!(t.catalog_xmin, Xid(10));
    }

    #[test]
    fn restart_and_catalog_xmin_move_only_with_the_confirmed_position_that_justifies_them() {
        // The primary's slot: restart 200 for confirmed 400. The copy: restart
        // 100 for confirmed 150. The standby has flushed up to 300.
        let l = local(true, 100, 150, 10);
        let r = remote(200, 400, 20);
        let t = advance_target(&r, &l, &standby(300, 20), true);
        assert_eq!(
            (t.restart_lsn, t.confirmed_flush_lsn, t.catalog_xmin),
            (Lsn(100), Lsn(300), Xid(10)),
            "a transaction committing between 300 and 400 may have begun before 200"
        );
        // Once the standby has flushed 400, the whole position moves together.
        let t = advance_target(&r, &l, &standby(400, 20), true);
        assert_eq!(
            (t.restart_lsn, t.confirmed_flush_lsn, t.catalog_xmin),
            (Lsn(200), Lsn(400), Xid(20))
        );
        // A copy already ahead on confirmed (kept, never moved back) takes the
        // primary's restart point with it.
        let ahead = local(true, 100, 450, 10);
        let t = advance_target(&r, &ahead, &standby(500, 20), true);
        assert_eq!((t.restart_lsn, t.confirmed_flush_lsn), (Lsn(200), Lsn(450)));
    }

    fn at(restart: u64, confirmed: u64, xmin: u32) -> Target {
        Target {
            restart_lsn: Lsn(restart),
            confirmed_flush_lsn: Lsn(confirmed),
            catalog_xmin: Xid(xmin),
            two_phase: false,
            two_phase_at: Lsn(0),
        }
    }

    #[test]
    fn a_write_never_moves_a_copy_back() {
        // A session advanced confirmed to 500 after the plan read 150.
        assert_eq!(merge(at(100, 500, 10), at(200, 400, 20)), at(200, 500, 20));
        // The plan is ahead on everything: taken as it is.
        assert_eq!(merge(at(100, 150, 10), at(200, 400, 20)), at(200, 400, 20));
        // The copy's restart point is further on: its pair stays, confirmed is the later.
        assert_eq!(merge(at(300, 300, 30), at(200, 400, 20)), at(300, 400, 30));
        // Equal restart points: catalog_xmin never goes back.
        assert_eq!(merge(at(200, 400, 30), at(200, 400, 20)), at(200, 400, 30));
        // Across xid wraparound: 5 follows 4_294_967_290.
        assert_eq!(
            merge(at(100, 100, 4_294_967_290), at(200, 200, 5)),
            at(200, 200, 5)
        );
        assert_eq!(
            merge(at(200, 200, 5), at(200, 200, 4_294_967_290)),
            at(200, 200, 5)
        );
        // Two-phase, once on, stays on.
        let mut two = at(100, 100, 10);
        two.two_phase = true;
        assert!(merge(two, at(200, 200, 20)).two_phase);
    }

    #[test]
    fn ready_needs_feedback_protecting_catalog_xmin() {
        let l = local(true, 100, 200, 10);
        // The primary's physical slot for this standby holds xmin 15: newer than the copy's 10.
        assert!(matches!(
            plan(
                &remote(100, 200, 10),
                Some(&l),
                &standby(300, 15),
                true,
                true
            ),
            Action::Keep {
                state: State::WaitingForFeedback,
                ..
            }
        ));
        assert!(matches!(
            plan(
                &remote(100, 200, 10),
                Some(&l),
                &standby(300, 0),
                true,
                true
            ),
            Action::Keep {
                state: State::WaitingForFeedback,
                ..
            }
        ));
        assert_eq!(
            plan(
                &remote(100, 200, 10),
                Some(&l),
                &standby(300, 9),
                true,
                true
            ),
            Action::Keep {
                state: State::Synced,
                reason: None
            }
        );
    }

    #[test]
    fn a_slot_still_being_created_on_the_primary_waits() {
        let r = remote(100, 0, 10);
        assert!(matches!(
            plan(&r, None, &standby(300, 10), true, true),
            Action::Keep {
                state: State::WaitingForRemote,
                ..
            }
        ));
    }

    #[test]
    fn two_phase_follows_the_primary() {
        let l = local(true, 100, 200, 10);
        let mut r = remote(100, 200, 10);
        r.two_phase = true;
        // two_phase_at not known yet: not enabled on the copy, not ready.
        match plan(&r, Some(&l), &standby(300, 10), true, true) {
            Action::Keep { state, reason } => {
                assert_eq!(state, State::WaitingForRemote);
                assert!(reason.unwrap().contains("two_phase_at"));
            }
            other => panic!("{other:?}"),
        }
        // Read from the primary: taken, and ready.
        r.two_phase_at = Lsn(150);
        match plan(&r, Some(&l), &standby(300, 10), true, true) {
            Action::Advance { target, state, .. } => {
                assert!(target.two_phase);
                assert_eq!(target.two_phase_at, Lsn(150));
                assert_eq!(state, State::Synced);
            }
            other => panic!("{other:?}"),
        }
        // A copy that has it keeps it, and is ready without reading it again.
        let mut has = l.clone();
        has.two_phase = true;
        has.two_phase_at = Lsn(150);
        r.two_phase_at = Lsn(0);
        assert!(matches!(
            plan(&r, Some(&has), &standby(300, 10), true, true),
            Action::Keep {
                state: State::Synced,
                ..
            }
        ));
        // Never changed once set.
        let mut later = at(100, 200, 10);
        later.two_phase_at = Lsn(180);
        let mut set = at(100, 200, 10);
        set.two_phase_at = Lsn(150);
        assert_eq!(merge(set, later).two_phase_at, Lsn(150));
    }

    #[test]
    fn xmin_follows_across_wraparound() {
        let l = local(true, 100, 200, 4_294_967_000);
        let t = advance_target(&remote(150, 250, 5), &l, &standby(300, 5), true);
        assert_eq!(
            t.catalog_xmin,
            Xid(5),
            "5 follows 4294967000 after wraparound"
        );
    }

    #[test]
    fn two_phase_enabled_on_the_standby_is_recreated() {
        // A consumer on the standby enabled two-phase decoding on the copy.
        let mut l = local(true, 100, 200, 10);
        l.two_phase = true;
        l.two_phase_at = Lsn(150);
        let r = remote(100, 200, 10);
        assert!(matches!(
            plan(&r, Some(&l), &standby(300, 10), true, true),
            Action::Recreate { .. }
        ));
        // Enabled on both, at another position than the primary's.
        let mut r = remote(100, 200, 10);
        r.two_phase = true;
        r.two_phase_at = Lsn(120);
        assert!(matches!(
            plan(&r, Some(&l), &standby(300, 10), true, true),
            Action::Recreate { .. }
        ));
        // Copied from the primary: kept.
        l.two_phase_at = Lsn(120);
        assert!(!matches!(
            plan(&r, Some(&l), &standby(300, 10), true, true),
            Action::Recreate { .. }
        ));
    }

    #[test]
    fn equal_restart_takes_the_primarys_later_catalog_xmin() {
        // A fresh copy that reserved exactly where the primary's slot restarts,
        // with an older catalog_xmin: it takes the primary's with its confirmed position.
        let t = advance_target(
            &remote(100, 200, 20),
            &local(false, 100, 100, 10),
            &standby(300, 10),
            true,
        );
        assert_eq!(
            (t.restart_lsn, t.confirmed_flush_lsn, t.catalog_xmin),
            (Lsn(100), Lsn(200), Xid(20))
        );
        // Not while the confirmed position is held back by the flushed WAL.
        let t = advance_target(
            &remote(100, 200, 20),
            &local(false, 100, 100, 10),
            &standby(150, 10),
            true,
        );
        assert_eq!(t.catalog_xmin, Xid(10));
    }

    #[test]
    fn invalidated_or_changed_copy_is_recreated() {
        let mut l = local(true, 100, 200, 10);
        l.invalidated = Some(Invalidation::RowsRemoved);
        assert!(matches!(
            plan(
                &remote(100, 200, 10),
                Some(&l),
                &standby(300, 10),
                true,
                true
            ),
            Action::Recreate { .. }
        ));
        let mut l = local(true, 100, 200, 10);
        l.plugin = "test_decoding".into();
        assert!(matches!(
            plan(
                &remote(100, 200, 10),
                Some(&l),
                &standby(300, 10),
                true,
                true
            ),
            Action::Recreate { .. }
        ));
    }

    #[test]
    fn extra_copies_are_dropped_only_when_ours_and_allowed() {
        let l = local(true, 100, 200, 10);
        assert!(should_drop_extra(&l, false, true));
        assert!(!should_drop_extra(&l, true, true));
        assert!(!should_drop_extra(&l, false, false));
        // A temporary reservation whose slot is gone is always released.
        assert!(should_drop_extra(&local(false, 100, 100, 10), false, false));
    }
}
