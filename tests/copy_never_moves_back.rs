//! # A copy never moves backwards, even when a session advances it during a pass
//!
//! ```text
//!  primary  --streaming, slot "standby1"-->  standby1
//!    slot s1                                   copy of s1
//!    mover: INSERT, then                       advancer: sync_logical_slot_advance('s1',
//!      pg_replication_slot_advance('s1',                   pg_last_wal_receive_lsn()), back to back
//!        pg_current_wal_lsn()), back to back   sampler:  the copy's positions every ~1 ms
//!      (and a CHECKPOINT every 100 ms)
//! ```
//! The worker's pass reads the copy, plans a target, then acquires the slot
//! and writes. Meanwhile a session's `sync_logical_slot_advance()` may move the
//! copy's `confirmed_flush_lsn` further; the pass's write must keep that (docs/design.md
//! invariant 1). For 20 s the three loops run at once, each a long-lived
//! server-side procedure: no sampled position of the copy (pg_replication_slots'
//! `restart_lsn`, `confirmed_flush_lsn`, `catalog_xmin`, and the status view's
//! `local_*` columns) ever decreases, nor does the copy's `confirmed_flush_lsn`
//! ever fall below what the advancer's last call returned. Afterwards the copy
//! stands where the primary's slot stands.
//!
//! The CHECKPOINTs make the primary's slot move its `restart_lsn` now and then,
//! so that some passes fetch a decoding snapshot between reading the copy and
//! writing it: the window in which a session's advance lands.

mod common;
use common::*;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

/// How long the three loops run.
const SECONDS: u32 = 20;
/// How often the mover checkpoints (without it, the race is rarely hit).
const CHECKPOINT_MS: u32 = 100;

/// On the primary: moves every logical slot to the end of the WAL, one INSERT
/// at a time; a CHECKPOINT every `checkpoint_ms` (its running-xacts record lets
/// the slots' restart_lsn and catalog_xmin move too).
const MOVER: &str = r#"
CREATE PROCEDURE move_slots(seconds float8, checkpoint_ms int,
                            INOUT moves int DEFAULT 0, INOUT checkpoints int DEFAULT 0)
LANGUAGE plpgsql AS $$
DECLARE
  stop timestamptz := clock_timestamp() + make_interval(secs => seconds);
  next_checkpoint timestamptz := clock_timestamp();
  s name;
BEGIN
  WHILE clock_timestamp() < stop LOOP
    INSERT INTO t (v) VALUES (moves);
    COMMIT;
    IF clock_timestamp() >= next_checkpoint THEN
      CHECKPOINT;
      checkpoints := checkpoints + 1;
      next_checkpoint := clock_timestamp() + make_interval(secs => checkpoint_ms / 1000.0);
    END IF;
    FOR s IN SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical' ORDER BY 1 LOOP
      PERFORM pg_replication_slot_advance(s, pg_current_wal_lsn());
    END LOOP;
    COMMIT;
    moves := moves + 1;
  END LOOP;
END $$"#;

/// On the standby: advances every persistent copy to the received WAL, back to
/// back. Before each call it checks that the copy has kept what the previous
/// call returned (the position the copy held when that call ended).
const ADVANCER: &str = r#"
CREATE PROCEDURE advance_copies(seconds float8,
                                INOUT calls int DEFAULT 0, INOUT refused int DEFAULT 0,
                                INOUT backwards int DEFAULT 0, INOUT first_backwards text DEFAULT NULL,
                                INOUT first_refusal text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  stop timestamptz := clock_timestamp() + make_interval(secs => seconds);
  returned jsonb := '{}';
  r record;
  got pg_lsn;
BEGIN
  WHILE clock_timestamp() < stop LOOP
    FOR r IN SELECT slot_name::text AS name, confirmed_flush_lsn FROM pg_replication_slots
              WHERE slot_type = 'logical' AND NOT temporary ORDER BY 1 LOOP
      IF (returned ->> r.name)::pg_lsn > r.confirmed_flush_lsn THEN
        backwards := backwards + 1;
        first_backwards := coalesce(first_backwards, format(
          '%s: confirmed_flush_lsn %s after sync_logical_slot_advance() returned %s (call %s)',
          r.name, r.confirmed_flush_lsn, returned ->> r.name, calls));
      END IF;
      BEGIN
        got := sync_logical_slot_advance(r.name, pg_last_wal_receive_lsn());
        returned := returned || jsonb_build_object(r.name, got::text);
      EXCEPTION WHEN OTHERS THEN
        -- The worker holds the slot right now: not this test's concern.
        refused := refused + 1;
        first_refusal := coalesce(first_refusal, SQLERRM);
      END;
      calls := calls + 1;
    END LOOP;
    COMMIT;
  END LOOP;
END $$"#;

/// On the standby: samples every copy's positions about once a millisecond and
/// counts the values that went down (and, as a sign of life, those that went up).
const SAMPLER: &str = r#"
CREATE PROCEDURE sample_copies(seconds float8,
                               INOUT samples int DEFAULT 0, INOUT rises int DEFAULT 0,
                               INOUT decreases int DEFAULT 0, INOUT first_decrease text DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
  stop timestamptz := clock_timestamp() + make_interval(secs => seconds);
  seen jsonb := '{}';
  r record;
  before numeric;
BEGIN
  WHILE clock_timestamp() < stop LOOP
    FOR r IN
      SELECT s.slot_name || '.' || c.k AS key, c.k LIKE '%lsn' AS is_lsn, c.v
        FROM pg_replication_slots s
        LEFT JOIN sync_logical_slot_status st ON st.slot_name = s.slot_name
        CROSS JOIN LATERAL (VALUES
          ('restart_lsn', s.restart_lsn - '0/0'),
          ('confirmed_flush_lsn', s.confirmed_flush_lsn - '0/0'),
          ('catalog_xmin', s.catalog_xmin::text::numeric),
          ('local_restart_lsn', st.local_restart_lsn - '0/0'),
          ('local_confirmed_flush_lsn', st.local_confirmed_flush_lsn - '0/0'),
          ('local_catalog_xmin', st.local_catalog_xmin::text::numeric)) AS c(k, v)
       WHERE s.slot_type = 'logical' AND c.v IS NOT NULL
    LOOP
      before := (seen ->> r.key)::numeric;
      IF before > r.v THEN
        decreases := decreases + 1;
        first_decrease := coalesce(first_decrease, format('%s went from %s to %s (sample %s)',
          r.key,
          CASE WHEN r.is_lsn THEN ('0/0'::pg_lsn + before)::text ELSE before::text END,
          CASE WHEN r.is_lsn THEN ('0/0'::pg_lsn + r.v)::text ELSE r.v::text END,
          samples));
      ELSIF before < r.v THEN
        rises := rises + 1;
      END IF;
      seen := seen || jsonb_build_object(r.key, r.v);
    END LOOP;
    samples := samples + 1;
    COMMIT;
    PERFORM pg_sleep(0.001);
  END LOOP;
END $$"#;

#[test]
fn a_session_advance_during_a_pass_is_never_undone() {
    let dir = TestDir::new("copy_never_moves_back");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE TABLE t (id bigserial PRIMARY KEY, v int)");
    for procedure in [MOVER, ADVANCER, SAMPLER] {
        primary.sql(procedure);
    }
    let standby = dir.standby("standby1", &primary);
    standby.start();

    // s1 moves past what the standby reserved: its copy becomes persistent and ready.
    primary.sql("SELECT pg_create_logical_replication_slot('s1', 'test_decoding')");
    primary.sql("INSERT INTO t (v) VALUES (0)");
    primary.sql("CHECKPOINT");
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('s1', NULL, NULL)");
    wait_for_copy(&standby, &primary, "s1");
    standby.wait_for_catchup(&primary);

    // Each loop is one session running one CALL, in its own thread.
    let sampler = sql_in_thread(standby.port, &format!("CALL sample_copies({SECONDS})"));
    let advancer = sql_in_thread(standby.port, &format!("CALL advance_copies({SECONDS})"));
    let mover = sql_in_thread(
        primary.port,
        &format!("CALL move_slots({SECONDS}, {CHECKPOINT_MS})"),
    );
    let mover = finish(mover, &primary, 2);
    let advancer = finish(advancer, &standby, 5);
    let sampler = finish(sampler, &standby, 4);
    eprintln!("mover: moves, checkpoints = {mover:?}");
    eprintln!("advancer: calls, refused, backwards, first backwards, first refusal = {advancer:?}");
    eprintln!("sampler: samples, rises, decreases, first decrease = {sampler:?}");

    assert_eq!(
        sampler[2], "0",
        "a sampled position of the copy went down: {}",
        sampler[3]
    );
    assert_eq!(
        advancer[2], "0",
        "the copy lost what sync_logical_slot_advance() had given it: {}",
        advancer[3]
    );
    // The loops really ran: the primary's slot moved, the advancer's calls
    // went through, the sampler sampled (every 1-3 ms on 2 busy cores; at
    // least every 10 ms on average here) and saw the copy move.
    assert!(num(&mover[0]) >= 100, "mover: {mover:?}");
    let (calls, refused) = (num(&advancer[0]), num(&advancer[1]));
    assert!(calls >= 100 && refused < calls, "advancer: {advancer:?}");
    assert!(
        num(&sampler[0]) >= u64::from(SECONDS) * 100,
        "sampler: {sampler:?}"
    );
    assert!(num(&sampler[1]) >= 10, "sampler: {sampler:?}");

    // The copy ends where the primary's slot ends, and the status view says so.
    primary.sql("SELECT pg_replication_slot_advance('s1', pg_current_wal_lsn())");
    wait_for_copy(&standby, &primary, "s1");
    let confirmed =
        primary.sql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 's1'");
    standby.poll_query_until(
        &format!(
            "SELECT local_confirmed_flush_lsn = '{confirmed}' AND remote_confirmed_flush_lsn = '{confirmed}'
               FROM sync_logical_slot_status WHERE slot_name = 's1'"
        ),
        "t",
    );
}

/// Waits (bounded) for a `CALL` to end and returns its `fields` output values.
fn finish(handle: JoinHandle<Result<String, String>>, node: &Node, fields: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(u64::from(SECONDS)) + DEADLINE;
    while !handle.is_finished() {
        assert!(
            Instant::now() < deadline,
            "on {}: a loop did not end in time\n{}",
            node.name,
            node.log_tail()
        );
        sleep(Duration::from_millis(100));
    }
    let out = handle
        .join()
        .expect("the session's thread")
        .unwrap_or_else(|e| panic!("on {}: {e}\n{}", node.name, node.log_tail()));
    let values: Vec<String> = out.split('|').map(str::to_string).collect();
    assert_eq!(values.len(), fields, "on {}: {out}", node.name);
    values
}

fn num(s: &str) -> u64 {
    s.parse().unwrap_or_else(|_| panic!("not a number: {s:?}"))
}
