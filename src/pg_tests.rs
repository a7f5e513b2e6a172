//! The `#[pg_test]`s (`cargo pgrx test`, in the test instance pgrx-tests
//! starts): settings and their check hooks, the internal lock indexes, every
//! SQL function's bad input, primary-side refusals and superuser-only access,
//! the long poll's fingerprint. Multi-node behaviour is in tests/.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn setting(name: &str, column: &str) -> Option<String> {
        Spi::get_one::<String>(&format!(
            "SELECT {column} FROM pg_catalog.pg_settings WHERE name = '{name}'"
        ))
        .expect("pg_settings query")
    }

    /// The SQLSTATE that `sql` raises, or "ok".
    fn sqlstate_of(sql: &str) -> String {
        Spi::get_one::<String>(&format!(
            "SELECT tests.sqlstate_of({})",
            pgrx::spi::quote_literal(sql)
        ))
        .expect("sqlstate_of")
        .expect("a result")
    }

    fn define_sqlstate_of() {
        Spi::run(
            "CREATE OR REPLACE FUNCTION tests.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $f$
             BEGIN EXECUTE q; RETURN 'ok';
             EXCEPTION WHEN others THEN RETURN SQLSTATE; END $f$",
        )
        .expect("create sqlstate_of");
    }

    #[pg_test]
    fn failover_logical_slot_init_checks_its_input_and_makes_nothing_half() {
        define_sqlstate_of();
        let call =
            |args: &str| sqlstate_of(&format!("SELECT * FROM failover_logical_slot_init({args})"));
        assert_eq!(call("NULL, '5432', 'postgres', 'rep', 'pw'"), "22004");
        assert_eq!(call("'db1', '5432', 'postgres', 'rep', NULL"), "22004");
        assert_eq!(call("'', '5432', 'postgres', 'rep', 'pw'"), "22023");
        assert_eq!(call("'db1', 'abc', 'postgres', 'rep', 'pw'"), "22023");
        assert_eq!(call("'db1', '0', 'postgres', 'rep', 'pw'"), "22023");
        assert_eq!(call("'db1', '70000', 'postgres', 'rep', 'pw'"), "22023");
        assert_eq!(call("'db1', '5432', '', 'rep', 'pw'"), "22023");
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM pg_foreign_server WHERE srvname = 'master_fdw'"
            )
            .unwrap(),
            Some(0),
            "a refused call leaves nothing behind"
        );
    }

    #[pg_test]
    fn failover_logical_slot_init_creates_then_updates_and_never_shows_the_password() {
        let lines: Vec<String> = Spi::connect(|c| {
            c.select(
                "SELECT * FROM failover_logical_slot_init('db1', '5432', 'app', 'rep', 's3cret-pw')",
                None,
                &[],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap())
            .collect()
        });
        let database = Spi::get_one::<String>("SELECT current_database()::text")
            .unwrap()
            .unwrap();
        assert_eq!(lines, crate::api::standby_conf_lines(&database));
        for needed in [
            "shared_preload_libraries = 'sync_logical_slot'".to_string(),
            "wal_level = logical".to_string(),
            "hot_standby_feedback = on".to_string(),
            format!("sync_logical_slot.database = '{database}'"),
            "sync_logical_slot.master_fdw = 'master_fdw'".to_string(),
            "sync_logical_slot.standby_slot_names = ''".to_string(),
        ] {
            assert!(
                lines
                    .iter()
                    .any(|l| l.split('\t').next() == Some(needed.as_str())),
                "{needed} is missing from {lines:#?}"
            );
        }
        assert!(lines.iter().all(|l| !l.contains("s3cret")));
        let options = "SELECT array_to_string(srvoptions, ',') FROM pg_foreign_server WHERE srvname = 'master_fdw'";
        assert_eq!(
            Spi::get_one::<String>(options).unwrap(),
            Some("host=db1,port=5432,dbname=app".into())
        );
        let mapping = "SELECT array_to_string(umoptions, ',') FROM pg_user_mapping um JOIN pg_foreign_server s ON s.oid = um.umserver WHERE s.srvname = 'master_fdw' AND um.umuser = 10";
        assert_eq!(
            Spi::get_one::<String>(mapping).unwrap(),
            Some("user=rep,password=s3cret-pw".into())
        );
        // Again: replaced in place, one server, one mapping; an empty password removes it.
        Spi::run("SELECT * FROM failover_logical_slot_init('db2', '6543', 'app2', 'rep2', '')")
            .unwrap();
        assert_eq!(
            Spi::get_one::<String>(options).unwrap(),
            Some("host=db2,port=6543,dbname=app2".into())
        );
        assert_eq!(
            Spi::get_one::<String>(mapping).unwrap(),
            Some("user=rep2".into())
        );
    }

    #[pg_test]
    fn standby_functions_refuse_to_run_on_a_primary() {
        define_sqlstate_of();
        for sql in [
            "SELECT * FROM sync_logical_slot_sync_now()",
            "SELECT sync_logical_slot_ready()",
            "SELECT sync_logical_slot_wait_ready('1s')",
            "SELECT * FROM sync_logical_slot_readiness()",
            "SELECT sync_logical_slot_sync_slot('s')",
            "SELECT sync_logical_slot_advance('s', '0/1')",
        ] {
            assert_eq!(sqlstate_of(sql), "55000", "{sql}");
        }
        assert_eq!(
            sqlstate_of("SELECT sync_logical_slot_wait_ready(NULL)"),
            "22023"
        );
        assert_eq!(
            sqlstate_of("SELECT sync_logical_slot_wait_ready('-1s')"),
            "22023"
        );
        assert_eq!(
            Spi::get_one::<i64>("SELECT count(*) FROM sync_logical_slot_status").unwrap(),
            Some(0),
            "a primary shows no rows"
        );
    }

    fn wait_for_change(filter: &str, standby_slot: &str, since: i64, timeout_ms: i32) -> i64 {
        Spi::get_one::<i64>(&format!(
            "SELECT sync_logical_slot_wait_for_change({}, {}, {since}, {timeout_ms})",
            pgrx::spi::quote_literal(filter),
            pgrx::spi::quote_literal(standby_slot)
        ))
        .expect("wait_for_change")
        .expect("a fingerprint")
    }

    #[pg_test]
    fn the_long_poll_returns_the_fingerprint_of_what_it_watches() {
        // 0 means "nothing known yet": an answer at once, never 0 itself.
        let before = wait_for_change("name_like:%", "lp_standby", 0, 60_000);
        assert_ne!(before, 0);
        // Nothing moves: after its timeout the same fingerprint comes back.
        assert_eq!(
            wait_for_change("name_like:%", "lp_standby", before, 50),
            before
        );
        // The standby's physical slot appears: the fingerprint changes at once,
        // although the timeout is a minute.
        Spi::run("SELECT pg_create_physical_replication_slot('lp_standby')").unwrap();
        let after = wait_for_change("name_like:%", "lp_standby", before, 60_000);
        assert_ne!(after, before);
        // Another standby's slot is not watched.
        Spi::run("SELECT pg_create_physical_replication_slot('lp_other')").unwrap();
        assert_eq!(
            wait_for_change("name_like:%", "lp_standby", after, 50),
            after
        );
        Spi::run("SELECT pg_drop_replication_slot('lp_standby')").unwrap();
        Spi::run("SELECT pg_drop_replication_slot('lp_other')").unwrap();
        assert_eq!(wait_for_change("name_like:%", "lp_standby", 0, 0), before);
        define_sqlstate_of();
        assert_eq!(
            sqlstate_of("SELECT sync_logical_slot_wait_for_change('bogus:x', 's', 0, 0)"),
            "22023"
        );
    }

    #[pg_test]
    fn no_function_is_public_and_pg_monitor_only_reads() {
        define_sqlstate_of();
        Spi::run("CREATE ROLE sls_nobody").unwrap();
        Spi::run("GRANT USAGE ON SCHEMA tests TO sls_nobody").unwrap();
        Spi::run("GRANT EXECUTE ON FUNCTION tests.sqlstate_of(text) TO sls_nobody").unwrap();
        Spi::run("SET ROLE sls_nobody").unwrap();
        for sql in [
            "SELECT * FROM failover_logical_slot_init('h', '1', 'd', 'u', 'p')",
            "SELECT * FROM sync_logical_slot_sync_now()",
            "SELECT sync_logical_slot_ready()",
            "SELECT sync_logical_slot_wait_ready('1s')",
            "SELECT sync_logical_slot_sync_slot('s')",
            "SELECT sync_logical_slot_advance('s', '0/1')",
            "SELECT * FROM sync_logical_slot_status",
            "SELECT * FROM sync_logical_slot_status_rows()",
            "SELECT sync_logical_slot_sync_slot_internal('s')",
            "SELECT sync_logical_slot_advance_internal('s', 1)",
            "SELECT sync_logical_slot_wait_for_change('name_like:%', 'standby1', 0, 0)",
            "SELECT sync_logical_slot_read_snapshot('0/1')",
            "SELECT sync_logical_slot_read_slot_state('s')",
        ] {
            assert_eq!(sqlstate_of(sql), "42501", "{sql}");
        }
        Spi::run("RESET ROLE").unwrap();
        // pg_monitor reads the status and readiness (here, a primary, they
        // say so: 55000), and changes nothing.
        Spi::run("GRANT pg_monitor TO sls_nobody").unwrap();
        Spi::run("SET ROLE sls_nobody").unwrap();
        for (sql, sqlstate) in [
            ("SELECT * FROM sync_logical_slot_status", "ok"),
            ("SELECT sync_logical_slot_ready()", "55000"),
            ("SELECT sync_logical_slot_ready(ARRAY['s'])", "55000"),
            ("SELECT sync_logical_slot_wait_ready('1s', NULL)", "55000"),
            ("SELECT * FROM sync_logical_slot_readiness()", "55000"),
            ("SELECT * FROM sync_logical_slot_sync_now()", "42501"),
            ("SELECT sync_logical_slot_sync_slot('s')", "42501"),
            ("SELECT sync_logical_slot_advance('s', '0/1')", "42501"),
            (
                "SELECT * FROM failover_logical_slot_init('h', '1', 'd', 'u', 'p')",
                "42501",
            ),
        ] {
            assert_eq!(sqlstate_of(sql), sqlstate, "{sql} as pg_monitor");
        }
        Spi::run("RESET ROLE").unwrap();
    }

    /// Creates a copy the way the worker does, with an ERROR injected right
    /// after the slot is created and marked.
    #[pg_extern]
    fn create_copy_with_fault(name: &str) {
        crate::slot::FAIL_AFTER_MARK.store(true, std::sync::atomic::Ordering::SeqCst);
        // SAFETY: this backend's database.
        let database = unsafe { pgrx::pg_sys::MyDatabaseId };
        let _ = crate::slot::create_temporary(
            name,
            database,
            "test_decoding",
            false,
            crate::types::Lsn(0),
        );
    }

    #[pg_test]
    fn an_error_while_creating_a_copy_leaves_no_unmarked_slot() {
        define_sqlstate_of();
        assert_eq!(
            sqlstate_of("SELECT tests.create_copy_with_fault('half_made')"),
            "XX000"
        );
        // The half-made copy exists (temporary, held by this backend until it
        // ends) and is marked ours, so the next pass re-creates it (plan.rs:
        // a temporary copy without its reservations) rather than taking it
        // for another's slot.
        assert_eq!(
            Spi::get_one::<bool>(
                "SELECT temporary FROM pg_replication_slots WHERE slot_name = 'half_made'"
            )
            .unwrap(),
            Some(true)
        );
        assert!(crate::slot::is_ours("half_made"));
        let half = crate::slot::local_logical_slots()
            .into_iter()
            .find(|l| l.name == "half_made")
            .expect("the half-made copy");
        assert!(
            half.restart_lsn == crate::types::Lsn(0) || !half.catalog_xmin.is_valid(),
            "{half:?}"
        );
        crate::slot::drop_slot("half_made");
        assert_eq!(
            Spi::get_one::<i64>(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'half_made'"
            )
            .unwrap(),
            Some(0)
        );
    }

    #[pg_test]
    fn the_primarys_file_readers_read_only_what_they_name() {
        // No snapshot at that LSN, no such slot, a physical slot: NULL.
        assert_eq!(
            Spi::get_one::<Vec<u8>>("SELECT sync_logical_slot_read_snapshot('0/1')").unwrap(),
            None
        );
        assert_eq!(
            Spi::get_one::<Vec<u8>>("SELECT sync_logical_slot_read_slot_state('nope')").unwrap(),
            None
        );
        Spi::run("SELECT pg_create_physical_replication_slot('files_phys', true)").unwrap();
        assert_eq!(
            Spi::get_one::<Vec<u8>>("SELECT sync_logical_slot_read_slot_state('files_phys')")
                .unwrap(),
            None
        );
        // A path in the name is refused as a slot name.
        define_sqlstate_of();
        assert_eq!(
            sqlstate_of("SELECT sync_logical_slot_read_slot_state('../../global')"),
            "42602"
        );
        Spi::run("SELECT pg_drop_replication_slot('files_phys')").unwrap();
    }

    #[pg_test]
    fn internal_lock_indexes_name_the_right_locks() {
        // slot.rs reaches these C macros by index into MainLWLockArray.
        for (index, name) in crate::slot::LOCKS_FOR_TEST {
            assert_eq!(crate::slot::main_lock_name(index), name);
        }
    }

    #[pg_test]
    fn every_setting_has_its_default_and_context() {
        let expect = [
            ("sync_logical_slot.database", "postgres", "postmaster"),
            ("sync_logical_slot.master_fdw", "", "sighup"),
            ("sync_logical_slot.primary_conninfo", "", "sighup"),
            ("sync_logical_slot.slot_names", "name_like:%", "sighup"),
            ("sync_logical_slot.naptime", "1000", "sighup"),
            ("sync_logical_slot.drop_extra_slots", "on", "sighup"),
            ("sync_logical_slot.standby_slot_names", "", "sighup"),
            (
                "sync_logical_slot.standby_slots_min_confirmed",
                "-1",
                "sighup",
            ),
        ];
        for (name, default, context) in expect {
            assert_eq!(setting(name, "setting").as_deref(), Some(default), "{name}");
            assert_eq!(setting(name, "context").as_deref(), Some(context), "{name}");
        }
        assert_eq!(
            setting("sync_logical_slot.naptime", "unit").as_deref(),
            Some("ms")
        );
        assert_eq!(
            setting("sync_logical_slot.naptime", "min_val").as_deref(),
            Some("10")
        );
        assert_eq!(
            setting("sync_logical_slot.standby_slots_min_confirmed", "min_val").as_deref(),
            Some("-1")
        );
    }

    #[pg_test(error = "parameter \"sync_logical_slot.slot_names\" cannot be changed now")]
    fn sighup_settings_cannot_be_set_in_a_session() {
        Spi::run("SET sync_logical_slot.slot_names = 'x'").unwrap();
    }

    #[pg_test]
    fn check_hooks_reject_malformed_values_and_say_why() {
        use crate::guc::run_check_hook;
        let e = run_check_hook("slot_names", "nam:foo").unwrap_err();
        assert!(e.contains("unrecognized selector \"nam:\""), "{e}");
        assert!(run_check_hook("slot_names", "a,,b").is_err());
        assert!(run_check_hook("slot_names", "s1, name_like:cdc_%, plugin:pgoutput").is_ok());
        assert!(run_check_hook("standby_slot_names", "Bad Name").is_err());
        assert!(run_check_hook("standby_slot_names", "standby1,standby2").is_ok());
        assert!(run_check_hook("database", "").is_err());
        assert!(run_check_hook("master_fdw", &"x".repeat(64)).is_err());
    }

    #[pg_test]
    fn primary_conninfo_is_validated_and_never_echoed() {
        use crate::guc::run_check_hook;
        // A malformed string is refused, and the value PostgreSQL would print is masked.
        let e = run_check_hook("primary_conninfo", "host=h password='s3cret").unwrap_err();
        assert!(e.contains("unterminated quoted string"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        // A valid one is accepted, but the visible value stays empty: reloads never log it.
        let shown = run_check_hook("primary_conninfo", "host=h password=s3cret").unwrap();
        assert_eq!(shown, "");
        assert!(run_check_hook("primary_conninfo", "hots=h").is_err());
    }

    #[pg_test]
    fn primary_conninfo_is_superuser_only() {
        Spi::run("CREATE ROLE sls_plain LOGIN").unwrap();
        Spi::run("SET ROLE sls_plain").unwrap();
        let visible = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_catalog.pg_settings WHERE name = 'sync_logical_slot.primary_conninfo'",
        )
        .unwrap();
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(
            visible,
            Some(0),
            "a non-superuser must not see primary_conninfo"
        );
    }
}
