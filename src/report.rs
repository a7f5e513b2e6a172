//! The worker's log lines, in one place: each has a SQLSTATE, a message, and
//! where it helps a DETAIL and a HINT, as PostgreSQL's own do. Each helper
//! passes its caller's location on (`#[track_caller]`), as ErrorReport does.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// A LOG line with its SQLSTATE, DETAIL and HINT.
#[track_caller]
pub fn log(code: PgSqlErrorCode, message: &str, detail: Option<String>, hint: Option<&str>) {
    at(PgLogLevel::LOG, code, message, detail, hint);
}

/// A WARNING: something the DBA must fix for the copies to become ready.
#[track_caller]
pub fn warning(code: PgSqlErrorCode, message: &str, detail: Option<String>, hint: Option<&str>) {
    at(PgLogLevel::WARNING, code, message, detail, hint);
}

#[track_caller]
fn at(
    level: PgLogLevel,
    code: PgSqlErrorCode,
    message: &str,
    detail: Option<String>,
    hint: Option<&str>,
) {
    let mut report = ErrorReport::new(code, message.to_string(), "sync_logical_slot");
    if let Some(d) = detail {
        report = report.set_detail(d);
    }
    if let Some(h) = hint {
        report = report.set_hint(h);
    }
    report.report(level);
}

/// A LOG line about progress (SQLSTATE 00000), with its DETAIL.
#[track_caller]
pub fn note(message: &str, detail: Option<String>) {
    log(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        message,
        detail,
        None,
    );
}

/// A DEBUG1 line (what is routine, or retried quietly).
#[track_caller]
pub fn debug1(message: &str, detail: &str) {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
        message.to_string(),
        "sync_logical_slot",
    )
    .set_detail(detail.to_string())
    .report(PgLogLevel::DEBUG1);
}
