//! Compiles the hooks that run in every backend (src/primary/hooks.c) and the
//! primary's file readers for the workers (src/primary/files.c) and the
//! worker's connection (src/connect.c) against
//! the server headers of the PostgreSQL being built for: the same pg_config
//! that pgrx picks (PGRX_PG_CONFIG_PATH, else cargo-pgrx's config.toml entry
//! for the enabled `pgNN` feature).

/// The one line for PostgreSQL 17 and later (README "Migrating to PostgreSQL 17").
const REFUSAL_17: &str = "sync_logical_slot is for PostgreSQL 15 and 16; PostgreSQL 17 synchronizes failover slots itself (sync_replication_slots): see README \"Migrating to PostgreSQL 17\"";

fn main() {
    if ["17", "18"]
        .iter()
        .any(|m| std::env::var_os(format!("CARGO_FEATURE_PG{m}")).is_some())
    {
        eprintln!("{REFUSAL_17}");
        std::process::exit(1);
    }
    let major = ["15", "16"]
        .into_iter()
        .find(|m| std::env::var_os(format!("CARGO_FEATURE_PG{m}")).is_some())
        .expect("build with exactly one of the features pg15, pg16");
    let pgrx = pgrx_pg_config::Pgrx::from_config().expect("cargo pgrx init has been run");
    let pg_config = pgrx
        .get(&format!("pg{major}"))
        .unwrap_or_else(|e| panic!("no pg_config for PostgreSQL {major}: {e}"));
    let include = pg_config
        .includedir_server()
        .expect("pg_config --includedir-server");
    // libpq-fe.h (for src/connect.c's types; libpq itself is not linked).
    let client_include = std::process::Command::new(pg_config.path().expect("pg_config's path"))
        .arg("--includedir")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .expect("pg_config --includedir");

    println!("cargo:rerun-if-changed=src/primary/hooks.c");
    println!("cargo:rerun-if-changed=src/primary/files.c");
    println!("cargo:rerun-if-changed=src/connect.c");
    println!("cargo:rerun-if-env-changed=PGRX_PG_CONFIG_PATH");
    cc::Build::new()
        .file("src/primary/hooks.c")
        .file("src/primary/files.c")
        .file("src/connect.c")
        .include(include)
        .include(client_include)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-missing-field-initializers")
        .flag_if_supported("-Wno-sign-compare")
        .warnings(true)
        .compile("sync_logical_slot_hooks");
}
