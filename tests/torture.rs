//! # Torture: randomized failover scenarios, reproducible from a seed (issue 14)
//!
//! ```text
//!  primary ◀──proxy 1── standby1   (slot standby1; promoted at the end of every scenario)
//!     │    ◀──proxy 2── standby2   (slot standby2)
//!     │  standby_slot_names = 'standby1, standby2': consumers wait for both
//!     │  each standby's primary_conninfo names its proxy (a thread of the
//!     │  test): its walreceiver and its sync worker both go through it
//!     ├── slot recv (test_decoding) ◀── pg_recvlogical, its own position (--startpos)
//!     ├── slot w2j  (wal2json v2)   ◀── pg_recvlogical, its own position (--startpos)
//!     ├── slot tp   (test_decoding, two-phase) ◀── pg_recvlogical, its own position
//!     └── slot sub  (pgoutput)      ◀── subscriber (a separate cluster, CREATE SUBSCRIPTION)
//!  load: one-row transactions, subtransactions (a savepoint rolled back, one
//!  released), two-phase transactions (PREPARE TRANSACTION, then COMMIT
//!  PREPARED or, one in three, ROLLBACK PREPARED a few transactions later),
//!  a transaction held open across CHECKPOINTs, one transaction
//!  over logical_decoding_work_mem (spilled), CHECKPOINTs (running-xacts
//!  records), DDL once the long transaction is done and nothing is prepared
//!  (ALTER TABLE t ADD COLUMN on the subscriber, then on the primary; CREATE
//!  TABLE); in three scenarios of four a transaction 'held' is prepared
//!  shortly before the fault and committed (or rolled back) on the survivor
//!  after the last failover, so the fault and every failover fall between
//!  its PREPARE and its COMMIT PREPARED
//! ```
//! Each scenario picks one fault and its moments from the seed, injects it
//! under load, then fails over to standby1 (the fault itself, or a kill -9 of
//! the primary after it; standby2 after two failovers, or when a quorum
//! failover finds it the most advanced), and checks what follows. Thirteen
//! faults, each once in any thirteen consecutive scenarios: kill -9 of
//! the primary, of a standby, of a standby's worker; SIGSTOP of the
//! primary; a standby restarted while the primary is down; the proxy
//! cutting a standby's link (connections closed and refused), stalling it
//! (nothing passes one way or both, connections open) or slowing it;
//! a switchover to standby1 and back (clean shutdown, promotion, the old
//! primary follows through a physical slot made on standby1 beforehand);
//! two successive failovers (standby2 cut first so that it is behind
//! standby1, the primary killed, standby1 promoted holding its consumers
//! for standby2, standby2 re-pointed to it and restarted, then standby1
//! killed and standby2 promoted: the checks then run on standby2); a quorum
//! failover (the primary holds its consumers for one of the two,
//! `standby_slots_min_confirmed = 1`; one standby's link is cut, the load
//! and consumers go on, the primary is killed, and the standby whose
//! pg_last_wal_receive_lsn is further is promoted, as an HA manager picks
//! it: the checks run there, and nothing may be lost); kill -9 of a
//! standby's worker, or a cut of its link, inside a sync pass. After the
//! faults the primary survives, the final kill -9 comes later.
//!
//! How "inside a sync pass" is aimed: the worker's connection goes through
//! the proxy, which reads the queries it passes to the primary. The slot
//! list (`... FROM pg_replication_slots WHERE (slot_type = 'logical' AND
//! NOT temporary) ...`) begins a pass, the long poll
//! (`sync_logical_slot_wait_for_change`) comes between passes, anything in
//! between belongs to the pass (snapshot files, two_phase_at, a slot's
//! restart_lsn: reads made between one slot's decision and the next). The
//! proxy holds the worker's N-th query of a pass (N from the seed, 1 to 3),
//! so the worker waits for the answer with its pass transaction open and
//! part of it applied; then the worker is killed or the link cut, and the
//! query let go. Every 3 s without a pass that far, one query earlier is
//! taken; the notes say which query was caught, how long it took and how
//! many passes went by (most passes read only the slot list, so N = 1 is
//! where most land), or that none was and the fault struck unaimed. The
//! checks:
//! - every consumer received every row of the surviving timeline exactly once
//!   after its own position: `lost`, `duplicated`, `phantom` (received, not
//!   on the survivor); the two-phase consumer counts a prepared
//!   transaction's rows at its COMMIT PREPARED only, never those of one
//!   rolled back (see "A consumer's own position");
//! - `overpromised`: standby1 said ready, and decoding from its promoted copy
//!   (moved to the consumer's own position) yields anything but exactly the
//!   surviving rows the consumer did not have, or the copy is missing or
//!   stands past the consumer's position; or a consumer confirmed a
//!   position past all the WAL the promoted standby had (where its new
//!   timeline begins; its later WAL is the new timeline's, which the
//!   consumer would skip up to there);
//! - `stuck`: after a fault the primary survives, the standbys' status view
//!   is verified again within a bound, and the copies are ready again; the
//!   consumers reach the end of the load on the promoted server;
//! - no crash loop (no server reinitialized more often than the faults
//!   explain, no PANIC), the standbys' pg_wal bounded.
//!
//! Environment: `TORTURE_SEED` (default 1), `TORTURE_RUNS` (default 3: the
//! CI-sized run), `TORTURE_ONLY` (run scenario K only), `TORTURE_REPORT` (a
//! markdown file to write the table to), `TORTURE_COMMAND` (the command line
//! printed in it). `scripts/torture` sets them. A failing scenario keeps its
//! directory and prints `scripts/torture --seed S --only K`.
//!
//! Sabotage, to show that the checks catch what they claim to (never on by
//! default): `TORTURE_SABOTAGE=no_wait` leaves the primary's
//! `standby_slot_names` empty and slows standby1's link (32 kB/s) once the
//! load starts, so consumers read what standby1 does not have yet (expect
//! `phantom`, `overpromised` or standby1 not ready at the failover); `TORTURE_SABOTAGE=skip` resumes every consumer
//! after a failover from the promoted server's end of WAL instead of its own
//! position (expect `lost`); `TORTURE_SABOTAGE=repeat` makes every consumer
//! apply its last batch (segment) again after a failover, as an
//! at-least-once consumer would (expect `duplicated`). Every scenario run with
//! one fails, and the summary line shows the counts.
//!
//! A consumer's own position: pg_recvlogical runs in segments, each from the
//! position to an end position taken between records (`--endpos`), with no
//! status messages of its own (`-s 0`, `-F` long): it confirms only when it
//! reaches the end (`-v` prints what). A segment that confirmed something
//! keeps its complete transactions and moves the position to what it
//! confirmed; one that confirmed nothing (killed, server gone) is dropped
//! whole, as a consumer that commits its output and position together would.
//! The two-phase consumer keeps, with its rows and position, the
//! transactions it has prepared (BEGIN, changes, `PREPARE TRANSACTION
//! 'gid'`: complete, held by gid); a later `COMMIT PREPARED 'gid'` adds their
//! rows, `ROLLBACK PREPARED 'gid'` drops them. A PREPARE received twice
//! would count its rows twice (`duplicated`), a COMMIT PREPARED without its
//! PREPARE counts nothing (`lost`), a PREPARE of a transaction the survivor
//! never committed is never counted. Across a failover it keeps what it
//! holds, and the check of the promoted copy starts from it too.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::fs;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

/// The ids of the transaction the scenario holds prepared (gid 'held').
const HELD_ID: i64 = 1_500_000_000;
/// The bound for "moves again": status view verified again, copies ready again.
const STUCK_BOUND: Duration = Duration::from_secs(60);
/// A pg_recvlogical segment is killed (and dropped) after this: below
/// wal_sender_timeout / 2, so the server never asks it for a reply.
const SEGMENT_TIMEOUT: Duration = Duration::from_secs(20);
/// The standbys' pg_wal may not grow past this in a scenario.
const WAL_BOUND_BYTES: u64 = 1 << 30;

// ---------------------------------------------------------------- the seed

/// splitmix64: small, good enough, and the same on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, k: u64) -> Rng {
        let mut r = Rng(seed ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A number in lo..=hi.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    /// kill -9 of the primary's postmaster; standby1 is promoted.
    PrimaryKill9,
    /// kill -9 of a standby's sync worker only (the postmaster reinitializes).
    WorkerKill9,
    /// kill -9 of a standby's postmaster, then a start.
    StandbyKill9Restart,
    /// SIGSTOP of every process of the primary for a few seconds.
    PrimarySigstop,
    /// kill -9 of the primary, standby1 restarted while it is down, then promoted.
    StandbyRestartWhilePrimaryDown,
    /// The proxy between a standby and the primary closes every connection
    /// and refuses new ones for a while (walreceiver and worker both cut).
    ProxyCut,
    /// The proxy passes nothing one way (or either way) for a while, the
    /// connections left open.
    ProxyStall,
    /// The proxy passes everything, slowly, for a while.
    ProxySlow,
    /// Clean shutdown of the primary, standby1 promoted, the old primary
    /// follows it; then the same back.
    SwitchoverAndBack,
    /// kill -9 of the primary, standby1 promoted, standby2 re-pointed to
    /// follow it; then kill -9 of standby1, standby2 promoted.
    TwoFailovers,
    /// The primary holds its consumers for one of the two standbys
    /// (`standby_slots_min_confirmed = 1`); one standby's link is cut, the
    /// load and consumers go on, kill -9 of the primary, and the standby
    /// that received the most WAL is promoted (as an HA manager would).
    QuorumFailover,
    /// kill -9 of a standby's worker while it is inside a sync pass (held
    /// by the proxy at one of the pass's queries to the primary).
    MidPassWorkerKill9,
    /// The proxy cuts a standby's link while its worker is inside a sync
    /// pass (held at one of the pass's queries), then restores it.
    MidPassProxyCut,
}

const FAULTS: [Fault; 13] = [
    Fault::PrimaryKill9,
    Fault::WorkerKill9,
    Fault::StandbyKill9Restart,
    Fault::PrimarySigstop,
    Fault::StandbyRestartWhilePrimaryDown,
    Fault::ProxyCut,
    Fault::ProxyStall,
    Fault::ProxySlow,
    Fault::SwitchoverAndBack,
    Fault::TwoFailovers,
    Fault::QuorumFailover,
    Fault::MidPassWorkerKill9,
    Fault::MidPassProxyCut,
];

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::PrimaryKill9 => "kill -9 primary, promote standby1",
            Fault::WorkerKill9 => "kill -9 a standby's worker",
            Fault::StandbyKill9Restart => "kill -9 a standby, restart it",
            Fault::PrimarySigstop => "SIGSTOP the primary",
            Fault::StandbyRestartWhilePrimaryDown => {
                "kill -9 primary, restart standby1 while it is down, promote it"
            }
            Fault::ProxyCut => "cut a standby's link to the primary (both ways), restore it",
            Fault::ProxyStall => "stall a standby's link to the primary, restore it",
            Fault::ProxySlow => "slow a standby's link to the primary, restore it",
            Fault::SwitchoverAndBack => "switchover to standby1 and back",
            Fault::TwoFailovers => {
                "kill -9 primary, promote standby1, standby2 follows it; kill -9 standby1, promote standby2"
            }
            Fault::QuorumFailover => {
                "min_confirmed = 1, a standby's link cut, kill -9 primary, promote the most advanced standby"
            }
            Fault::MidPassWorkerKill9 => "kill -9 a standby's worker inside a sync pass",
            Fault::MidPassProxyCut => "cut a standby's link inside a sync pass, restore it",
        }
    }
}

/// Everything the seed decides for scenario K.
#[derive(Debug)]
struct Plan {
    fault: Fault,
    /// Which standby a standby fault hits (1 or 2).
    standby: u8,
    /// Load before the fault.
    fault_after_ms: u64,
    /// When the transaction held open commits, from the start of the load
    /// (after the fault: it may die with the primary).
    long_commit_ms: u64,
    /// When the spilled transaction runs, from the start of the load.
    big_at_ms: u64,
    /// SIGSTOP length; how long a killed standby stays down.
    down_ms: u64,
    /// From the recovery after a fault the primary survives to the final kill.
    final_after_ms: u64,
    /// Load on the promoted server before the end.
    after_failover_ms: u64,
    /// The consumers stop reading this long before the fault (0: they
    /// read all along), so that the copies have changes to decode after
    /// their consumers' positions.
    consumer_lag_ms: u64,
    /// Which way a stall holds: both, to the standby, to the primary.
    stall: ProxyMode,
    /// How slow a slow link is.
    slow_kbps: u64,
    /// When the DDL runs (ALTER TABLE t ADD COLUMN, CREATE TABLE), from
    /// the start of the load, once the long transaction has committed.
    ddl_at_ms: u64,
    /// A transaction the scenario prepares (gid 'held') this long before
    /// the fault and resolves on the survivor after the last failover:
    /// Some(true) COMMIT PREPARED, Some(false) ROLLBACK PREPARED.
    held_prepared: Option<bool>,
    held_lead_ms: u64,
    /// A mid-pass fault strikes while the worker waits on this query of a
    /// pass (1: the slot list, 2 and on: reads for single slots).
    pass_query: u64,
}

impl Plan {
    fn new(seed: u64, k: u64) -> Plan {
        let mut r = Rng::new(seed, k);
        let fault_after_ms = r.range(200, 3000);
        // Every fault once in any FAULTS.len() consecutive scenarios; the
        // seed shifts which comes first.
        let offset = Rng::new(seed, u64::MAX).next();
        let fault = FAULTS[((offset.wrapping_add(k)) % FAULTS.len() as u64) as usize];
        Plan {
            fault,
            standby: r.range(1, 2) as u8,
            fault_after_ms,
            long_commit_ms: r.range(100, 6000),
            big_at_ms: 0,
            down_ms: r.range(500, 5000),
            final_after_ms: r.range(0, 1500),
            after_failover_ms: r.range(200, 2000),
            consumer_lag_ms: if r.range(0, 1) == 1 {
                r.range(100, 2000)
            } else {
                0
            },
            stall: ProxyMode::Pass,
            slow_kbps: 0,
            ddl_at_ms: 0,
            held_prepared: None,
            held_lead_ms: 0,
            pass_query: 1,
        }
        .with_big_at(r.range(0, fault_after_ms))
        .with_link(&mut r)
        .with_two_phase(&mut r)
    }
    /// Drawn after the others too.
    fn with_two_phase(mut self, r: &mut Rng) -> Plan {
        self.held_prepared = match r.range(0, 3) {
            0 => None,
            3 => Some(false),
            _ => Some(true),
        };
        self.held_lead_ms = r.range(0, 500);
        self.pass_query = r.range(1, 3);
        self
    }
    /// The spilled transaction runs before the fault (possibly still
    /// being decoded or held when it strikes).
    fn with_big_at(mut self, ms: u64) -> Plan {
        self.big_at_ms = ms;
        self
    }
    /// Drawn after the others, so that older seeds keep their timings.
    fn with_link(mut self, r: &mut Rng) -> Plan {
        self.stall = match r.range(0, 2) {
            0 => ProxyMode::StallBoth,
            1 => ProxyMode::StallToStandby,
            _ => ProxyMode::StallToPrimary,
        };
        self.slow_kbps = r.range(16, 256);
        self.ddl_at_ms = r.range(0, 6000);
        self
    }
    fn timing(&self) -> String {
        let mut s = format!(
            "fault at {} ms; long xact commits at {} ms; big xact at {} ms; DDL at {} ms",
            self.fault_after_ms, self.long_commit_ms, self.big_at_ms, self.ddl_at_ms
        );
        if self.consumer_lag_ms > 0 {
            let _ = write!(
                s,
                "; consumers stop reading {} ms before the fault",
                self.consumer_lag_ms
            );
        }
        match self.fault {
            Fault::PrimaryKill9 => {}
            Fault::StandbyRestartWhilePrimaryDown => {
                let _ = write!(s, "; standby1 restarted {} ms after", self.down_ms);
            }
            Fault::PrimarySigstop => {
                let _ = write!(
                    s,
                    "; stopped {} ms; final kill {} ms after recovery",
                    self.down_ms, self.final_after_ms
                );
            }
            Fault::StandbyKill9Restart => {
                let _ = write!(
                    s,
                    "; standby{} down {} ms; final kill {} ms after recovery",
                    self.standby, self.down_ms, self.final_after_ms
                );
            }
            Fault::WorkerKill9 => {
                let _ = write!(
                    s,
                    "; standby{}; final kill {} ms after recovery",
                    self.standby, self.final_after_ms
                );
            }
            Fault::ProxyCut | Fault::ProxyStall | Fault::ProxySlow => {
                let how = match self.fault {
                    Fault::ProxyCut => "cut".to_string(),
                    Fault::ProxySlow => format!("{} kB/s", self.slow_kbps),
                    _ => match self.stall {
                        ProxyMode::StallToStandby => "stalled to the standby".to_string(),
                        ProxyMode::StallToPrimary => "stalled to the primary".to_string(),
                        _ => "stalled both ways".to_string(),
                    },
                };
                let _ = write!(
                    s,
                    "; standby{} {how} {} ms; final kill {} ms after recovery",
                    self.standby, self.down_ms, self.final_after_ms
                );
            }
            Fault::SwitchoverAndBack => {
                let _ = write!(
                    s,
                    "; {} ms on standby1 before the way back; final kill {} ms after",
                    self.down_ms, self.final_after_ms
                );
            }
            Fault::TwoFailovers => {
                let _ = write!(
                    s,
                    "; {} ms on standby1 after standby2 follows it",
                    self.final_after_ms
                );
            }
            Fault::QuorumFailover => {
                let _ = write!(
                    s,
                    "; standby{} cut {} ms before the kill",
                    self.standby, self.down_ms
                );
            }
            Fault::MidPassWorkerKill9 | Fault::MidPassProxyCut => {
                let _ = write!(
                    s,
                    "; standby{} at query {} of a pass",
                    self.standby, self.pass_query
                );
                if let Fault::MidPassProxyCut = self.fault {
                    let _ = write!(s, ", cut {} ms", self.down_ms);
                }
                let _ = write!(s, "; final kill {} ms after recovery", self.final_after_ms);
            }
        }
        if let Some(commit) = self.held_prepared {
            let _ = write!(
                s,
                "; 'held' prepared {} ms before the fault, {} after the failover",
                self.held_lead_ms,
                if commit { "committed" } else { "rolled back" }
            );
        }
        let _ = write!(s, "; {} ms of load after", self.after_failover_ms);
        s
    }
}

// ---------------------------------------------------------------- outcome

#[derive(Default, Clone)]
struct Outcome {
    k: u64,
    fault: String,
    timing: String,
    lost: u64,
    duplicated: u64,
    phantom: u64,
    overpromised: u64,
    stuck: u64,
    crash_loops: u64,
    wal_over: u64,
    /// What went wrong, one line each.
    problems: Vec<String>,
    /// Facts worth a look (rows checked, readiness source, pg_wal size).
    notes: Vec<String>,
    secs: u64,
    dir: String,
}

impl Outcome {
    fn failed(&self) -> bool {
        !self.problems.is_empty()
    }
    fn problem(&mut self, p: String) {
        eprintln!("torture: scenario {}: {p}", self.k);
        self.problems.push(p);
    }
}

// ---------------------------------------------------------------- helpers

/// `TORTURE_SABOTAGE` (see the file comment): `no_wait`, `skip`, `repeat` or nothing.
fn sabotage(what: &str) -> bool {
    std::env::var("TORTURE_SABOTAGE").is_ok_and(|v| v.trim() == what)
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

fn lsn_text(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}

fn kill(signal: &str, pid: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, pid])
        .status();
}

/// The postmaster of `node` and its children.
fn all_pids(node: &Node) -> Vec<String> {
    let pm = node.postmaster_pid();
    let out = std::process::Command::new("pgrep")
        .args(["-P", &pm])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let mut pids = vec![pm];
    pids.extend(out.split_whitespace().map(str::to_string));
    pids
}

fn dir_bytes(path: &Path) -> u64 {
    fs::read_dir(path)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Polls `sql` on `node` until it returns `want` or `bound` passes.
fn poll(node: &Node, sql: &str, want: &str, bound: Duration) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    loop {
        let got = node.try_sql(sql);
        if got.as_deref() == Ok(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{sql} gave {got:?} for {bound:?}, not {want:?}"));
        }
        sleep(Duration::from_millis(100));
    }
}

/// Counts what `got` has beyond `expected` (phantom), misses (lost), and
/// holds more than once (duplicated).
fn compare(got: &[i64], expected: &BTreeSet<i64>) -> (u64, u64, u64, String) {
    let mut seen: BTreeMap<i64, u64> = BTreeMap::new();
    for id in got {
        *seen.entry(*id).or_default() += 1;
    }
    let lost: Vec<i64> = expected
        .iter()
        .filter(|id| !seen.contains_key(id))
        .copied()
        .collect();
    let dup: Vec<i64> = seen
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let dup_count: u64 = seen.values().filter(|n| **n > 1).map(|n| n - 1).sum();
    let phantom: Vec<i64> = seen
        .keys()
        .filter(|id| !expected.contains(id))
        .copied()
        .collect();
    let show = |v: &[i64]| format!("{:?}", &v[..v.len().min(10)]);
    (
        lost.len() as u64,
        dup_count,
        phantom.len() as u64,
        format!(
            "{} received, {} expected; lost {} {}; duplicated {} {}; phantom {} {}",
            got.len(),
            expected.len(),
            lost.len(),
            show(&lost),
            dup_count,
            show(&dup),
            phantom.len(),
            show(&phantom)
        ),
    )
}

// ---------------------------------------------------------------- consumers

#[derive(Clone, Copy, PartialEq)]
enum Plugin {
    TestDecoding,
    Wal2json,
    /// test_decoding on a slot made with two-phase decoding (`pg_recvlogical
    /// --create-slot --two-phase`): a prepared transaction comes as BEGIN,
    /// its changes and PREPARE TRANSACTION 'gid', then COMMIT PREPARED
    /// 'gid' or ROLLBACK PREPARED 'gid' on its own.
    TwoPhase,
}

/// The prepared transactions a two-phase consumer holds (gid: its rows),
/// waiting for their COMMIT PREPARED or ROLLBACK PREPARED.
type Prepared = BTreeMap<String, Vec<i64>>;

impl Plugin {
    /// The output plugin.
    fn name(self) -> &'static str {
        match self {
            Plugin::TestDecoding | Plugin::TwoPhase => "test_decoding",
            Plugin::Wal2json => "wal2json",
        }
    }
    /// What the checks call this consumer.
    fn label(self) -> &'static str {
        match self {
            Plugin::TestDecoding => "test_decoding",
            Plugin::Wal2json => "wal2json",
            Plugin::TwoPhase => "test_decoding --two-phase",
        }
    }
    /// pg_recvlogical's -o options and the same as SQL arguments.
    fn options(self) -> (&'static [&'static str], &'static str) {
        match self {
            Plugin::TestDecoding | Plugin::TwoPhase => (&[], ""),
            Plugin::Wal2json => (&["-o", "format-version=2"], ", 'format-version', '2'"),
        }
    }
    fn is_begin(self, line: &str) -> bool {
        match self {
            Plugin::TestDecoding | Plugin::TwoPhase => line.starts_with("BEGIN"),
            Plugin::Wal2json => line.starts_with("{\"action\":\"B\""),
        }
    }
    fn is_commit(self, line: &str) -> bool {
        match self {
            Plugin::TestDecoding | Plugin::TwoPhase => line.starts_with("COMMIT"),
            Plugin::Wal2json => line.starts_with("{\"action\":\"C\""),
        }
    }
    /// The id of a row inserted into table t, if `line` is one.
    fn inserted_id(self, line: &str) -> Option<i64> {
        let rest = match self {
            Plugin::TestDecoding | Plugin::TwoPhase => {
                if !line.contains("table public.t: INSERT:") {
                    return None;
                }
                line.split("id[integer]:").nth(1)?
            }
            Plugin::Wal2json => {
                if !(line.starts_with("{\"action\":\"I\"") && line.contains("\"table\":\"t\"")) {
                    return None;
                }
                let after = line.split("\"name\":\"id\"").nth(1)?;
                after.split("\"value\":").nth(1)?
            }
        };
        let digits: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        digits.parse().ok()
    }
    /// The ids of the complete transactions in `text` (one message a line)
    /// and how many there are; a transaction without its commit is left
    /// out. For a consumer that holds `prepared` (two-phase): a
    /// transaction that ends in PREPARE TRANSACTION is complete and joins
    /// `prepared`, its rows counted only at its COMMIT PREPARED (in this
    /// text or a later one) and dropped at its ROLLBACK PREPARED. A
    /// PREPARE of a gid already held adds its rows again (counted twice at
    /// the commit: `duplicated`); a COMMIT PREPARED of a gid not held
    /// counts nothing (its rows are `lost`).
    fn apply(self, text: &str, prepared: &mut Prepared) -> (Vec<i64>, u64) {
        let mut ids = Vec::new();
        let mut pending: Option<Vec<i64>> = None;
        let mut txns = 0;
        for line in text.lines() {
            let two_phase = self == Plugin::TwoPhase;
            if two_phase && line.starts_with("PREPARE TRANSACTION ") {
                if let Some(p) = pending.take() {
                    prepared.entry(gid(line)).or_default().extend(p);
                    txns += 1;
                }
            } else if two_phase && line.starts_with("COMMIT PREPARED ") {
                ids.extend(prepared.remove(&gid(line)).unwrap_or_default());
                txns += 1;
            } else if two_phase && line.starts_with("ROLLBACK PREPARED ") {
                prepared.remove(&gid(line));
                txns += 1;
            } else if self.is_begin(line) {
                pending = Some(Vec::new());
            } else if self.is_commit(line) {
                if let Some(p) = pending.take() {
                    ids.extend(p);
                    txns += 1;
                }
            } else if let Some(id) = self.inserted_id(line) {
                match pending.as_mut() {
                    Some(p) => p.push(id),
                    // A change outside BEGIN/COMMIT: keep it, the check will tell.
                    None => ids.push(id),
                }
            }
        }
        (ids, txns)
    }
}

/// The gid of test_decoding's `PREPARE TRANSACTION 'gid', txid N` (and of
/// COMMIT PREPARED, ROLLBACK PREPARED): the quoted literal.
fn gid(line: &str) -> String {
    line.split('\'').nth(1).unwrap_or_default().to_string()
}

/// What a consumer has: its own position and every row it kept.
struct Received {
    position: u64,
    ids: Vec<i64>,
    segments: u64,
    dropped_segments: u64,
    /// The rows of the last segment kept that had any.
    last_kept: Vec<i64>,
    /// A two-phase consumer's prepared transactions, not yet committed
    /// or rolled back (kept, as its rows and position, only from segments
    /// that confirmed something).
    prepared: Prepared,
    /// PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED messages
    /// in the segments kept (shown in the notes).
    two_phase_messages: [u64; 3],
}

struct Control {
    stop: AtomicBool,
    paused: AtomicBool,
    idle: AtomicBool,
    port: AtomicU16,
}

impl Control {
    fn new(port: u16) -> Arc<Control> {
        Arc::new(Control {
            stop: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            port: AtomicU16::new(port),
        })
    }
    /// Pauses the thread and waits until it has finished what it was doing.
    fn pause(&self) {
        self.idle.store(false, Ordering::SeqCst);
        self.paused.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + SEGMENT_TIMEOUT + Duration::from_secs(10);
        while !self.idle.load(Ordering::SeqCst) && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
    }
    fn resume_on(&self, port: u16) {
        self.port.store(port, Ordering::SeqCst);
        self.paused.store(false, Ordering::SeqCst);
    }
    /// True while the thread should go on; marks it idle while paused.
    fn wait_unpaused(&self) -> bool {
        while self.paused.load(Ordering::SeqCst) {
            if self.stop.load(Ordering::SeqCst) {
                return false;
            }
            self.idle.store(true, Ordering::SeqCst);
            sleep(Duration::from_millis(20));
        }
        !self.stop.load(Ordering::SeqCst)
    }
}

/// pg_recvlogical in segments on one slot, in a thread (see the file comment).
struct Consumer {
    slot: &'static str,
    plugin: Plugin,
    control: Arc<Control>,
    received: Arc<Mutex<Received>>,
    thread: Option<JoinHandle<()>>,
}

impl Consumer {
    fn start(dir: &Path, port: u16, slot: &'static str, plugin: Plugin, position: u64) -> Consumer {
        let control = Control::new(port);
        let received = Arc::new(Mutex::new(Received {
            position,
            ids: Vec::new(),
            segments: 0,
            dropped_segments: 0,
            last_kept: Vec::new(),
            prepared: Prepared::new(),
            two_phase_messages: [0; 3],
        }));
        let (c, r, d) = (control.clone(), received.clone(), dir.to_path_buf());
        let thread = std::thread::spawn(move || consume(&d, slot, plugin, &c, &r));
        Consumer {
            slot,
            plugin,
            control,
            received,
            thread: Some(thread),
        }
    }
    fn position(&self) -> u64 {
        self.received.lock().unwrap().position
    }
    fn ids(&self) -> Vec<i64> {
        self.received.lock().unwrap().ids.clone()
    }
    fn stop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn consume(dir: &Path, slot: &str, plugin: Plugin, control: &Control, received: &Mutex<Received>) {
    let journal = dir.join(format!("consumer-{slot}.journal"));
    let kept = dir.join(format!("consumer-{slot}.kept"));
    let mut n = 0u64;
    let note = |text: String| {
        use std::io::Write;
        if let Ok(mut f) = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
        {
            let _ = writeln!(f, "{text}");
        }
    };
    while control.wait_unpaused() {
        let port = control.port.load(Ordering::SeqCst);
        let end = match run_sql(port, "postgres", "SELECT pg_current_wal_insert_lsn()") {
            Ok(e) => lsn(&e),
            Err(_) => {
                sleep(Duration::from_millis(200));
                continue;
            }
        };
        let start = received.lock().unwrap().position;
        if end <= start {
            sleep(Duration::from_millis(100));
            continue;
        }
        n += 1;
        let out = dir.join(format!("seg-{slot}-{n}.out"));
        let err = dir.join(format!("seg-{slot}-{n}.err"));
        let mut cmd = pg_command("pg_recvlogical");
        cmd.args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "--no-loop",
            "-v",
            "-s",
            "0",
            "-F",
            "3600",
        ])
        .args(["-p", &port.to_string(), "-S", slot, "--start"])
        .args(["-I", &lsn_text(start), "-E", &lsn_text(end)])
        .args(plugin.options().0)
        .arg("-f")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::from(fs::File::create(&err).expect("segment stderr")));
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                note(format!("segment {n}: cannot spawn: {e}"));
                sleep(Duration::from_millis(200));
                continue;
            }
        };
        let deadline = Instant::now() + SEGMENT_TIMEOUT;
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break format!("{s}");
            }
            if Instant::now() > deadline || control.stop.load(Ordering::SeqCst) {
                // pkill the child of runuser, then runuser.
                let _ = std::process::Command::new("pkill")
                    .args(["-9", "-P", &child.id().to_string()])
                    .status();
                let _ = child.kill();
                let _ = child.wait();
                break "killed".to_string();
            }
            sleep(Duration::from_millis(20));
        };
        let err_text = fs::read_to_string(&err).unwrap_or_default();
        let confirmed = err_text
            .lines()
            .filter_map(|l| l.split("flush to ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .next_back()
            .map(lsn);
        let text = fs::read_to_string(&out).unwrap_or_default();
        let mut r = received.lock().unwrap();
        r.segments += 1;
        match confirmed {
            Some(c) => {
                let (ids, txns) = plugin.apply(&text, &mut r.prepared);
                for (i, what) in [
                    "PREPARE TRANSACTION ",
                    "COMMIT PREPARED ",
                    "ROLLBACK PREPARED ",
                ]
                .iter()
                .enumerate()
                {
                    r.two_phase_messages[i] +=
                        text.lines().filter(|l| l.starts_with(what)).count() as u64;
                }
                note(format!(
                    "segment {n} on port {port}: {} to {} ({status}): confirmed {}, kept {txns} transactions, {} rows",
                    lsn_text(start),
                    lsn_text(end),
                    lsn_text(c),
                    ids.len()
                ));
                if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(&kept) {
                    use std::io::Write;
                    let _ = f.write_all(text.as_bytes());
                }
                if !ids.is_empty() {
                    r.last_kept = ids.clone();
                }
                r.ids.extend(ids);
                r.position = r.position.max(c);
            }
            None => {
                r.dropped_segments += 1;
                note(format!(
                    "segment {n} on port {port}: {} to {} ({status}): confirmed nothing, dropped ({} bytes); stderr: {}",
                    lsn_text(start),
                    lsn_text(end),
                    text.len(),
                    err_text.lines().last().unwrap_or("")
                ));
            }
        }
        drop(r);
        let _ = fs::remove_file(&out);
        let _ = fs::remove_file(&err);
    }
}

// ---------------------------------------------------------------- load

/// The write load, in a thread; ids are unique across all its kinds.
struct Load {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, subscriber: u16, first_id: i64, plan: &Plan) -> Load {
        let control = Control::new(port);
        let c = control.clone();
        let times = (plan.long_commit_ms, plan.big_at_ms, plan.ddl_at_ms);
        let thread = std::thread::spawn(move || load(&c, subscriber, first_id, times));
        Load {
            control,
            thread: Some(thread),
        }
    }
    fn stop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop();
    }
}

fn load(control: &Control, subscriber: u16, first_id: i64, times: (u64, u64, u64)) {
    let (long_commit_ms, big_at_ms, ddl_at_ms) = times;
    let begun = Instant::now();
    let mut id = first_id;
    // The transaction held open across CHECKPOINTs (running-xacts records
    // that list it), with a row of its own: it commits later, or dies with
    // the primary.
    let mut long = {
        let port = control.port.load(Ordering::SeqCst);
        let child = psql(port, "postgres")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn psql");
        Some(child)
    };
    let send = |child: &mut std::process::Child, sql: &str| {
        use std::io::Write;
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = stdin.write_all(sql.as_bytes());
            let _ = stdin.flush();
        }
    };
    if let Some(c) = long.as_mut() {
        send(c, &format!("BEGIN; INSERT INTO t VALUES ({id}, 'long');\n"));
    }
    id += 1;
    let mut big_done = false;
    let mut ddl_done = false;
    // Prepared transactions waiting for their COMMIT PREPARED (true) or
    // ROLLBACK PREPARED (false): each is resolved a few transactions
    // later, so that segments, passes and faults fall in between.
    let mut prepared: VecDeque<(String, bool)> = VecDeque::new();
    // Every gid the load prepared, and how it ends.
    let mut decided: BTreeMap<String, bool> = BTreeMap::new();
    let mut last_checkpoint = Instant::now();
    let mut i = 0u64;
    while control.wait_unpaused() {
        let port = control.port.load(Ordering::SeqCst);
        let ms = begun.elapsed().as_millis() as u64;
        if !ddl_done && long.is_none() && ms >= ddl_at_ms {
            // Nothing prepared may hold a lock on t: the load's own are
            // resolved now; one the scenario holds (gid 'held') postpones it.
            resolve_prepared(port, &mut prepared, 0);
        }
        if !ddl_done
            && long.is_none()
            && ms >= ddl_at_ms
            && run_sql(port, "postgres", "SELECT count(*) FROM pg_prepared_xacts").as_deref()
                == Ok("0")
        {
            // DDL on the published table, the subscriber first (as one
            // must), and a new table: decoding after it needs the new
            // catalog rows, which the copies' catalog_xmin must keep.
            // After the long transaction, whose lock would hold it.
            ddl_done = true;
            let _ = run_sql(subscriber, "postgres", "ALTER TABLE t ADD COLUMN extra int");
            let _ = run_sql(
                port,
                "postgres",
                "SET lock_timeout = '2s'; ALTER TABLE t ADD COLUMN extra int DEFAULT 7; ALTER TABLE t ALTER COLUMN extra SET DEFAULT 8;
                 CREATE TABLE t_new (id int PRIMARY KEY, v text); INSERT INTO t_new VALUES (1, 'new')",
            );
        }
        let sql = if !big_done && ms >= big_at_ms {
            // Over logical_decoding_work_mem (64kB): decoding spills it.
            big_done = true;
            let s = format!(
                "INSERT INTO t SELECT g, repeat('x', 200) FROM generate_series({id}, {}) g",
                id + 2999
            );
            id += 3000;
            s
        } else if i % 7 == 5 {
            // Two-phase: PREPARE TRANSACTION now, COMMIT PREPARED (or, one
            // in three, ROLLBACK PREPARED) a few transactions later.
            let (a, b) = (id, id + 1);
            id += 2;
            let gid = format!("p{a}");
            prepared.push_back((gid.clone(), (i / 7) % 3 != 2));
            decided.insert(gid.clone(), (i / 7) % 3 != 2);
            format!(
                "BEGIN; INSERT INTO t VALUES ({a}, 'p'); INSERT INTO t VALUES ({b}, 'p'); PREPARE TRANSACTION '{gid}'"
            )
        } else if i % 7 == 3 {
            // Subtransactions: b is rolled back, a, c, d commit.
            let (a, b, c, d) = (id, id + 1, id + 2, id + 3);
            id += 4;
            format!(
                "BEGIN; INSERT INTO t VALUES ({a}, 's'); SAVEPOINT s1; INSERT INTO t VALUES ({b}, 'rolled back');
                 ROLLBACK TO s1; INSERT INTO t VALUES ({c}, 's'); SAVEPOINT s2; INSERT INTO t VALUES ({d}, 's');
                 RELEASE s2; COMMIT"
            )
        } else {
            id += 1;
            format!("INSERT INTO t VALUES ({}, 'w')", id - 1)
        };
        let _ = run_sql(port, "postgres", &sql);
        resolve_prepared(port, &mut prepared, 2);
        if last_checkpoint.elapsed() > Duration::from_millis(700) {
            let _ = run_sql(port, "postgres", "CHECKPOINT");
            last_checkpoint = Instant::now();
        }
        if ms >= long_commit_ms {
            if let Some(mut c) = long.take() {
                send(&mut c, "COMMIT;\n");
                drop(c.stdin.take());
                let _ = c.wait();
            }
        }
        i += 1;
    }
    if let Some(mut c) = long.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Before the end marker: nothing of the load left prepared. That
    // includes one whose COMMIT PREPARED the old primary acknowledged but
    // died before its standby had it: still prepared on the survivor.
    let port = control.port.load(Ordering::SeqCst);
    resolve_prepared(port, &mut prepared, 0);
    let left = run_sql(
        port,
        "postgres",
        "SELECT gid FROM pg_prepared_xacts WHERE gid LIKE 'p%'",
    )
    .unwrap_or_default();
    let mut again: VecDeque<(String, bool)> = left
        .lines()
        .map(|g| (g.to_string(), decided.get(g).copied().unwrap_or(true)))
        .collect();
    resolve_prepared(port, &mut again, 0);
}

/// COMMIT PREPARED or ROLLBACK PREPARED the oldest of `prepared` until at
/// most `keep` are left. One the server does not have (its PREPARE died
/// with a primary) is forgotten; one that fails otherwise (the server
/// gone) is kept for later, on whichever server the load is on by then.
fn resolve_prepared(port: u16, prepared: &mut VecDeque<(String, bool)>, keep: usize) {
    while prepared.len() > keep {
        let (gid, commit) = prepared.front().cloned().expect("not empty");
        let how = if commit { "COMMIT" } else { "ROLLBACK" };
        match run_sql(port, "postgres", &format!("{how} PREPARED '{gid}'")) {
            Ok(_) => {}
            Err(e) if e.contains("does not exist") => {}
            Err(_) => return,
        }
        prepared.pop_front();
    }
}

// ---------------------------------------------------------------- the proxy

/// What the proxy does to the bytes between a standby and its primary.
#[derive(Clone, Copy, PartialEq, Debug)]
enum ProxyMode {
    /// Everything passes.
    Pass = 0,
    /// Connections closed, new ones closed at once (the link is down).
    Down = 1,
    /// Nothing passes either way; connections stay open (a black hole).
    StallBoth = 2,
    /// Nothing passes from the primary to the standby.
    StallToStandby = 3,
    /// Nothing passes from the standby to the primary.
    StallToPrimary = 4,
    /// Everything passes, slowly (`slow_kbps`).
    Slow = 5,
}

struct ProxyShared {
    target: AtomicU16,
    mode: AtomicU8,
    slow_kbps: AtomicU64,
    stop: AtomicBool,
    /// Connections made, bytes passed: shown in the notes.
    connections: AtomicU64,
    bytes: AtomicU64,
    /// Both ends of every connection, to close them on a cut.
    conns: Mutex<Vec<TcpStream>>,
    /// The mid-pass trap: 0 disarmed; n > 0 holds the worker's n-th query
    /// of a sync pass (or a later one of the same pass) from the primary,
    /// until disarmed (see `Proxy::catch_mid_pass`).
    trap_query: AtomicU64,
    /// What the trap caught: which query of a pass, its text.
    caught: Mutex<Option<String>>,
    /// Since the trap was armed: the passes begun, the most queries one had.
    passes: AtomicU64,
    most_queries: AtomicU64,
}

impl ProxyShared {
    fn mode(&self) -> ProxyMode {
        match self.mode.load(Ordering::SeqCst) {
            1 => ProxyMode::Down,
            2 => ProxyMode::StallBoth,
            3 => ProxyMode::StallToStandby,
            4 => ProxyMode::StallToPrimary,
            5 => ProxyMode::Slow,
            _ => ProxyMode::Pass,
        }
    }
    fn close_all(&self) {
        for s in self.conns.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// A TCP proxy on a loopback port in front of a primary, in threads: a
/// standby's `primary_conninfo` names it, so its walreceiver and its sync
/// worker both go through it.
struct Proxy {
    port: u16,
    shared: Arc<ProxyShared>,
    thread: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking proxy");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(ProxyShared {
            target: AtomicU16::new(target),
            mode: AtomicU8::new(ProxyMode::Pass as u8),
            slow_kbps: AtomicU64::new(64),
            stop: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            conns: Mutex::new(Vec::new()),
            trap_query: AtomicU64::new(0),
            caught: Mutex::new(None),
            passes: AtomicU64::new(0),
            most_queries: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let thread = std::thread::spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                if sh.mode() == ProxyMode::Down {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let target = sh.target.load(Ordering::SeqCst);
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                ) else {
                    continue;
                };
                sh.conns.lock().unwrap().extend([c3, s3]);
                sh.connections.fetch_add(1, Ordering::SeqCst);
                let (a, b) = (sh.clone(), sh.clone());
                std::thread::spawn(move || pump(client, server, ProxyMode::StallToPrimary, &a));
                std::thread::spawn(move || pump(s2, c2, ProxyMode::StallToStandby, &b));
            }
            sh.close_all();
        });
        Proxy {
            port,
            shared,
            thread: Some(thread),
        }
    }
    fn set(&self, mode: ProxyMode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
        if mode == ProxyMode::Down {
            self.shared.close_all();
        }
    }
    /// Waits until the standby's worker is inside a sync pass, and holds it
    /// there: its `want`-th query of a pass (or a later one of the same
    /// pass) is held, not passed to the primary, so the worker waits for
    /// the answer with the pass half done. Every `step` without a pass
    /// that far, one query earlier is taken (down to the first, the slot
    /// list). Returns what was caught, with the passes seen meanwhile, or
    /// an Err saying so after `want` steps (the fault then strikes
    /// unaimed). `release` lets the held query go.
    fn catch_mid_pass(&self, want: u64, step: Duration) -> Result<String, String> {
        let sh = &self.shared;
        *sh.caught.lock().unwrap() = None;
        sh.passes.store(0, Ordering::SeqCst);
        sh.most_queries.store(0, Ordering::SeqCst);
        let want = want.max(1);
        sh.trap_query.store(want, Ordering::SeqCst);
        let began = Instant::now();
        let seen = || {
            format!(
                "{} passes begun meanwhile, at most {} queries in one",
                sh.passes.load(Ordering::SeqCst),
                sh.most_queries.load(Ordering::SeqCst)
            )
        };
        loop {
            if let Some(c) = sh.caught.lock().unwrap().clone() {
                return Ok(format!(
                    "{c} ({} ms after arming for query {want}; {})",
                    began.elapsed().as_millis(),
                    seen()
                ));
            }
            let steps = (began.elapsed().as_millis() / step.as_millis().max(1)) as u64;
            if steps >= want {
                self.release();
                return Err(format!(
                    "no pass caught within {} ms ({})",
                    began.elapsed().as_millis(),
                    seen()
                ));
            }
            sh.trap_query.store(want - steps, Ordering::SeqCst);
            sleep(Duration::from_millis(2));
        }
    }
    fn release(&self) {
        self.shared.trap_query.store(0, Ordering::SeqCst);
    }
    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.release();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.shared.close_all();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies `from` to `to` until either closes; `stalled_by` is the mode that
/// holds this direction (besides `StallBoth`).
fn pump(mut from: TcpStream, mut to: TcpStream, stalled_by: ProxyMode, sh: &ProxyShared) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 * 1024];
    let held = |m: ProxyMode| m == stalled_by || m == ProxyMode::StallBoth;
    // Toward the primary: which query of a sync pass this connection is at
    // (0: not in a pass). Only the worker sends these queries; each is one
    // simple-protocol Query message ('Q'), written whole before it waits.
    let to_primary = stalled_by == ProxyMode::StallToPrimary;
    let mut pass_query = 0u64;
    loop {
        // Not reading while held: the sender's socket buffer fills, as on a dead link.
        while held(sh.mode()) && !sh.stop.load(Ordering::SeqCst) {
            sleep(Duration::from_millis(10));
        }
        let slow = sh.mode() == ProxyMode::Slow;
        let want = if slow { 1024 } else { buf.len() };
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Read just before a stall: held here until it ends.
        while held(sh.mode()) && !sh.stop.load(Ordering::SeqCst) {
            sleep(Duration::from_millis(10));
        }
        if to_primary && n > 5 && buf[0] == b'Q' {
            let text = String::from_utf8_lossy(&buf[5..n]);
            if text.contains("wait_for_change") {
                // The long poll: between passes.
                pass_query = 0;
            } else if text.contains("slot_type = 'logical' AND NOT temporary") {
                // The slot list: a pass begins.
                pass_query = 1;
                sh.passes.fetch_add(1, Ordering::SeqCst);
            } else if pass_query > 0 {
                pass_query += 1;
            }
            sh.most_queries.fetch_max(pass_query, Ordering::SeqCst);
            let want = sh.trap_query.load(Ordering::SeqCst);
            if want > 0 && pass_query >= want {
                let mut caught = sh.caught.lock().unwrap();
                if caught.is_none() {
                    let q: String = text
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .chars()
                        .take(70)
                        .collect();
                    *caught = Some(format!(
                        "the worker held at query {pass_query} of a pass: {q}"
                    ));
                    drop(caught);
                    // Held until released: the worker waits for the answer.
                    while sh.trap_query.load(Ordering::SeqCst) > 0
                        && !sh.stop.load(Ordering::SeqCst)
                    {
                        sleep(Duration::from_millis(2));
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sh.bytes.fetch_add(n as u64, Ordering::SeqCst);
        if sh.mode() == ProxyMode::Slow {
            let kbps = sh.slow_kbps.load(Ordering::SeqCst).max(1);
            sleep(Duration::from_micros(n as u64 * 1_000_000 / (kbps * 1024)));
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

// ---------------------------------------------------------------- a scenario

const SLOTS: [(&str, Plugin); 3] = [
    ("recv", Plugin::TestDecoding),
    ("w2j", Plugin::Wal2json),
    ("tp", Plugin::TwoPhase),
];

fn run_scenario(seed: u64, k: u64, out: &mut Outcome) {
    let plan = Plan::new(seed, k);
    out.fault = plan.fault.name().to_string();
    out.timing = plan.timing();
    eprintln!(
        "torture: scenario {k} (seed {seed}): {}; {}",
        out.fault, out.timing
    );
    let dir = TestDir::new(&format!("torture-s{seed}-k{k}"));
    out.dir = dir.path.display().to_string();

    // Topology: a primary holding its consumers for both standbys.
    let primary = dir.primary("primary");
    let held_for = if sabotage("no_wait") {
        ""
    } else {
        "standby1, standby2"
    };
    primary.append_conf(&format!(
        "sync_logical_slot.standby_slot_names = '{held_for}'
logical_decoding_work_mem = 64kB
max_prepared_transactions = 10"
    ));
    if let Fault::QuorumFailover = plan.fault {
        // Consumers wait for one of the two standbys only.
        primary.append_conf("sync_logical_slot.standby_slots_min_confirmed = 1");
    }
    if has_output_plugin_libraries() {
        // Minor releases since August 2026 load only the output plugins listed.
        primary.append_conf("output_plugin_libraries = 'pgoutput, test_decoding, wal2json'");
    }
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    primary.sql("CREATE PUBLICATION pub FOR TABLE t");
    let standby1 = dir.standby("standby1", &primary);
    let standby2 = dir.standby("standby2", &primary);
    // Each standby reaches the primary through a proxy of its own: its
    // walreceiver and its worker (which uses the server's primary_conninfo).
    let proxies = [Proxy::start(primary.port), Proxy::start(primary.port)];
    for (s, p) in [(&standby1, &proxies[0]), (&standby2, &proxies[1])] {
        s.set_auto_conf(
            "primary_conninfo",
            &format!("host=127.0.0.1 port={} user=postgres", p.port),
        );
        // README set-up step 5: empty on standbys, so a promoted one holds nobody.
        s.append_conf("sync_logical_slot.standby_slot_names = ''");
        s.start();
    }
    let standbys = [&standby1, &standby2];
    // The physical slot of whoever will follow standby1 once it is
    // promoted, made now so that it keeps standby1's WAL from here on.
    match plan.fault {
        Fault::SwitchoverAndBack => {
            standby1.sql("SELECT pg_create_physical_replication_slot('primary', true)");
        }
        Fault::TwoFailovers => {
            standby1.sql("SELECT pg_create_physical_replication_slot('standby2', true)");
        }
        _ => {}
    }

    // Consumers.
    let subscriber = subscriber_of(&dir, &primary);
    subscriber.poll_query_until(
        "SELECT count(*) = count(*) FILTER (WHERE srsubstate = 'r') FROM pg_subscription_rel",
        "t",
    );
    let mut consumers = Vec::new();
    let slots: Vec<(&str, Plugin)> = SLOTS
        .into_iter()
        .filter(|(_, p)| *p != Plugin::Wal2json || wal2json_available())
        .collect();
    if slots.len() < SLOTS.len() {
        out.notes
            .push("no wal2json.so in this PostgreSQL: its consumer is left out".into());
    }
    for (slot, plugin) in slots {
        let at = if plugin == Plugin::TwoPhase {
            // As its consumer would make it: pg_recvlogical --create-slot --two-phase.
            let mut cmd = pg_command("pg_recvlogical");
            cmd.args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
                .args(["-p", &primary.port.to_string(), "-S", slot])
                .args(["-P", plugin.name(), "--create-slot", "--two-phase"]);
            let done = cmd.output().expect("pg_recvlogical --create-slot");
            assert!(
                done.status.success(),
                "pg_recvlogical --create-slot --two-phase: {}",
                String::from_utf8_lossy(&done.stderr)
            );
            primary.sql(&format!(
                "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}' AND two_phase"
            ))
        } else {
            primary.sql(&format!(
                "SELECT lsn FROM pg_create_logical_replication_slot('{slot}', '{}')",
                plugin.name()
            ))
        };
        consumers.push(Consumer::start(
            &dir.path,
            primary.port,
            slot,
            plugin,
            lsn(&at),
        ));
    }
    // Every copy ready on both standbys before the load: rows, a
    // running-xacts record, and the consumers confirm past it.
    primary.sql("INSERT INTO t SELECT g, 'setup' FROM generate_series(1, 10) g");
    primary.sql("CHECKPOINT");
    primary.sql("INSERT INTO t VALUES (11, 'setup')");
    for s in standbys {
        if let Err(e) = poll(
            s,
            "SELECT count(*) FROM sync_logical_slot_status WHERE ready",
            &(consumers.len() + 1).to_string(),
            DEADLINE,
        ) {
            panic!(
                "set-up: the copies never became ready on {}: {e}\n{}",
                s.name,
                s.sql("SELECT slot_name, state, last_error FROM sync_logical_slot_status")
            );
        }
    }

    if sabotage("no_wait") {
        // Sabotage, made to bite: standby1 lags on a slow link while the
        // consumers, held for nobody, read what it does not have yet.
        proxies[0].shared.slow_kbps.store(32, Ordering::SeqCst);
        proxies[0].set(ProxyMode::Slow);
    }

    // Load and the fault.
    let mut load = Load::start(primary.port, subscriber.port, 1000, &plan);
    let lag = plan.consumer_lag_ms.min(plan.fault_after_ms);
    let lead = plan
        .held_prepared
        .map_or(0, |_| plan.held_lead_ms.min(plan.fault_after_ms - lag));
    sleep(Duration::from_millis(plan.fault_after_ms - lag - lead));
    if plan.held_prepared.is_some() {
        // Prepared before the fault, resolved on the survivor after the
        // last failover: the fault and the failover fall between its
        // PREPARE and its COMMIT PREPARED (or ROLLBACK PREPARED).
        let held = primary.try_sql(&format!(
            "BEGIN; INSERT INTO t VALUES ({HELD_ID}, 'held'), ({}, 'held'); PREPARE TRANSACTION 'held'",
            HELD_ID + 1
        ));
        if let Err(e) = held {
            out.notes.push(format!("'held' not prepared: {e}"));
        }
        sleep(Duration::from_millis(lead));
    }
    if lag > 0 {
        for c in &consumers {
            c.control.pause();
        }
        sleep(Duration::from_millis(lag));
    }
    let mut reinitialized: BTreeMap<&str, usize> = BTreeMap::new();
    let hit = if plan.standby == 1 {
        &standby1
    } else {
        &standby2
    };
    // Who is promoted last, where the checks run.
    let mut survivor_is_standby2 = matches!(plan.fault, Fault::TwoFailovers);
    match plan.fault {
        Fault::PrimaryKill9 => primary.kill9(),
        Fault::QuorumFailover => {
            // One standby falls behind, the consumers (held for either)
            // read on; then the primary dies and the standby that received
            // the most WAL is promoted, as an HA manager picks it.
            proxies[plan.standby as usize - 1].set(ProxyMode::Down);
            for c in &consumers {
                c.control.resume_on(primary.port);
            }
            sleep(Duration::from_millis(plan.down_ms));
            if lag > 0 {
                for c in &consumers {
                    c.control.pause();
                }
                sleep(Duration::from_millis(lag));
            }
            primary.kill9();
            let received = |s: &Node| {
                s.try_sql("SELECT pg_last_wal_receive_lsn()")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map_or(0, |v| lsn(&v))
            };
            let (at1, at2) = (received(&standby1), received(&standby2));
            survivor_is_standby2 = at2 > at1;
            out.notes.push(format!(
                "quorum: standby1 received {}, standby2 {}: standby{} promoted",
                lsn_text(at1),
                lsn_text(at2),
                if survivor_is_standby2 { 2 } else { 1 }
            ));
        }
        Fault::StandbyRestartWhilePrimaryDown => {
            primary.kill9();
            sleep(Duration::from_millis(plan.down_ms));
            standby1.stop();
            standby1.start();
            match standby1.try_sql(
                "SELECT ready || ' ' || coalesce(verdict_source, '-') || ' ' || coalesce(array_to_string(not_ready, ','), '')
                   FROM sync_logical_slot_readiness()",
            ) {
                Ok(v) => out.notes.push(format!("standby1 after its restart: ready/source {v}")),
                Err(e) => out.notes.push(format!("standby1 readiness after restart: {e}")),
            }
        }
        Fault::TwoFailovers => {
            // standby2 falls behind standby1 first (its link cut), as an HA
            // manager promotes the standby that has the most WAL: standby2
            // can follow standby1's new timeline only from behind its fork.
            proxies[1].set(ProxyMode::Down);
            sleep(Duration::from_millis(300));
            let behind = standby2.sql("SELECT pg_last_wal_receive_lsn()");
            if let Err(e) = poll(
                &standby1,
                &format!("SELECT pg_last_wal_receive_lsn() >= '{behind}'::pg_lsn"),
                "t",
                DEADLINE,
            ) {
                panic!("standby1 never caught up with standby2: {e}");
            }
            primary.kill9();
            let hold = if sabotage("no_wait") { "" } else { "standby2" };
            failover(&standby1, hold, &load, &consumers, &subscriber, out);
            let since = standby2.sql("SELECT now()");
            // Re-point standby2 to the promoted standby1 and restart it.
            standby2.set_auto_conf(
                "primary_conninfo",
                &format!("host=127.0.0.1 port={} user=postgres", standby1.port),
            );
            standby2.stop();
            standby2.start();
            let moved = poll(
                &standby2,
                &format!(
                    "SELECT coalesce(max(verified_at) > '{since}'::timestamptz, false) FROM sync_logical_slot_status"
                ),
                "t",
                STUCK_BOUND,
            )
            .and_then(|_| poll(&standby2, "SELECT sync_logical_slot_ready()", "t", STUCK_BOUND));
            if let Err(e) = moved {
                out.stuck += 1;
                out.problem(format!("stuck: standby2 following standby1: {e}"));
            }
            sleep(Duration::from_millis(plan.final_after_ms));
            if lag > 0 {
                for c in &consumers {
                    c.control.pause();
                }
                sleep(Duration::from_millis(lag));
            }
            standby1.kill9();
        }
        Fault::WorkerKill9
        | Fault::MidPassWorkerKill9
        | Fault::MidPassProxyCut
        | Fault::StandbyKill9Restart
        | Fault::PrimarySigstop
        | Fault::ProxyCut
        | Fault::ProxyStall
        | Fault::ProxySlow
        | Fault::SwitchoverAndBack => {
            let since = standby1.sql("SELECT now()");
            // The primary survives this fault: the consumers read again.
            let resume = || {
                for c in &consumers {
                    c.control.resume_on(primary.port);
                }
            };
            match plan.fault {
                Fault::WorkerKill9 => {
                    let pid = hit.worker_pid();
                    kill("-9", &pid);
                    *reinitialized.entry(hit_name(plan.standby)).or_default() += 1;
                    resume();
                }
                Fault::MidPassWorkerKill9 | Fault::MidPassProxyCut => {
                    // Aimed: the proxy holds one of the worker's queries of
                    // a pass, so the fault strikes with the pass half done.
                    let proxy = &proxies[plan.standby as usize - 1];
                    let pid = hit.worker_pid();
                    let caught = proxy.catch_mid_pass(plan.pass_query, Duration::from_secs(3));
                    out.notes.push(match caught {
                        Ok(c) => format!("mid-pass: {c}"),
                        Err(e) => format!("mid-pass: {e}: the fault struck unaimed"),
                    });
                    if let Fault::MidPassWorkerKill9 = plan.fault {
                        kill("-9", &pid);
                        *reinitialized.entry(hit_name(plan.standby)).or_default() += 1;
                        proxy.release();
                        resume();
                    } else {
                        proxy.set(ProxyMode::Down);
                        proxy.release();
                        resume();
                        sleep(Duration::from_millis(plan.down_ms));
                        proxy.set(ProxyMode::Pass);
                    }
                }
                Fault::StandbyKill9Restart => {
                    hit.kill9();
                    resume();
                    sleep(Duration::from_millis(plan.down_ms));
                    hit.start();
                }
                Fault::ProxyCut | Fault::ProxyStall | Fault::ProxySlow => {
                    let proxy = &proxies[plan.standby as usize - 1];
                    proxy
                        .shared
                        .slow_kbps
                        .store(plan.slow_kbps, Ordering::SeqCst);
                    proxy.set(match plan.fault {
                        Fault::ProxyCut => ProxyMode::Down,
                        Fault::ProxySlow => ProxyMode::Slow,
                        _ => plan.stall,
                    });
                    resume();
                    sleep(Duration::from_millis(plan.down_ms));
                    proxy.set(ProxyMode::Pass);
                }
                Fault::SwitchoverAndBack => {
                    // To standby1: it holds its consumers for the old
                    // primary, which follows it through slot "primary".
                    primary.stop();
                    let hold = if sabotage("no_wait") { "" } else { "primary" };
                    failover(&standby1, hold, &load, &consumers, &subscriber, out);
                    // As a standby it holds nobody (README set-up step 5).
                    primary.append_conf("sync_logical_slot.standby_slot_names = ''");
                    primary.follow(&standby1, "primary");
                    primary.start();
                    sleep(Duration::from_millis(plan.down_ms));
                    // And back, once the old primary's copies are ready.
                    if let Err(e) = poll(
                        &primary,
                        "SELECT sync_logical_slot_ready()",
                        "t",
                        STUCK_BOUND,
                    ) {
                        out.stuck += 1;
                        out.problem(format!("stuck: the old primary following standby1: {e}"));
                    }
                    standby1.stop();
                    failover(&primary, held_for, &load, &consumers, &subscriber, out);
                    standby1.append_conf("sync_logical_slot.standby_slot_names = ''");
                    standby1.follow(&primary, "standby1");
                    standby1.start();
                }
                _ => {
                    let pids = all_pids(&primary);
                    for p in &pids {
                        kill("-STOP", p);
                    }
                    sleep(Duration::from_millis(plan.down_ms));
                    for p in &pids {
                        kill("-CONT", p);
                    }
                    resume();
                }
            }
            // Not stuck: each standby's worker verifies again, and the
            // copies are ready again, within the bound.
            for s in standbys {
                let moved = poll(
                    s,
                    &format!(
                        "SELECT coalesce(max(verified_at) > '{since}'::timestamptz, false) FROM sync_logical_slot_status"
                    ),
                    "t",
                    STUCK_BOUND,
                )
                .and_then(|_| {
                    poll(
                        s,
                        "SELECT sync_logical_slot_ready()",
                        "t",
                        STUCK_BOUND,
                    )
                });
                if let Err(e) = moved {
                    out.stuck += 1;
                    out.problem(format!("stuck: {} after the fault: {e}", s.name));
                }
            }
            sleep(Duration::from_millis(plan.final_after_ms));
            if lag > 0 {
                // Behind again when the primary dies.
                for c in &consumers {
                    c.control.pause();
                }
                sleep(Duration::from_millis(lag));
            }
            primary.kill9();
        }
    }

    let survivor = if survivor_is_standby2 {
        &standby2
    } else {
        &standby1
    };
    failover(survivor, "", &load, &consumers, &subscriber, out);
    if let Some(commit) = plan.held_prepared {
        let how = if commit { "COMMIT" } else { "ROLLBACK" };
        let done = survivor.try_sql(&format!("{how} PREPARED 'held'"));
        out.notes.push(format!(
            "'held': {how} PREPARED on {}: {}",
            survivor.name,
            match done {
                Ok(_) => "done".to_string(),
                Err(e) => e.lines().next().unwrap_or("").to_string(),
            }
        ));
    }
    sleep(Duration::from_millis(plan.after_failover_ms));
    load.stop();

    // The end: a marker row; every consumer must get to it.
    survivor.sql("INSERT INTO t VALUES (2000000000, 'end')");
    let end = lsn(&survivor.sql("SELECT pg_current_wal_insert_lsn()"));
    for c in &consumers {
        let deadline = Instant::now() + STUCK_BOUND;
        while c.position() < end && Instant::now() < deadline {
            sleep(Duration::from_millis(100));
        }
        if c.position() < end {
            out.stuck += 1;
            out.problem(format!(
                "stuck: consumer {} at {}, not at the end {} after {STUCK_BOUND:?}",
                c.slot,
                lsn_text(c.position()),
                lsn_text(end)
            ));
        }
    }
    for c in consumers.iter_mut() {
        c.stop();
    }
    if let Err(e) = poll(
        &subscriber,
        "SELECT count(*) FROM t WHERE id = 2000000000",
        "1",
        STUCK_BOUND,
    ) {
        out.stuck += 1;
        out.problem(format!("stuck: the subscription: {e}"));
    }

    // Exactly once, per consumer, against the surviving timeline.
    let expected: BTreeSet<i64> = table_ids(survivor, "postgres").into_iter().collect();
    let mut checks: Vec<(String, Vec<i64>)> = consumers
        .iter()
        .map(|c| {
            let r = c.received.lock().unwrap();
            out.notes.push(format!(
                "{}: {} segments, {} dropped",
                c.slot, r.segments, r.dropped_segments
            ));
            if c.plugin == Plugin::TwoPhase {
                let [p, cp, rp] = r.two_phase_messages;
                out.notes.push(format!(
                    "{}: {p} PREPARE TRANSACTION, {cp} COMMIT PREPARED, {rp} ROLLBACK PREPARED kept; still prepared at the end: {:?}",
                    c.slot,
                    r.prepared.keys().collect::<Vec<_>>()
                ));
            }
            (
                format!("pg_recvlogical {}", c.plugin.label()),
                r.ids.clone(),
            )
        })
        .collect();
    checks.push((
        "subscription (pgoutput)".to_string(),
        table_ids(&subscriber, "postgres"),
    ));
    for (who, got) in checks {
        let (lost, dup, phantom, detail) = compare(&got, &expected);
        out.lost += lost;
        out.duplicated += dup;
        out.phantom += phantom;
        if lost + dup + phantom > 0 {
            out.problem(format!("{who}: {detail}"));
        } else {
            out.notes
                .push(format!("{who}: {} rows exactly once", got.len()));
        }
    }

    // No crash loop, pg_wal bounded.
    for node in [&primary, &standby1, &standby2] {
        let log = fs::read_to_string(&node.logfile).unwrap_or_default();
        let reinit = count(&log, "all server processes terminated; reinitializing");
        let allowed = reinitialized.get(node.name.as_str()).copied().unwrap_or(0);
        if reinit > allowed || log.contains("PANIC:") {
            out.crash_loops += 1;
            out.problem(format!(
                "crash loop: {} reinitialized {reinit} times ({allowed} explained){}",
                node.name,
                if log.contains("PANIC:") {
                    ", PANIC"
                } else {
                    ""
                }
            ));
        }
    }
    let ddl = survivor
        .try_sql("SELECT count(*) FROM t WHERE extra = 8")
        .map(|n| format!("{n} rows inserted after the ADD COLUMN"))
        .unwrap_or_else(|_| "no ADD COLUMN on the survivor (its moment came after the load, or it died with the primary)".into());
    out.notes.push(format!("DDL: {ddl}"));
    for (i, p) in proxies.iter().enumerate() {
        out.notes.push(format!(
            "proxy of standby{}: {} connections, {} kB",
            i + 1,
            p.shared.connections.load(Ordering::SeqCst),
            p.shared.bytes.load(Ordering::SeqCst) / 1024
        ));
    }
    for s in standbys {
        let bytes = dir_bytes(&s.datadir().join("pg_wal"));
        out.notes
            .push(format!("{} pg_wal {} MB", s.name, bytes / (1 << 20)));
        if bytes > WAL_BOUND_BYTES {
            out.wal_over += 1;
            out.problem(format!("{} pg_wal is {bytes} bytes", s.name));
        }
    }
    if standby2.is_running() {
        // Still following the dead primary; it must not be crash-looping.
        let _ = standby2.try_sql("SELECT 1");
    }
    if out.failed() {
        // Keep the directory (TestDir keeps it when the thread panics).
        panic!("scenario {k} failed");
    }
}

/// Fails over (or switches over) to `to`, whose upstream is gone: nobody
/// reads or writes until its copies are checked, then everyone (load,
/// consumers, the subscription) goes on there.
fn failover(
    to: &Node,
    hold_for: &str,
    load: &Load,
    consumers: &[Consumer],
    subscriber: &Node,
    out: &mut Outcome,
) {
    load.control.pause();
    for c in consumers {
        c.control.pause();
    }
    let ready = to
        .try_sql("SELECT sync_logical_slot_wait_ready('10s')")
        .unwrap_or_else(|e| e);
    let source = to
        .try_sql("SELECT verdict_source FROM sync_logical_slot_readiness()")
        .unwrap_or_default();
    out.notes
        .push(format!("{} ready at failover: {ready} ({source})", to.name));
    to.promote();
    if let Err(e) = poll(to, "SELECT pg_is_in_recovery()", "f", DEADLINE) {
        panic!("{} did not leave recovery: {e}", to.name);
    }
    // Everything `to` had of the old timeline, exactly: where its new
    // timeline begins (the last line of the newest history file). No
    // consumer may have confirmed past it (its later WAL is another
    // timeline's, which the consumer would skip up to its position).
    // pg_last_wal_receive_lsn() is not that: after a restart with no
    // primary it is the start of the segment replay stopped in.
    let history = to.try_sql(
        "SELECT pg_read_file('pg_wal/' || substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8) || '.history')",
    );
    let received = history
        .as_ref()
        .ok()
        .and_then(|h| {
            h.lines()
                .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
                .next_back()
        })
        .map(|v| lsn(&v));
    if received.is_none() {
        out.problem(format!(
            "{}: where its new timeline begins is unknown ({history:?}): no consumer position could be checked against it",
            to.name
        ));
    }
    if let Some(received) = received {
        for c in consumers {
            if c.position() > received {
                out.overpromised += 1;
                out.problem(format!(
                    "overpromised: consumer {} confirmed {}, past all {} had of the old timeline ({})",
                    c.slot,
                    lsn_text(c.position()),
                    to.name,
                    lsn_text(received)
                ));
            }
        }
    }
    if ready == "t" {
        for c in consumers {
            check_promoted_copy(to, c, out);
        }
    } else {
        out.problem(format!(
            "{} not ready at failover ({ready}): its copies were not checked",
            to.name
        ));
    }
    if !hold_for.is_empty() {
        // Only now: checking the copies decodes on `to`, which its
        // standby_slot_names would hold until those standbys follow it.
        to.append_conf(&format!(
            "sync_logical_slot.standby_slot_names = '{hold_for}'"
        ));
        to.reload();
        if let Err(e) = poll(
            to,
            "SHOW sync_logical_slot.standby_slot_names",
            hold_for,
            DEADLINE,
        ) {
            panic!("{} never took standby_slot_names: {e}", to.name);
        }
    }
    subscriber.sql(&format!(
        "ALTER SUBSCRIPTION sub CONNECTION '{}'",
        to.conninfo("postgres")
    ));
    if sabotage("skip") {
        // Sabotage: the consumers forget their position and start from now.
        let now = lsn(&to.sql("SELECT pg_current_wal_insert_lsn()"));
        for c in consumers {
            c.received.lock().unwrap().position = now;
        }
    }
    if sabotage("repeat") {
        // Sabotage: the consumers apply their last batch again.
        for c in consumers {
            let mut r = c.received.lock().unwrap();
            let again = r.last_kept.clone();
            r.ids.extend(again);
        }
    }
    for c in consumers {
        c.control.resume_on(to.port);
    }
    load.control.resume_on(to.port);
}

/// Whether wal2json is installed (Debian: postgresql-NN-wal2json).
fn wal2json_available() -> bool {
    std::process::Command::new(bindir().join("pg_config"))
        .arg("--pkglibdir")
        .output()
        .map(|o| {
            Path::new(String::from_utf8_lossy(&o.stdout).trim())
                .join("wal2json.so")
                .exists()
        })
        .unwrap_or(false)
}

/// Whether this server has the `output_plugin_libraries` setting (the
/// minor releases of August 2026 and later).
fn has_output_plugin_libraries() -> bool {
    std::process::Command::new(bindir().join("postgres"))
        .arg("--describe-config")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("output_plugin_libraries"))
        .unwrap_or(false)
}

fn hit_name(standby: u8) -> &'static str {
    if standby == 1 {
        "standby1"
    } else {
        "standby2"
    }
}

/// Right after the promotion: the copy of `c`'s slot, moved to the
/// consumer's own position, decodes exactly the surviving rows the consumer
/// does not have. Anything else means the ready copy overpromised.
fn check_promoted_copy(promoted: &Node, c: &Consumer, out: &mut Outcome) {
    let position = c.position();
    let copy = promoted.sql(&format!(
        "SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{}'",
        c.slot
    ));
    if copy.is_empty() {
        out.overpromised += 1;
        out.problem(format!(
            "overpromised: no copy of {} after promotion",
            c.slot
        ));
        return;
    }
    let copy = lsn(&copy);
    if copy > position {
        out.overpromised += 1;
        out.problem(format!(
            "overpromised: the copy of {} stands at {}, past its consumer's {}",
            c.slot,
            lsn_text(copy),
            lsn_text(position)
        ));
        return;
    }
    if copy < position {
        promoted.sql(&format!(
            "SELECT pg_replication_slot_advance('{}', '{}')",
            c.slot,
            lsn_text(position)
        ));
    }
    let decoded = match promoted.try_sql(&format!(
        "SET statement_timeout = '60s'; SELECT data FROM pg_logical_slot_peek_changes('{}', NULL, NULL{})",
        c.slot,
        c.plugin.options().1
    )) {
        Ok(d) => d,
        Err(e) if e.contains("statement timeout") => {
            out.stuck += 1;
            out.problem(format!(
                "stuck: decoding the promoted copy of {} took over 60 s",
                c.slot
            ));
            return;
        }
        Err(e) => {
            out.overpromised += 1;
            out.problem(format!(
                "overpromised: decoding the promoted copy of {} failed: {e}",
                c.slot
            ));
            return;
        }
    };
    // From what the consumer holds: its rows, and (two-phase) the
    // transactions it has prepared, whose COMMIT PREPARED may come now.
    let mut prepared = c.received.lock().unwrap().prepared.clone();
    if c.plugin == Plugin::TwoPhase {
        out.notes.push(format!(
            "{} held {} prepared transactions at the failover ({})",
            c.slot,
            prepared.len(),
            prepared.keys().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    let (got, _) = c.plugin.apply(&decoded, &mut prepared);
    let have: BTreeSet<i64> = c.ids().into_iter().collect();
    let want: BTreeSet<i64> = table_ids(promoted, "postgres")
        .into_iter()
        .filter(|id| !have.contains(id))
        .collect();
    let (lost, dup, phantom, detail) = compare(&got, &want);
    if lost + dup + phantom > 0 {
        out.overpromised += 1;
        out.problem(format!(
            "overpromised: decoding the promoted copy of {} from {} (copy was at {}): {detail}",
            c.slot,
            lsn_text(position),
            lsn_text(copy)
        ));
    } else {
        out.notes.push(format!(
            "copy of {}: {} rows after its consumer's position, as expected",
            c.slot,
            got.len()
        ));
    }
}

// ---------------------------------------------------------------- the run

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn torture() {
    let seed = env_u64("TORTURE_SEED").unwrap_or(1);
    let runs = env_u64("TORTURE_RUNS").unwrap_or(3);
    let only = env_u64("TORTURE_ONLY");
    let ks: Vec<u64> = match only {
        Some(k) => vec![k],
        None => (1..=runs).collect(),
    };
    let mut outcomes = Vec::new();
    for k in ks {
        let began = Instant::now();
        let mut out = Outcome {
            k,
            ..Outcome::default()
        };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_scenario(seed, k, &mut out)
        }));
        out.secs = began.elapsed().as_secs();
        if let Err(e) = result {
            if !out.failed() {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let first = msg.lines().next().unwrap_or("").to_string();
                out.problem(format!("error: {first}"));
            }
            eprintln!(
                "torture: scenario {k} FAILED; logs kept in {}; replay: scripts/torture --seed {seed} --only {k}",
                out.dir
            );
        }
        eprintln!(
            "torture: scenario {k}: {} in {} s; {}",
            if out.failed() { "FAIL" } else { "pass" },
            out.secs,
            out.notes.join("; ")
        );
        outcomes.push(out);
    }

    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let summary = format!(
        "torture runs={} seed={seed} lost={} duplicated={} phantom={} overpromised={} stuck={}",
        outcomes.len(),
        sum(|o| o.lost),
        sum(|o| o.duplicated),
        sum(|o| o.phantom),
        sum(|o| o.overpromised),
        sum(|o| o.stuck),
    );
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failed()).collect();
    let mut table = String::from("| scenario | fault | timing | result |\n|---|---|---|---|\n");
    for o in &outcomes {
        let result = if o.failed() {
            format!("FAIL ({} s): {}", o.secs, o.problems.join("; "))
        } else {
            format!("pass ({} s)", o.secs)
        };
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} |",
            o.k,
            o.fault,
            o.timing,
            result.replace('|', "/")
        );
    }
    println!("{summary}");
    println!("{table}");
    for o in &failed {
        println!(
            "failed: scenario {} (seed {seed}): {}; logs in {}; replay: scripts/torture --seed {seed} --only {}",
            o.k,
            o.problems.join("; "),
            o.dir,
            o.k
        );
    }
    if let Ok(path) = std::env::var("TORTURE_REPORT") {
        write_report(
            Path::new(&path),
            &summary,
            &table,
            failed.len(),
            outcomes.len(),
        );
    }
    assert!(
        failed.is_empty(),
        "{} of {} torture scenarios failed (seed {seed})",
        failed.len(),
        outcomes.len()
    );
}

fn write_report(path: &Path, summary: &str, table: &str, failed: usize, runs: usize) {
    let command = std::env::var("TORTURE_COMMAND").unwrap_or_else(|_| "scripts/torture".into());
    let pg = std::process::Command::new(bindir().join("pg_config"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let text = format!(
        "# Reliability: the torture harness\n\n\
         `scripts/torture` (tests/torture.rs) runs randomized failover scenarios,\n\
         reproducible from a seed: a primary and two standbys (physical slots,\n\
         hot_standby_feedback, `standby_slot_names` naming both, each behind a\n\
         TCP proxy that can cut, stall or slow its link), a write load\n\
         (one-row transactions, subtransactions, two-phase transactions committed\n\
         or rolled back a few transactions after their PREPARE, a transaction\n\
         held open across checkpoints, one transaction spilled past\n\
         `logical_decoding_work_mem`, ALTER TABLE ADD COLUMN on the published\n\
         table and CREATE TABLE; in most scenarios a transaction prepared before\n\
         the fault and resolved after the failover), and four consumers that track\n\
         their own position (pg_recvlogical with test_decoding, with test_decoding\n\
         on a two-phase slot, with wal2json, and a subscription on a separate\n\
         node). Each scenario injects one of thirteen faults (kills, SIGSTOP, a\n\
         cut, stalled or slow link, a switchover and back, two successive\n\
         failovers, a quorum failover with `standby_slots_min_confirmed = 1` to\n\
         the most advanced standby, a worker killed or its link cut inside a sync\n\
         pass), fails over (to standby1; to standby2 after two failovers, or when\n\
         the quorum failover finds it ahead) and checks that every consumer got\n\
         every surviving row exactly once after its own position (a prepared\n\
         transaction's rows at its COMMIT PREPARED, never a rolled-back one's),\n\
         that no consumer confirmed past the WAL the promoted standby had, that a\n\
         copy said ready decodes exactly that, that nothing is stuck or\n\
         crash-looping, and that the standbys' pg_wal stays bounded. See the\n\
         comment at the top of tests/torture.rs for what each column means.\n\
         \n\
         Produced by:\n\n```\n{command}\n```\n\n\
         on {pg}: {runs} scenarios, {failed} failed.\n\n```\n{summary}\n```\n\n{table}\n\
         A failing scenario is replayed with `scripts/torture --seed S --only K`.\n"
    );
    fs::write(path, text).expect("write the report");
}
