//! # The primary's logical slots appear on the standby, follow it, and go when it drops them
//!
//! ```text
//!  primary                         --streaming, slot "standby1"-->  standby1
//!    db postgres: td_main (test_decoding)                             copies td_main, po_app, td_app
//!    db app:      po_app (pgoutput), td_app (test_decoding)           never x_skipped (filtered out)
//!                 x_skipped (test_decoding)
//! ```
//! Slots of two databases and two output plugins are copied, persistent and
//! ready; consuming on the primary moves the copies; a slot dropped on the
//! primary disappears from the standby; a slot the filter excludes is never
//! copied; the status view agrees with pg_replication_slots; a two-phase slot
//! is copied with its two-phase state; a slot the extension did not make (its
//! marker removed, as for a slot another tool made) is never dropped.

mod common;
use common::*;

#[test]
fn slots_are_copied_followed_and_dropped() {
    let dir = TestDir::new("sync_slots");
    let primary = dir.primary("primary");
    primary.append_conf("sync_logical_slot.slot_names = 'td_main, name_like:%_app'");
    primary.start();
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    primary.sql("CREATE DATABASE app");
    primary.sql_in("app", "CREATE TABLE t (id int PRIMARY KEY, v text)");
    primary.sql_in("app", "CREATE PUBLICATION pub FOR TABLE t");

    let standby = dir.standby("standby1", &primary);
    standby.start();

    // temporary = false, two_phase = true
    primary
        .sql("SELECT pg_create_logical_replication_slot('td_main', 'test_decoding', false, true)");
    primary.sql_in(
        "app",
        "SELECT pg_create_logical_replication_slot('po_app', 'pgoutput')",
    );
    primary.sql_in(
        "app",
        "SELECT pg_create_logical_replication_slot('td_app', 'test_decoding')",
    );
    primary.sql_in(
        "app",
        "SELECT pg_create_logical_replication_slot('x_skipped', 'test_decoding')",
    );

    // Traffic, consumed on the primary so that every slot moves.
    for i in 0..3 {
        primary.sql_in("app", &format!("INSERT INTO t VALUES ({i}, 'v{i}')"));
        primary.sql("CHECKPOINT");
        consume(&primary);
    }
    primary.sql_in(
        "app",
        "SELECT pg_replication_slot_advance('x_skipped', pg_current_wal_lsn())",
    );

    for slot in ["td_main", "po_app", "td_app"] {
        wait_for_copy(&standby, &primary, slot);
    }
    assert_eq!(
        standby.sql("SELECT slot_name, plugin, database, temporary FROM pg_replication_slots WHERE slot_type = 'logical' ORDER BY 1"),
        "po_app|pgoutput|app|f\ntd_app|test_decoding|app|f\ntd_main|test_decoding|postgres|f",
        "x_skipped is not selected by sync_logical_slot.slot_names"
    );
    assert_eq!(
        standby.sql("SELECT slot_name FROM pg_replication_slots WHERE two_phase"),
        "td_main"
    );
    assert_eq!(
        standby.sql("SELECT slot_name, database, plugin, state, ready FROM sync_logical_slot_status ORDER BY 1"),
        "po_app|app|pgoutput|synced|t\ntd_app|app|test_decoding|synced|t\ntd_main|postgres|test_decoding|synced|t"
    );
    // The view's local positions are the standby's slots, its remote ones the primary's.
    assert_eq!(
        standby.sql(
            "SELECT count(*) FROM sync_logical_slot_status s JOIN pg_replication_slots r USING (slot_name)
              WHERE s.local_restart_lsn = r.restart_lsn AND s.local_confirmed_flush_lsn = r.confirmed_flush_lsn
                AND s.local_catalog_xmin = r.catalog_xmin AND s.lag_bytes = 0"
        ),
        "3"
    );

    // ...and the view's remote positions are the primary's.
    assert_eq!(
        standby.sql(
            "SELECT string_agg(concat_ws('|', slot_name, remote_restart_lsn, remote_confirmed_flush_lsn, remote_catalog_xmin), ',' ORDER BY slot_name) FROM sync_logical_slot_status"
        ),
        primary.sql(
            "SELECT string_agg(concat_ws('|', slot_name, restart_lsn, confirmed_flush_lsn, catalog_xmin), ',' ORDER BY slot_name) FROM pg_replication_slots WHERE slot_name IN ('td_main', 'po_app', 'td_app')"
        )
    );

    // Moving on: more changes, consumed; the copies follow.
    for i in 3..6 {
        primary.sql_in("app", &format!("INSERT INTO t VALUES ({i}, 'v{i}')"));
        primary.sql("CHECKPOINT");
        consume(&primary);
    }
    for slot in ["td_main", "po_app", "td_app"] {
        wait_for_copy(&standby, &primary, slot);
    }

    // Dropped on the primary: gone from the standby, and from the view.
    let offset = standby.log_offset();
    primary.sql_in("app", "SELECT pg_drop_replication_slot('td_app')");
    standby.poll_query_until(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'td_app'",
        "0",
    );
    standby.wait_for_log("dropped replication slot \"td_app\"", offset);
    standby.poll_query_until(
        "SELECT string_agg(slot_name, ',' ORDER BY slot_name) FROM sync_logical_slot_status",
        "po_app,td_main",
    );
    assert_eq!(
        standby.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'x_skipped'"),
        "0"
    );

    // A slot this extension did not make is never dropped: take td_main's
    // marker away, drop both slots on the primary; only po_app goes.
    std::fs::remove_file(
        standby
            .datadir()
            .join("pg_replslot/td_main/sync_logical_slot"),
    )
    .expect("td_main's ownership marker");
    primary.sql("SELECT pg_drop_replication_slot('td_main')");
    primary.sql_in("app", "SELECT pg_drop_replication_slot('po_app')");
    standby.poll_query_until(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'po_app'",
        "0",
    );
    assert_eq!(
        standby.sql("SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical'"),
        "td_main"
    );
}

fn consume(primary: &Node) {
    primary.sql("SELECT count(*) FROM pg_logical_slot_get_changes('td_main', NULL, NULL)");
    primary.sql_in(
        "app",
        "SELECT count(*) FROM pg_logical_slot_get_changes('td_app', NULL, NULL)",
    );
    primary.sql_in(
        "app",
        "SELECT count(*) FROM pg_logical_slot_get_binary_changes('po_app', NULL, NULL, 'proto_version', '1', 'publication_names', 'pub')",
    );
}
