//! The connection to the primary and the remote slot query.
//!
//! The worker talks to the primary through PostgreSQL's own libpqwalreceiver
//! (loaded on demand), as core's slot sync worker does: it waits on the
//! process latch and socket, so SIGTERM ends the worker even in the middle of a
//! connection attempt or a query. The connection is a `replication=database`
//! one: its role needs REPLICATION, as the walreceiver's does, but pg_hba.conf
//! matches it with a database line (`host <database> <role> ...`), not with
//! the `replication` line that lets the walreceiver in. Every statement runs read-only with a
//! timeout (see `conninfo::worker_conninfo`): the worker never writes on the
//! primary.
//!
//! `exec` converts result columns with the types' input functions, which reads
//! the catalog: callers run it inside a transaction.

use std::ffi::{c_char, CStr, CString};
use std::ptr::NonNull;

use pgrx::pg_sys;
use pgrx::pg_sys::ffi::pg_guard_ffi_boundary;
use pgrx::prelude::*;
use pgrx::FromDatum;

use crate::conninfo::{ConnInfo, ConnSource, APPLICATION_NAME};
use crate::error::SyncError;
use crate::guc;
use crate::types::{Lsn, RemoteSlot, Xid};

/// The keywords of a connection string, from the source the settings choose.
/// Reads the catalog for a foreign server: call inside a transaction.
pub fn source_conninfo(source: &ConnSource) -> Result<ConnInfo, SyncError> {
    let invalid = |reason: String| SyncError::ConnInfo {
        origin: source.describe(),
        reason,
    };
    match source {
        ConnSource::Explicit => ConnInfo::parse(&guc::primary_conninfo()).map_err(invalid),
        ConnSource::StandbyPrimaryConninfo => {
            let text = guc::server_setting(c"primary_conninfo");
            if text.trim().is_empty() {
                return Err(invalid(
                    "it is empty: set primary_conninfo, sync_logical_slot.primary_conninfo or sync_logical_slot.master_fdw".into(),
                ));
            }
            ConnInfo::parse(&text).map_err(invalid)
        }
        ConnSource::ForeignServer(name) => foreign_server_conninfo(name),
    }
}

/// Server options and user mapping options of a postgres_fdw server, as the
/// libpq keywords among them (postgres_fdw's own options are left out). The
/// mapping is the worker's own role's, or PUBLIC's.
fn foreign_server_conninfo(name: &str) -> Result<ConnInfo, SyncError> {
    let query = format!(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_foreign_server WHERE srvname = {lit}),
                (SELECT s.srvoptions FROM pg_catalog.pg_foreign_server s WHERE s.srvname = {lit}),
                (SELECT um.umoptions FROM pg_catalog.pg_user_mapping um
                   JOIN pg_catalog.pg_foreign_server s ON s.oid = um.umserver
                  WHERE s.srvname = {lit}
                    AND um.umuser IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user))
                  ORDER BY um.umuser DESC LIMIT 1),
                EXISTS (SELECT 1 FROM pg_catalog.pg_user_mapping um
                   JOIN pg_catalog.pg_foreign_server s ON s.oid = um.umserver
                  WHERE s.srvname = {lit}
                    AND um.umuser IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)))",
        lit = pgrx::spi::quote_literal(name)
    );
    let (exists, server, mapping) = Spi::connect(|client| {
        let row = client.select(&query, Some(1), &[])?.first();
        let exists: Option<bool> = row.get(1)?;
        let server: Option<Vec<Option<String>>> = row.get(2)?;
        let mapping: Option<Vec<Option<String>>> = row.get(3)?;
        let has_mapping: Option<bool> = row.get(4)?;
        Ok::<_, pgrx::spi::Error>((
            exists.unwrap_or(false),
            server.unwrap_or_default(),
            has_mapping
                .unwrap_or(false)
                .then(|| mapping.unwrap_or_default()),
        ))
    })
    .map_err(|e| SyncError::ConnInfo {
        origin: ConnSource::ForeignServer(name.to_string()).describe(),
        reason: e.to_string(),
    })?;
    if !exists {
        return Err(SyncError::NoForeignServer(name.to_string()));
    }
    let mapping = mapping.ok_or_else(|| SyncError::NoUserMapping(name.to_string()))?;
    let mut info = ConnInfo::default();
    for option in server.into_iter().chain(mapping).flatten() {
        if let Some((k, v)) = option.split_once('=') {
            if crate::conninfo::is_libpq_keyword(k) {
                info.set(k, v);
            }
        }
    }
    Ok(info)
}

fn walrcv() -> &'static pg_sys::WalReceiverFunctionsType {
    // SAFETY: libpqwalreceiver sets WalReceiverFunctions in its _PG_init; load_file
    // raises an ERROR if the library cannot be loaded, so the pointer is set after it.
    unsafe {
        if pg_sys::WalReceiverFunctions.is_null() {
            pg_sys::load_file(c"libpqwalreceiver".as_ptr(), false);
        }
        &*pg_sys::WalReceiverFunctions
    }
}

/// One open connection to the primary, closed on drop.
pub struct Primary {
    conn: NonNull<pg_sys::WalReceiverConn>,
    /// How to call the primary's long poll (`schema.function`), or why it cannot be.
    pub long_poll: Result<String, String>,
    /// How to call the primary's snapshot reader (`schema.function`); None:
    /// the deprecated pg_read_binary_file is used instead.
    snapshot_reader: Option<String>,
    /// How to call the primary's slot state reader; None: two-phase copies
    /// cannot learn their two_phase_at (and are not ready).
    slot_state_reader: Option<String>,
}

extern "C-unwind" {
    fn sls_connect(
        conninfo: *const c_char,
        appname: *const c_char,
        err: *mut *mut c_char,
    ) -> *mut pg_sys::WalReceiverConn;
}

/// The text of sls_connect's palloc'd error message, which is freed (it
/// belongs to nothing else; a query result's message is freed with it).
fn take_connect_error(err: *mut c_char) -> String {
    let text = take_error(err);
    if !err.is_null() {
        // SAFETY: palloc'd by sls_connect for this caller, read above.
        unsafe { pg_sys::pfree(err.cast()) };
    }
    text
}

/// The text of an error message, on one line.
fn take_error(err: *mut c_char) -> String {
    if err.is_null() {
        return "unknown error".into();
    }
    // SAFETY: a NUL-terminated message that outlives this call.
    let text = unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .trim()
        .to_string();
    // libpq messages span lines ("connection to server ... failed: FATAL: ..."): keep one line.
    text.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Primary {
    /// Connects with the worker's connection string. Never logs it.
    pub fn connect(conninfo: &ConnInfo) -> Result<Primary, SyncError> {
        let text = CString::new(conninfo.to_conninfo())
            .map_err(|_| SyncError::Connect("connection string contains a NUL byte".into()))?;
        let appname = CString::new(APPLICATION_NAME).unwrap();
        // libpqwalreceiver brings libpq into the process; its other
        // functions (exec, disconnect) serve the connection afterwards.
        let _ = walrcv();
        let mut err: *mut c_char = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings valid for the call. sls_connect
        // (src/connect.c) raises nothing for a reload: it gives the attempt
        // up and closes it; the connection it returns lives in
        // TopMemoryContext until walrcv_disconnect.
        // Guarded: an ERROR raised inside (a terminate, out of memory)
        // becomes a Rust panic here, not a longjmp over this frame.
        let conn = unsafe {
            pg_guard_ffi_boundary(|| sls_connect(text.as_ptr(), appname.as_ptr(), &mut err))
        };
        let mut primary = match NonNull::new(conn) {
            Some(conn) => Primary {
                conn,
                long_poll: Err("not checked yet".into()),
                snapshot_reader: None,
                slot_state_reader: None,
            },
            None => return Err(SyncError::Connect(take_connect_error(err))),
        };
        // As libpqwalreceiver does for its logical connections: nothing the
        // worker runs may resolve a name through a schema the primary's users
        // can write to.
        primary.query_value("SELECT pg_catalog.set_config('search_path', '', false)")?;
        primary.check_identity()?;
        // Not knowing means polling, not failing the connection; but a
        // reload that cut the query short fails it (it is made anew).
        primary.long_poll = match primary.find_long_poll() {
            Ok(found) => found,
            Err(e) if crate::signals::reload_pending() => return Err(e),
            Err(e) => Err(e.to_string()),
        };
        primary.snapshot_reader = primary.find_reader("sync_logical_slot_read_snapshot", "3220")?;
        primary.slot_state_reader =
            primary.find_reader("sync_logical_slot_read_slot_state", "19")?;
        if primary.snapshot_reader.is_none() {
            say_deprecated_snapshot_reads();
        }
        Ok(primary)
    }

    /// The server must be this standby's primary: the same system identifier
    /// (not another cluster), and not itself in recovery (a copy of a copy
    /// would carry positions from a standby, not from the slots' owner).
    fn check_identity(&mut self) -> Result<(), SyncError> {
        let identify = walrcv()
            .walrcv_identify_system
            .expect("libpqwalreceiver provides walrcv_identify_system");
        let mut tli: pg_sys::TimeLineID = 0;
        // SAFETY: conn is open; the result is a palloc'd string.
        let remote = unsafe {
            let p = crate::signals::interruptible_by_reload(|| {
                pg_guard_ffi_boundary(|| identify(self.conn.as_ptr(), &mut tli))
            });
            CStr::from_ptr(p).to_string_lossy().into_owned()
        };
        // SAFETY: reads the control file's copy in shared memory.
        let local = unsafe { pg_sys::GetSystemIdentifier() }.to_string();
        if remote != local {
            return Err(SyncError::WrongPrimary(format!(
                "its system identifier is {remote}, this standby's is {local}"
            )));
        }
        if self
            .query_value("SELECT pg_catalog.pg_is_in_recovery()::text")?
            .as_deref()
            != Some("false")
        {
            return Err(SyncError::WrongPrimary(
                "it is in recovery itself (a standby); sync_logical_slot copies slots from the primary only".into(),
            ));
        }
        Ok(())
    }

    /// Whether the primary has this extension's long poll in the database the
    /// worker connects to, and the worker's role may call it: the call's
    /// qualified name, or why not (said in the worker's log, with the fix).
    pub fn find_long_poll(&mut self) -> Result<Result<String, String>, SyncError> {
        let rows = self.query(
            "SELECT pg_catalog.quote_ident(n.nspname) || '.sync_logical_slot_wait_for_change',
                    (p.oid IS NOT NULL)::text,
                    (p.oid IS NOT NULL AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
                     AND pg_catalog.has_schema_privilege(n.oid, 'USAGE'))::text
               FROM pg_catalog.pg_extension e
               JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
               LEFT JOIN pg_catalog.pg_proc p ON p.pronamespace = n.oid
                    AND p.proname = 'sync_logical_slot_wait_for_change'
                    AND p.proargtypes = '25 25 20 23'::pg_catalog.oidvector
              WHERE e.extname = 'sync_logical_slot'",
            3,
        )?;
        let col = |row: &[Option<String>], i: usize| row.get(i).cloned().flatten();
        Ok(match rows.first() {
            None => Err("the extension is not created in the database the worker connects to on the primary".into()),
            Some(row) if col(row, 1).as_deref() != Some("true") => Err(
                "the primary's sync_logical_slot extension lacks sync_logical_slot_wait_for_change (ALTER EXTENSION sync_logical_slot UPDATE)".into(),
            ),
            Some(row) if col(row, 2).as_deref() != Some("true") => Err(
                "the worker's role may not execute sync_logical_slot_wait_for_change on the primary (EXECUTE on it, USAGE on its schema)".into(),
            ),
            Some(row) => {
                // One call that returns at once: it fails where the library
                // cannot load (it must be preloaded, and only a superuser may
                // read shared_preload_libraries to tell).
                let function = col(row, 0).unwrap_or_default();
                match self.query_value(&format!("SELECT {function}('', '', 0, 0)::text")) {
                    Ok(_) => Ok(function),
                    Err(e) => Err(format!("calling sync_logical_slot_wait_for_change on the primary fails: {e}")),
                }
            }
        })
    }

    /// The long poll: waits on the primary until a slot the filter selects
    /// moves (or this standby's feedback does), at most `timeout`; returns
    /// the new fingerprint (see `sync_logical_slot_wait_for_change`). Call it
    /// inside signals.rs::in_long_poll, so that a reload or a request for
    /// a pass interrupts it.
    pub fn wait_for_change(
        &mut self,
        function: &str,
        slot_names: &str,
        physical_slot: &str,
        since: i64,
        timeout: std::time::Duration,
    ) -> Result<i64, SyncError> {
        let sql = format!(
            "SELECT {function}({}, {}, {since}, {})::text",
            pgrx::spi::quote_literal(slot_names),
            pgrx::spi::quote_literal(physical_slot),
            timeout.as_millis().min(i32::MAX as u128)
        );
        self.query_value(&sql)?
            .as_deref()
            .unwrap_or_default()
            .parse()
            .map_err(|e| SyncError::RemoteQuery(format!("unexpected answer from {function}: {e}")))
    }

    /// Runs one query whose columns are all text; returns its rows. Call inside a transaction.
    pub fn query(
        &mut self,
        sql: &str,
        ncols: usize,
    ) -> Result<Vec<Vec<Option<String>>>, SyncError> {
        let exec = walrcv()
            .walrcv_exec
            .expect("libpqwalreceiver provides walrcv_exec");
        let sql_c = CString::new(sql).expect("queries are static text");
        let types = vec![pg_sys::TEXTOID; ncols];
        // SAFETY: conn is open; sql and types outlive the call. The result is
        // palloc'd in the current (transaction) memory context.
        // A reload interrupts the wait for the answer (see signals.rs).
        let res = unsafe {
            crate::signals::interruptible_by_reload(|| {
                pg_guard_ffi_boundary(|| {
                    exec(
                        self.conn.as_ptr(),
                        sql_c.as_ptr(),
                        ncols as i32,
                        types.as_ptr(),
                    )
                })
            })
        };
        if res.is_null() {
            return Err(SyncError::RemoteQuery("no result".into()));
        }
        // SAFETY: res is a valid WalRcvExecResult until walrcv_clear_result.
        let out = unsafe {
            let r = &*res;
            if r.status != pg_sys::WalRcvExecStatus::WALRCV_OK_TUPLES {
                let e = take_error(r.err);
                pg_sys::walrcv_clear_result(res);
                return Err(SyncError::RemoteQuery(e));
            }
            let slot = pg_sys::MakeSingleTupleTableSlot(r.tupledesc, &pg_sys::TTSOpsMinimalTuple);
            let mut rows = Vec::new();
            while pg_sys::tuplestore_gettupleslot(r.tuplestore, true, false, slot) {
                pg_sys::slot_getsomeattrs_int(slot, ncols as i32);
                let mut row = Vec::with_capacity(ncols);
                for i in 0..ncols {
                    let isnull = *(*slot).tts_isnull.add(i);
                    let datum = *(*slot).tts_values.add(i);
                    row.push(String::from_datum(datum, isnull));
                }
                rows.push(row);
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::walrcv_clear_result(res);
            rows
        };
        Ok(out)
    }

    /// Asks the primary to log a running-xacts record now
    /// (`pg_log_standby_snapshot()`, PostgreSQL 16; superuser-only unless
    /// granted). Returns the record's LSN.
    pub fn log_standby_snapshot(&mut self) -> Result<Lsn, SyncError> {
        let lsn = self.query_value("SELECT pg_catalog.pg_log_standby_snapshot()::text")?;
        lsn.as_deref().unwrap_or_default().parse().map_err(|e| {
            SyncError::RemoteQuery(format!(
                "unexpected answer from pg_log_standby_snapshot(): {e}"
            ))
        })
    }

    /// The first column of the first row of a one-column query (None: no row, or NULL).
    fn query_value(&mut self, sql: &str) -> Result<Option<String>, SyncError> {
        let rows = self.query(sql, 1)?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }

    /// Every logical slot of the primary, in name order, and the
    /// `catalog_xmin` that the primary holds for this standby's physical slot
    /// `physical_slot` (its hot_standby_feedback; INVALID when it has none;
    /// None when the primary has no such slot).
    pub fn fetch_slots(
        &mut self,
        physical_slot: &str,
    ) -> Result<(Vec<RemoteSlot>, Option<Xid>), SyncError> {
        let sql = REMOTE_SLOTS_QUERY
            .replace("$physical", &pgrx::spi::quote_literal(physical_slot))
            .replace("$conflicting", crate::pgver::CONFLICTING_COLUMN);
        let rows = self.query(&sql, 11)?;
        let mut logical = Vec::with_capacity(rows.len());
        let mut feedback = None;
        for row in rows {
            if row.get(8).cloned().flatten().as_deref() == Some("logical") {
                logical.push(parse_slot_row(&row)?);
            } else {
                feedback = Some(parse_slot_row(&row)?.catalog_xmin);
            }
        }
        Ok((logical, feedback))
    }

    /// One of the primary's file readers (`function` taking one argument of
    /// type OID `argument`: pg_lsn 3220, name 19), as `schema.function`, if
    /// its extension has it and the worker's role may call it.
    /// Not knowing means the fallback, not a failed connection; but a reload
    /// that cut the query short fails it (it is made anew).
    fn find_reader(&mut self, function: &str, argument: &str) -> Result<Option<String>, SyncError> {
        let found = self.query_value(&format!(
            "SELECT pg_catalog.quote_ident(n.nspname) || '.{function}'
               FROM pg_catalog.pg_extension e
               JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
               JOIN pg_catalog.pg_proc p ON p.pronamespace = n.oid
                    AND p.proname = '{function}'
                    AND p.proargtypes = '{argument}'::pg_catalog.oidvector
              WHERE e.extname = 'sync_logical_slot'
                AND pg_catalog.has_function_privilege(p.oid, 'EXECUTE')
                AND pg_catalog.has_schema_privilege(n.oid, 'USAGE')"
        ));
        match found {
            Err(e) if crate::signals::reload_pending() => Err(e),
            Err(_) => Ok(None),
            ok => ok,
        }
    }

    /// The `two_phase_at` of the primary's logical slot `slot`, from its state
    /// file (None: the primary cannot tell: no reader for the worker's role,
    /// no such slot, or two-phase decoding not enabled on disk yet).
    pub fn two_phase_at_of(&mut self, slot: &str) -> Result<Option<Lsn>, SyncError> {
        let Some(reader) = self.slot_state_reader.clone() else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT pg_catalog.encode({reader}({}::pg_catalog.name), 'hex')",
            pgrx::spi::quote_literal(slot)
        );
        Ok(match self.query_value(&sql)? {
            None => None,
            Some(hex) => decode_hex(&hex)
                .as_deref()
                .and_then(crate::slot::two_phase_at_from_state_file),
        })
    }

    /// The primary's serialized decoding snapshot for `lsn`, if it has one
    /// (`pg_logical/snapshots`): through the extension's
    /// `sync_logical_slot_read_snapshot()`, which reads nothing else; where
    /// the worker's role may not call it, through pg_read_binary_file and
    /// pg_stat_file (deprecated: that grant reads every file).
    pub fn read_snapshot(&mut self, lsn: Lsn) -> Result<Option<Vec<u8>>, SyncError> {
        let sql = match &self.snapshot_reader {
            Some(reader) => format!(
                "SELECT pg_catalog.encode({reader}({}::pg_catalog.pg_lsn), 'hex')",
                pgrx::spi::quote_literal(lsn.to_string())
            ),
            None => format!(
                "SELECT pg_catalog.encode(pg_catalog.pg_read_binary_file(f.path, 0, s.size, true), 'hex')
                   FROM (SELECT {} AS path) f, LATERAL pg_catalog.pg_stat_file(f.path, true) s",
                pgrx::spi::quote_literal(crate::snapshot::remote_path(lsn))
            ),
        };
        match self.query_value(&sql)? {
            None => Ok(None),
            Some(hex) => decode_hex(&hex).map(Some).ok_or_else(|| {
                SyncError::RemoteQuery("the snapshot file came back garbled".into())
            }),
        }
    }

    /// The primary's current `restart_lsn` of one slot (None: the slot is gone).
    pub fn restart_lsn_of(&mut self, slot: &str) -> Result<Option<Lsn>, SyncError> {
        let sql = format!(
            "SELECT restart_lsn::text FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            pgrx::spi::quote_literal(slot)
        );
        match self.query_value(&sql)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(SyncError::RemoteQuery),
        }
    }
}

/// Once per worker: the snapshot files are read the deprecated way.
fn say_deprecated_snapshot_reads() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static SAID: AtomicBool = AtomicBool::new(false);
    if SAID.swap(true, Ordering::Relaxed) {
        return;
    }
    pgrx::pg_sys::panic::ErrorReport::new(
        pgrx::PgSqlErrorCode::ERRCODE_WARNING_DEPRECATED_FEATURE,
        "sync_logical_slot reads the primary's decoding snapshots with pg_read_binary_file, which is deprecated",
        "sync_logical_slot",
    )
    .set_detail("The worker's role may not call sync_logical_slot_read_snapshot(pg_lsn) on the primary (or the primary's extension lacks it). pg_read_binary_file lets that role read every file of the primary's data directory.")
    .set_hint("On the primary: GRANT EXECUTE ON FUNCTION sync_logical_slot_read_snapshot(pg_lsn) TO the worker's role, then revoke pg_read_binary_file and pg_stat_file from it.")
    .report(pgrx::PgLogLevel::LOG);
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Drop for Primary {
    fn drop(&mut self) {
        if let Some(disconnect) = walrcv().walrcv_disconnect {
            // SAFETY: conn is open and not used after this.
            unsafe { pg_guard_ffi_boundary(|| disconnect(self.conn.as_ptr())) }
        }
    }
}

// The logical slots, and this standby's physical slot ($physical) for its
// feedback; $conflicting is pgver::CONFLICTING_COLUMN.
const REMOTE_SLOTS_QUERY: &str =
    "SELECT slot_name::text, plugin::text, database::text, two_phase::text,
        restart_lsn::text, confirmed_flush_lsn::text, catalog_xmin::text, wal_status, slot_type,
        $conflicting, active::text
   FROM pg_catalog.pg_replication_slots
  WHERE (slot_type = 'logical' AND NOT temporary) OR slot_name = $physical
  ORDER BY slot_name";

/// One row of `REMOTE_SLOTS_QUERY`. Positions may be NULL (slot invalidated).
pub fn parse_slot_row(row: &[Option<String>]) -> Result<RemoteSlot, SyncError> {
    let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let bad = |e: String| {
        SyncError::RemoteQuery(format!("unexpected value in pg_replication_slots: {e}"))
    };
    let lsn = |i: usize| -> Result<Lsn, SyncError> {
        match row.get(i).cloned().flatten() {
            None => Ok(Lsn::INVALID),
            Some(s) => s.parse().map_err(bad),
        }
    };
    Ok(RemoteSlot {
        two_phase_at: Lsn(0),
        name: col(0),
        plugin: col(1),
        database: col(2),
        two_phase: matches!(col(3).as_str(), "true" | "t"),
        restart_lsn: lsn(4)?,
        confirmed_flush_lsn: lsn(5)?,
        catalog_xmin: match row.get(6).cloned().flatten() {
            None => Xid::INVALID,
            Some(s) => s.parse().map_err(bad)?,
        },
        wal_status: col(7),
        conflicting: matches!(col(9).as_str(), "true" | "t"),
        active: matches!(col(10).as_str(), "true" | "t"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Option<String> {
        Some(v.to_string())
    }

    #[test]
    fn parses_a_slot_row() {
        let slot = parse_slot_row(&[
            s("s1"),
            s("pgoutput"),
            s("app"),
            s("true"),
            s("0/1500028"),
            s("0/1500060"),
            s("745"),
            s("reserved"),
        ])
        .unwrap();
        assert_eq!(slot.name, "s1");
        assert!(slot.two_phase);
        assert_eq!(slot.restart_lsn, Lsn(0x1500028));
        assert_eq!(slot.confirmed_flush_lsn, Lsn(0x1500060));
        assert_eq!(slot.catalog_xmin, Xid(745));
        assert!(!slot.is_invalidated());
    }

    #[test]
    fn parses_an_invalidated_slot_row() {
        let slot = parse_slot_row(&[
            s("s2"),
            s("test_decoding"),
            s("app"),
            s("false"),
            None,
            s("0/1500060"),
            None,
            s("lost"),
        ])
        .unwrap();
        assert!(slot.is_invalidated());
        assert_eq!(slot.catalog_xmin, Xid::INVALID);
    }

    #[test]
    fn decodes_hex() {
        assert_eq!(decode_hex("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("zz"), None);
    }

    #[test]
    fn rejects_garbage_positions() {
        let e = parse_slot_row(&[s("s"), s("p"), s("d"), s("f"), s("nope"), None, None, None]);
        assert!(e.is_err());
    }
}
