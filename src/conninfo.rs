//! libpq `key=value` connection strings, parsed and rebuilt without libpq, so
//! that a malformed setting is rejected when it is set (not when the worker
//! first connects) and so that the worker can override the few keywords it
//! owns. Pure code: covered by plain `#[test]`s.
//!
//! Connection strings may hold a password: nothing here ever formats one into
//! an error message, and [`ConnInfo::redacted`] masks it for display.
//!
//! Why not libpq's own parser (`PQconninfoParse`)? The check hooks that
//! validate `sync_logical_slot.primary_conninfo` run in the postmaster and
//! in every backend of the primary and the standbys, where this library is
//! preloaded. libpq is not linked into the server: core reaches it only
//! through libpqwalreceiver, a module that walreceivers and logical
//! replication workers load (`walrcv_check_conninfo` is a function pointer
//! that is NULL until then). Using it would mean loading a client library
//! into every server process, sessions that never use this extension
//! included. The worker's own connection does load it (src/connect.c),
//! and libpq then parses the string again: a string this parser accepts but
//! libpq refuses fails at connect time, with libpq's message, in the log and
//! the status view. URIs (`postgresql://...`) are not accepted (README,
//! Limitations).

use std::fmt::Write as _;

/// Keywords libpq 13-17 accepts in a connection string.
const LIBPQ_KEYWORDS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "replication",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslcertmode",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "require_auth",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "gssdelegation",
    "krbsrvname",
    "gsslib",
    "service",
    "target_session_attrs",
    "load_balance_hosts",
];

pub fn is_libpq_keyword(key: &str) -> bool {
    LIBPQ_KEYWORDS.contains(&key)
}

/// An ordered list of connection keywords and their values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnInfo {
    pairs: Vec<(String, String)>,
}

impl ConnInfo {
    /// Parses a `key=value` connection string with libpq's rules (white space
    /// around `=`, single-quoted values, backslash escapes). URIs are refused:
    /// the worker has to override keywords, which it can only do in this form.
    pub fn parse(text: &str) -> Result<ConnInfo, String> {
        let trimmed = text.trim_start();
        if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
            return Err(
                "connection URIs are not supported here: write the connection string as key=value pairs"
                    .into(),
            );
        }
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        let mut info = ConnInfo::default();
        loop {
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i == chars.len() {
                break;
            }
            let key_start = i;
            while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
                i += 1;
            }
            let key: String = chars[key_start..i].iter().collect();
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            if i == chars.len() || chars[i] != '=' {
                return Err(format!(
                    "missing \"=\" after \"{key}\" in connection string"
                ));
            }
            i += 1;
            while i < chars.len() && chars[i].is_whitespace() {
                i += 1;
            }
            let mut value = String::new();
            if i < chars.len() && chars[i] == '\'' {
                i += 1;
                loop {
                    match chars.get(i) {
                        None => {
                            return Err(format!(
                                "unterminated quoted string in the value of \"{key}\""
                            ))
                        }
                        Some('\\') => {
                            if let Some(c) = chars.get(i + 1) {
                                value.push(*c);
                            }
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(c) => {
                            value.push(*c);
                            i += 1;
                        }
                    }
                }
            } else {
                while i < chars.len() && !chars[i].is_whitespace() {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    value.push(chars[i]);
                    i += 1;
                }
            }
            if !is_libpq_keyword(&key) {
                return Err(format!("invalid connection option \"{key}\""));
            }
            info.pairs.push((key, value));
        }
        Ok(info)
    }

    /// The value libpq would use: the last one given.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key`, replacing every earlier value.
    pub fn set(&mut self, key: &str, value: &str) {
        self.pairs.retain(|(k, _)| k != key);
        self.pairs.push((key.to_string(), value.to_string()));
    }

    /// Sets `key` only when the string does not already choose a value.
    pub fn set_default(&mut self, key: &str, value: &str) {
        if self.get(key).is_none() {
            self.set(key, value);
        }
    }

    pub fn remove(&mut self, key: &str) {
        self.pairs.retain(|(k, _)| k != key);
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The connection string, every value quoted and escaped.
    pub fn to_conninfo(&self) -> String {
        self.render(false)
    }

    /// The connection string for display: passwords masked.
    pub fn redacted(&self) -> String {
        self.render(true)
    }

    fn render(&self, redact: bool) -> String {
        let mut out = String::new();
        for (k, v) in &self.pairs {
            if !out.is_empty() {
                out.push(' ');
            }
            let v = if redact && (k == "password" || k == "sslpassword") {
                "********"
            } else {
                v.as_str()
            };
            let _ = write!(out, "{k}='");
            for c in v.chars() {
                if c == '\'' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('\'');
        }
        out
    }
}

/// Where the worker's connection to the primary comes from, in docs/design.md's
/// order of precedence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnSource {
    /// `sync_logical_slot.primary_conninfo`.
    Explicit,
    /// The postgres_fdw foreign server named by `sync_logical_slot.master_fdw`.
    ForeignServer(String),
    /// The standby's own `primary_conninfo`, with `dbname` set to `sync_logical_slot.database`.
    StandbyPrimaryConninfo,
}

impl ConnSource {
    pub fn choose(explicit: &str, master_fdw: &str) -> ConnSource {
        if !explicit.trim().is_empty() {
            ConnSource::Explicit
        } else if !master_fdw.trim().is_empty() {
            ConnSource::ForeignServer(master_fdw.trim().to_string())
        } else {
            ConnSource::StandbyPrimaryConninfo
        }
    }

    /// Names the source for log lines, never its content.
    pub fn describe(&self) -> String {
        match self {
            ConnSource::Explicit => "sync_logical_slot.primary_conninfo".into(),
            ConnSource::ForeignServer(s) => {
                format!("foreign server \"{s}\" (sync_logical_slot.master_fdw)")
            }
            ConnSource::StandbyPrimaryConninfo => "this standby's primary_conninfo".into(),
        }
    }
}

/// Timeouts the worker puts on its connection, so that a primary that stops
/// answering is noticed and the worker moves on.
pub const CONNECT_TIMEOUT_S: u32 = 10;
pub const STATEMENT_TIMEOUT_MS: u32 = 30_000;
pub const TCP_USER_TIMEOUT_MS: u32 = 30_000;
pub const APPLICATION_NAME: &str = "sync_logical_slot";

/// The connection string the worker uses, from the chosen source's keywords:
/// `application_name` is always ours (the primary's DBA must be able to see
/// us), the database is `database` when the source names none (always, for
/// the standby's own primary_conninfo, which names none or "replication"),
/// timeouts and keepalives are added unless the source chose its own, and
/// every statement runs read-only with a timeout.
pub fn worker_conninfo(mut base: ConnInfo, source: &ConnSource, database: &str) -> ConnInfo {
    base.remove("replication");
    match source {
        ConnSource::StandbyPrimaryConninfo => base.set("dbname", database),
        _ => base.set_default("dbname", database),
    }
    base.set("application_name", APPLICATION_NAME);
    base.set_default("connect_timeout", &CONNECT_TIMEOUT_S.to_string());
    base.set_default("keepalives", "1");
    base.set_default("keepalives_idle", "10");
    base.set_default("keepalives_interval", "5");
    base.set_default("keepalives_count", "3");
    // Keepalives do not fire while a sent query waits for its answer: give up
    // on an unacknowledged send after this long instead of TCP's minutes.
    base.set_default("tcp_user_timeout", &TCP_USER_TIMEOUT_MS.to_string());
    let ours =
        format!("-c statement_timeout={STATEMENT_TIMEOUT_MS} -c default_transaction_read_only=on");
    let options = match base.get("options") {
        Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
        _ => ours,
    };
    base.set("options", &options);
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_and_escaped_values() {
        let c = ConnInfo::parse(
            " host=10.0.0.1  port = 5433 password='it\\'s secret' user=rep\\ user dbname=''",
        )
        .unwrap();
        assert_eq!(c.get("host"), Some("10.0.0.1"));
        assert_eq!(c.get("port"), Some("5433"));
        assert_eq!(c.get("password"), Some("it's secret"));
        assert_eq!(c.get("user"), Some("rep user"));
        assert_eq!(c.get("dbname"), Some(""));
        assert_eq!(c.get("sslmode"), None);
    }

    #[test]
    fn round_trips_through_rendering() {
        let c = ConnInfo::parse("host=h password='a b\\'c\\\\d'").unwrap();
        let again = ConnInfo::parse(&c.to_conninfo()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn rejects_malformed_strings_without_echoing_the_password() {
        let e = ConnInfo::parse("host=h password='secret").unwrap_err();
        assert!(e.contains("unterminated quoted string"), "{e}");
        assert!(!e.contains("secret"));
        assert!(ConnInfo::parse("host")
            .unwrap_err()
            .contains("missing \"=\""));
        assert!(ConnInfo::parse("hots=x")
            .unwrap_err()
            .contains("invalid connection option \"hots\""));
        assert!(ConnInfo::parse("postgresql://u:pw@h/db")
            .unwrap_err()
            .contains("URIs"));
    }

    #[test]
    fn redaction_masks_passwords() {
        let c = ConnInfo::parse("host=h password=hunter2 sslpassword=x").unwrap();
        let r = c.redacted();
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.contains("password='********'"), "{r}");
    }

    #[test]
    fn last_value_wins_and_set_replaces() {
        let mut c = ConnInfo::parse("port=1 port=2").unwrap();
        assert_eq!(c.get("port"), Some("2"));
        c.set("port", "3");
        assert_eq!(c.to_conninfo(), "port='3'");
        c.set_default("port", "4");
        assert_eq!(c.get("port"), Some("3"));
    }

    #[test]
    fn source_precedence_is_explicit_then_fdw_then_standby() {
        assert_eq!(
            ConnSource::choose("host=x", "master_fdw"),
            ConnSource::Explicit
        );
        assert_eq!(
            ConnSource::choose("  ", "master_fdw"),
            ConnSource::ForeignServer("master_fdw".into())
        );
        assert_eq!(
            ConnSource::choose("", ""),
            ConnSource::StandbyPrimaryConninfo
        );
    }

    #[test]
    fn worker_conninfo_owns_name_timeouts_and_database() {
        let standby = ConnInfo::parse(
            "user=rep host=p port=5432 application_name=standby1 dbname=replication replication=true connect_timeout=3 options='-c work_mem=64MB'",
        )
        .unwrap();
        let c = worker_conninfo(standby, &ConnSource::StandbyPrimaryConninfo, "appdb");
        assert_eq!(c.get("dbname"), Some("appdb"));
        assert_eq!(c.get("application_name"), Some(APPLICATION_NAME));
        assert_eq!(c.get("replication"), None);
        assert_eq!(c.get("connect_timeout"), Some("3"));
        assert_eq!(c.get("keepalives"), Some("1"));
        let options = c.get("options").unwrap();
        assert!(options.starts_with("-c work_mem=64MB "), "{options}");
        assert!(options.contains("statement_timeout="), "{options}");
        assert!(
            options.contains("default_transaction_read_only=on"),
            "{options}"
        );

        let explicit = ConnInfo::parse("host=p dbname=other").unwrap();
        let c = worker_conninfo(explicit, &ConnSource::Explicit, "appdb");
        assert_eq!(c.get("dbname"), Some("other"));
        assert_eq!(c.get("connect_timeout"), Some("10"));

        let bare = ConnInfo::parse("host=p").unwrap();
        let c = worker_conninfo(bare, &ConnSource::Explicit, "appdb");
        assert_eq!(c.get("dbname"), Some("appdb"));
    }
}
