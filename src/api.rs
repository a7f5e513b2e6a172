//! SQL functions and the status view.

use pgrx::prelude::*;

use crate::status;

/// The rows of `sync_logical_slot_status`, from the worker's shared state.
/// Positions and xids come as text and are cast by the view.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe)]
fn sync_logical_slot_status_rows() -> TableIterator<
    'static,
    (
        name!(slot_name, String),
        name!(database, String),
        name!(plugin, String),
        name!(state, String),
        name!(ready, bool),
        name!(remote_restart_lsn, Option<String>),
        name!(remote_confirmed_flush_lsn, Option<String>),
        name!(remote_catalog_xmin, Option<String>),
        name!(local_restart_lsn, Option<String>),
        name!(local_confirmed_flush_lsn, Option<String>),
        name!(local_catalog_xmin, Option<String>),
        name!(lag_bytes, Option<i64>),
        name!(last_sync_at, Option<TimestampWithTimeZone>),
        name!(last_error, Option<String>),
    ),
> {
    let lsn = |l: crate::types::Lsn| l.is_valid().then(|| l.to_string());
    let xid = |x: crate::types::Xid| x.is_valid().then(|| x.to_string());
    let rows: Vec<_> = status::read()
        .into_iter()
        .map(|s| {
            let (lr, lc, lx) = match s.local {
                Some((r, c, x)) => (lsn(r), lsn(c), xid(x)),
                None => (None, None, None),
            };
            let lag = s.local.and_then(|(_, c, _)| {
                (c.is_valid() && s.remote_confirmed_flush_lsn.is_valid())
                    .then(|| s.remote_confirmed_flush_lsn.0.saturating_sub(c.0) as i64)
            });
            let at = (s.last_sync_at != 0)
                .then(|| TimestampWithTimeZone::try_from(s.last_sync_at).ok())
                .flatten();
            (
                s.name,
                s.database,
                s.plugin,
                s.state.as_str().to_string(),
                s.ready,
                lsn(s.remote_restart_lsn),
                lsn(s.remote_confirmed_flush_lsn),
                xid(s.remote_catalog_xmin),
                lr,
                lc,
                lx,
                lag,
                at,
                s.last_error,
            )
        })
        .collect();
    TableIterator::new(rows)
}

extension_sql!(
    r#"
CREATE VIEW sync_logical_slot_status AS
SELECT slot_name::name AS slot_name,
       database::name AS database,
       plugin::name AS plugin,
       state,
       ready,
       remote_restart_lsn::pg_lsn AS remote_restart_lsn,
       remote_confirmed_flush_lsn::pg_lsn AS remote_confirmed_flush_lsn,
       remote_catalog_xmin::xid AS remote_catalog_xmin,
       local_restart_lsn::pg_lsn AS local_restart_lsn,
       local_confirmed_flush_lsn::pg_lsn AS local_confirmed_flush_lsn,
       local_catalog_xmin::xid AS local_catalog_xmin,
       lag_bytes,
       last_sync_at,
       last_error
  FROM sync_logical_slot_status_rows();

REVOKE ALL ON FUNCTION sync_logical_slot_status_rows() FROM PUBLIC;
REVOKE ALL ON sync_logical_slot_status FROM PUBLIC;
COMMENT ON FUNCTION sync_logical_slot_status_rows() IS
  'Rows of the sync_logical_slot_status view: the standby worker''s per-slot sync state.';
COMMENT ON VIEW sync_logical_slot_status IS
  'One row per primary slot this standby copies or waits to copy; empty on a primary. ready = the copy can be used after a failover.';
"#,
    name = "status_view",
    requires = [sync_logical_slot_status_rows],
);
