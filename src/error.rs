//! Errors with a SQLSTATE. Expected states (primary unreachable, settings
//! incomplete) are values the worker logs and retries; SQL callers get them
//! as ERRORs with the SQLSTATE below.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SyncError {
    #[error("could not connect to the primary server: {0}")]
    Connect(String),
    #[error("query on the primary server failed: {0}")]
    RemoteQuery(String),
    #[error("invalid connection settings in {origin}: {reason}")]
    ConnInfo { origin: String, reason: String },
    #[error("foreign server \"{0}\" named by sync_logical_slot.master_fdw does not exist")]
    NoForeignServer(String),
    #[error("no user mapping for foreign server \"{0}\"")]
    NoUserMapping(String),
    #[error("this server is not a standby")]
    NotInRecovery,
    #[error("the server sync_logical_slot connected to is not this standby's primary: {0}")]
    WrongPrimary(String),
    #[error("the sync pass was interrupted by a configuration reload")]
    Reloaded,
    #[error("replication slot \"{0}\" does not exist on this standby")]
    NoSuchCopy(String),
    #[error("replication slot \"{0}\" was not created by sync_logical_slot")]
    NotACopy(String),
    #[error("the copy of replication slot \"{0}\" is not persistent yet")]
    CopyNotReady(String),
    #[error("{0}")]
    Internal(String),
}

impl SyncError {
    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            SyncError::Connect(_) => PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
            SyncError::RemoteQuery(_) => PgSqlErrorCode::ERRCODE_CONNECTION_EXCEPTION,
            SyncError::ConnInfo { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            SyncError::NoForeignServer(_) => PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            SyncError::NoUserMapping(_) => PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            SyncError::NotInRecovery => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            SyncError::WrongPrimary(_) => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            SyncError::Reloaded => PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
            SyncError::NoSuchCopy(_) => PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            SyncError::NotACopy(_) => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            SyncError::CopyNotReady(_) => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            SyncError::Internal(_) => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SyncError::Connect(_) => Some(
                "Check that the primary is running; that its pg_hba.conf has a database line for sync_logical_slot.database and the worker's role (\"host <database> <role> <address> <method>\"): the worker's connection is replication=database, which \"replication\" lines do not match; that the role has REPLICATION; and the credentials.",
            ),
            SyncError::NoForeignServer(_) | SyncError::NoUserMapping(_) => Some(
                "Run failover_logical_slot_init() on the primary, or set sync_logical_slot.primary_conninfo.",
            ),
            SyncError::NotInRecovery => Some("Run this on a standby server."),
            SyncError::NoSuchCopy(_) => {
                Some("sync_logical_slot_status lists the slots this standby copies.")
            }
            SyncError::NotACopy(_) => {
                Some("Only copies made by sync_logical_slot are moved by its functions.")
            }
            SyncError::CopyNotReady(_) => Some(
                "It waits for the primary's slot to pass what this standby reserved (state waiting_for_remote); it cannot be used after a failover yet.",
            ),
            SyncError::WrongPrimary(_) => Some(
                "Point sync_logical_slot.primary_conninfo or the foreign server of sync_logical_slot.master_fdw at the primary this standby streams from, or leave both empty to use its primary_conninfo.",
            ),
            _ => None,
        }
    }

    /// An ERROR (or panic) caught while syncing, as a value.
    pub fn from_panic(payload: Box<dyn std::any::Any + Send>) -> SyncError {
        use pgrx::pg_sys::panic::CaughtError;
        let message = match payload.downcast_ref::<CaughtError>() {
            Some(CaughtError::PostgresError(e))
            | Some(CaughtError::ErrorReport(e))
            | Some(CaughtError::RustPanic { ereport: e, .. }) => {
                // On a standby 40001 is only ever a recovery conflict: should
                // the worker's signal wrapper have missed the request (core's
                // handler consumed it first), this is where it shows.
                if e.sql_error_code() == pgrx::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE {
                    crate::slot::note_slot_conflict();
                }
                e.message().to_string()
            }
            None => payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into()),
        };
        SyncError::Internal(message)
    }

    /// For SQL callers: an ERROR with this variant's SQLSTATE and hint.
    pub fn report(&self) -> ErrorReport {
        let mut report = ErrorReport::new(self.sqlstate(), self.to_string(), "sync_logical_slot");
        if let Some(h) = self.hint() {
            report = report.set_hint(h);
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_hint_asks_for_a_database_line() {
        // The worker's connection is replication=database: pg_hba.conf
        // matches it with a database line, never with a "replication" line.
        let hint = SyncError::Connect("x".into()).hint().unwrap();
        assert!(hint.contains("database line for sync_logical_slot.database"));
        assert!(hint.contains("\"replication\" lines do not match"));
        assert!(!hint.contains("allows a replication connection"));
    }
}
