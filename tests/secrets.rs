//! # The password given to failover_logical_slot_init() is in nothing the extension runs or writes
//!
//! ```text
//!  primary: log_statement = all, log_min_duration_statement = 0,
//!           pg_stat_statements (track = all, track_utility = on: nested statements too)
//!           failover_logical_slot_init(..., password)  twice: CREATE, then ALTER USER MAPPING
//! ```
//! The user mapping is made from a parse tree, with a statement text that
//! names its options but holds none of their values: no statement the
//! extension runs (which pg_stat_statements records with track = all, as an
//! audit hook would) and no log line holds the password. Only the caller's
//! own statement does, which core logs like any statement (README, "Set-up").

mod common;
use common::*;

const PASSWORD: &str = "Pw-In-Nothing-4711";

#[test]
fn the_password_is_only_in_the_callers_own_statement() {
    let dir = TestDir::new("secrets");
    let primary = dir.primary("primary");
    primary.append_conf(
        "shared_preload_libraries = 'sync_logical_slot, pg_stat_statements'
pg_stat_statements.track = all
pg_stat_statements.track_utility = on
log_statement = all
log_min_duration_statement = 0",
    );
    primary.start();
    primary.sql("CREATE EXTENSION pg_stat_statements");
    primary.sql("CREATE EXTENSION sync_logical_slot CASCADE");
    for round in 0..2 {
        primary.sql(&format!(
            "SELECT * FROM failover_logical_slot_init('127.0.0.1', '{}', 'postgres', 'rep{round}', '{PASSWORD}')",
            primary.port
        ));
    }
    assert_eq!(
        primary.sql(
            "SELECT array_to_string(umoptions, ',') FROM pg_user_mappings WHERE srvname = 'master_fdw'"
        ),
        format!("user=rep1,password={PASSWORD}"),
        "the mapping was created, then altered"
    );

    // The extension's own statements: recorded (so the check can see them), without the password.
    let nested = primary.sql(
        "SELECT string_agg(query, E'\\n' ORDER BY query) FROM pg_stat_statements WHERE query ILIKE '%user mapping%'",
    );
    assert!(
        nested.contains("CREATE USER MAPPING") && nested.contains("ALTER USER MAPPING"),
        "pg_stat_statements did not see the extension's statements:\n{nested}"
    );
    let all = primary.sql("SELECT string_agg(query, E'\\n') FROM pg_stat_statements");
    assert!(
        !all.contains(PASSWORD),
        "a statement the extension ran holds the password:\n{all}"
    );

    // The log: only the caller's own statement (core logs it) holds it.
    let log = primary.log_since(0);
    let leaks: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(PASSWORD) && !l.contains("failover_logical_slot_init("))
        .collect();
    assert!(leaks.is_empty(), "the password in the log: {leaks:#?}");
    assert!(
        log.lines()
            .any(|l| l.contains("statement: SELECT * FROM failover_logical_slot_init(")),
        "log_statement did not log the call, so the log proves nothing:\n{}",
        primary.log_tail()
    );
}
