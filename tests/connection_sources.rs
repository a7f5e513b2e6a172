//! # Where the worker's connection comes from: primary_conninfo > master_fdw > the standby's own
//!
//! ```text
//!  primary: foreign server master_fdw (postgres_fdw) + user mapping for slot_sync  --replicated-->  standby1
//!  standby1 worker: sync_logical_slot.master_fdw = 'master_fdw'  -> connects as slot_sync
//!                   + sync_logical_slot.primary_conninfo (user=postgres) -> that wins
//!                   master_fdw naming a server that does not exist -> a clear LOG line
//! ```

mod common;
use common::*;

const WORKER_USER: &str =
    "SELECT usename FROM pg_stat_activity WHERE application_name = 'sync_logical_slot'";

#[test]
fn foreign_server_then_explicit_conninfo_take_precedence() {
    let dir = TestDir::new("connection_sources");
    let primary = dir.primary("primary");
    primary.start();
    primary.sql("CREATE ROLE slot_sync LOGIN REPLICATION PASSWORD 'fdw_pw'");
    primary.sql("CREATE EXTENSION postgres_fdw");
    primary.sql(&format!(
        "CREATE SERVER master_fdw FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '{}', dbname 'postgres', fetch_size '100')",
        primary.port
    ));
    primary.sql("CREATE USER MAPPING FOR postgres SERVER master_fdw OPTIONS (user 'slot_sync', password 'fdw_pw')");

    let standby = dir.standby("standby1", &primary);
    standby.append_conf("sync_logical_slot.master_fdw = 'master_fdw'");
    standby.start();
    standby.wait_for_log(
        "Connection settings come from foreign server \"master_fdw\" (sync_logical_slot.master_fdw).",
        0,
    );
    primary.poll_query_until(WORKER_USER, "slot_sync");

    // An explicit connection string wins over the foreign server.
    let o = standby.log_offset();
    standby.append_conf(&format!(
        "sync_logical_slot.primary_conninfo = 'host=127.0.0.1 port={} user=postgres'",
        primary.port
    ));
    standby.reload();
    standby.wait_for_log(
        "Connection settings come from sync_logical_slot.primary_conninfo.",
        o,
    );
    primary.poll_query_until(WORKER_USER, "postgres");

    // Back to a foreign server, one that does not exist: said clearly, and retried.
    let o = standby.log_offset();
    standby.append_conf("sync_logical_slot.primary_conninfo = ''");
    standby.append_conf("sync_logical_slot.master_fdw = 'no_such_server'");
    standby.reload();
    standby.wait_for_log(
        "foreign server \"no_such_server\" named by sync_logical_slot.master_fdw does not exist",
        o,
    );
    standby.wait_for_log("HINT:  Run failover_logical_slot_init() on the primary", o);
    primary.poll_query_until(&format!("{WORKER_USER} LIMIT 1"), "");
    assert!(!standby.log_since(0).contains("fdw_pw"));
    assert!(standby.is_running());
}
