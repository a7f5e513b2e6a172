//! # Bad connection settings: a clear LOG line, retries, no password in any log, no crash
//!
//! ```text
//!  primary (worker role needs a password)  <--x--  standby1 worker, sync_logical_slot.primary_conninfo
//!                                                    wrong password, then unreachable port, then right
//! ```

mod common;
use common::*;
use std::net::TcpListener;

const WRONG: &str = "Wr0ngPassw0rd";
const RIGHT: &str = "R1ghtPassw0rd";

#[test]
fn wrong_password_and_unreachable_primary_are_logged_and_retried() {
    let dir = TestDir::new("bad_connection");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql(&format!(
        "CREATE ROLE slot_sync LOGIN REPLICATION PASSWORD '{RIGHT}'"
    ));
    // The worker's role must authenticate with a password; everything else is trusted.
    let hba = primary.datadir().join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all slot_sync 127.0.0.1/32 scram-sha-256\n{old}"),
    )
    .unwrap();
    primary.reload();

    let standby = dir.standby("standby1", &primary);
    standby.append_conf(&format!(
        "sync_logical_slot.primary_conninfo = 'host=127.0.0.1 port={} user=slot_sync password={WRONG} dbname=postgres'",
        primary.port
    ));
    standby.start();

    // Wrong password: one line per attempt, with the reason and the retry, never the password.
    let o = standby.wait_for_log("could not connect to the primary server", 0);
    standby.wait_for_log("password authentication failed for user \"slot_sync\"", 0);
    standby.wait_for_log(
        "Connection settings come from sync_logical_slot.primary_conninfo. Attempt 2 failed",
        o,
    );
    let pid = standby.worker_pid();
    assert!(standby.is_running());

    // Unreachable: the same, and the worker is still the same process (no crash loop).
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let conf = standby.datadir().join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).unwrap().replace(
        &format!("port={} user=slot_sync password={WRONG}", primary.port),
        &format!("port={closed} user=slot_sync password={WRONG}"),
    );
    std::fs::write(&conf, text).unwrap();
    let o = standby.log_offset();
    standby.reload();
    standby.wait_for_log("could not connect to the primary server", o);
    standby.wait_for_log("Attempt 1 failed", o);
    assert_eq!(
        standby.worker_pid(),
        pid,
        "the worker should retry, not restart"
    );

    // Right password: connected at once after the reload.
    let text = std::fs::read_to_string(&conf).unwrap().replace(
        &format!("port={closed} user=slot_sync password={WRONG}"),
        &format!("port={} user=slot_sync password={RIGHT}", primary.port),
    );
    std::fs::write(&conf, text).unwrap();
    let o = standby.log_offset();
    standby.reload();
    standby.wait_for_log(
        "sync_logical_slot worker connected to the primary server",
        o,
    );
    primary.poll_query_until(
        "SELECT usename FROM pg_stat_activity WHERE application_name = 'sync_logical_slot'",
        "slot_sync",
    );
    // The setting is hidden from SHOW.
    assert_eq!(
        standby.sql("SHOW sync_logical_slot.primary_conninfo"),
        "********"
    );

    for node in [&primary, &standby] {
        let log = node.log_since(0);
        assert!(
            !log.contains(WRONG),
            "password in the log of {}:\n{log}",
            node.name
        );
        assert!(
            !log.contains(RIGHT),
            "password in the log of {}:\n{log}",
            node.name
        );
    }
}

/// A primary, and a standby whose worker is stuck connecting to a "primary"
/// that accepts TCP connections and never answers (the listener returned).
fn standby_stuck_connecting(dir: &TestDir) -> (TcpListener, Node, Node, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let primary = dir.primary("primary");
    primary.start();
    let standby = dir.standby("standby1", &primary);
    standby.append_conf(&format!(
        "sync_logical_slot.primary_conninfo = 'host=127.0.0.1 port={port} connect_timeout=3600 dbname=postgres'"
    ));
    standby.start();
    standby.poll_query_until(WORKER_ACTIVITY, "connecting to the primary server");
    let pid = standby.worker_pid();
    (listener, primary, standby, pid)
}

#[test]
fn sigterm_interrupts_a_hanging_connection_attempt() {
    let dir = TestDir::new("hanging_primary");
    let (listener, _primary, standby, pid) = standby_stuck_connecting(&dir);
    // Without an interruptible wait the worker would sit in connect for an hour.
    let o = standby.log_offset();
    assert_eq!(
        standby.sql(&format!("SELECT pg_terminate_backend({pid})")),
        "t"
    );
    standby.wait_for_log(
        "terminating background worker \"sync_logical_slot worker\" due to administrator command",
        o,
    );
    // The postmaster restarts it after a bounded delay.
    standby.poll_query_until(
        &format!("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'sync_logical_slot worker' AND pid <> {pid}"),
        "1",
    );
    // And a fast shutdown is not held up by the hanging connection either.
    standby.stop();
    drop(listener);
}

#[test]
fn reload_interrupts_a_hanging_connection_attempt() {
    let dir = TestDir::new("reload_hanging");
    let (listener, primary, standby, pid) = standby_stuck_connecting(&dir);

    // New settings while the worker waits on the network: used at once, not in an hour,
    // and by the same worker process (no restart).
    let o = standby.log_offset();
    standby.append_conf(&format!(
        "sync_logical_slot.primary_conninfo = 'host=127.0.0.1 port={} dbname=postgres'",
        primary.port
    ));
    standby.reload();
    standby.wait_for_log(
        "sync_logical_slot worker connected to the primary server",
        o,
    );
    assert_eq!(
        standby.worker_pid(),
        pid,
        "the worker should not have restarted"
    );
    assert!(
        !standby.log_since(o).contains("could not connect"),
        "an interrupted attempt is not a failure:\n{}",
        standby.log_since(o)
    );
    drop(listener);
}
