//! Core vocabulary: WAL positions, transaction ids, the slot filter and what the
//! primary tells us about one of its logical slots. Nothing here touches `pg_sys`,
//! so all of it is covered by plain `#[test]`s.

use std::fmt;
use std::str::FromStr;

/// A WAL position (`XLogRecPtr`). Prints and parses as PostgreSQL does: `%X/%08X`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const INVALID: Lsn = Lsn(0);

    pub fn is_valid(self) -> bool {
        self.0 != 0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:08X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (hi, lo) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid LSN \"{s}\": expected the form X/X"))?;
        let parse = |part: &str| {
            if part.is_empty() || part.len() > 8 {
                return Err(format!("invalid LSN \"{s}\""));
            }
            u32::from_str_radix(part, 16).map_err(|_| format!("invalid LSN \"{s}\""))
        };
        Ok(Lsn((u64::from(parse(hi)?) << 32) | u64::from(parse(lo)?)))
    }
}

/// A 32-bit transaction id, compared as PostgreSQL does: modulo 2^32, so that
/// "older" stays meaningful across wraparound. Ids below 3 are special
/// (invalid, bootstrap, frozen) and precede every normal id.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Xid(pub u32);

impl Xid {
    pub const INVALID: Xid = Xid(0);
    const FIRST_NORMAL: u32 = 3;

    pub fn is_valid(self) -> bool {
        self.0 != 0
    }

    pub fn is_normal(self) -> bool {
        self.0 >= Self::FIRST_NORMAL
    }

    /// `TransactionIdPrecedes`: is `self` logically older than `other`?
    pub fn precedes(self, other: Xid) -> bool {
        if !self.is_normal() || !other.is_normal() {
            return self.0 < other.0;
        }
        (self.0.wrapping_sub(other.0) as i32) < 0
    }

    pub fn precedes_or_equals(self, other: Xid) -> bool {
        self == other || self.precedes(other)
    }

    /// The later of two transaction ids (across wraparound).
    pub fn later(self, other: Xid) -> Xid {
        if self.precedes(other) {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for Xid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Xid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u32>()
            .map(Xid)
            .map_err(|_| format!("invalid transaction id \"{s}\""))
    }
}

/// Why a slot can no longer be used, as PostgreSQL 16 and 17 name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// The WAL from its restart_lsn was removed (max_slot_wal_keep_size).
    WalRemoved,
    /// Catalog rows it needed were removed (a recovery conflict on a standby, 16+).
    RowsRemoved,
    /// The primary's wal_level went below logical (16+).
    WalLevelInsufficient,
}

impl Invalidation {
    pub fn as_str(self) -> &'static str {
        match self {
            Invalidation::WalRemoved => "wal_removed",
            Invalidation::RowsRemoved => "rows_removed",
            Invalidation::WalLevelInsufficient => "wal_level_insufficient",
        }
    }
}

/// One logical slot as the primary reports it in `pg_replication_slots`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteSlot {
    pub name: String,
    pub plugin: String,
    pub database: String,
    pub two_phase: bool,
    /// Where two-phase decoding was enabled on the primary's slot (its state
    /// file's `two_phase_at`; pg_replication_slots does not show it): a
    /// transaction prepared before it is decoded whole at COMMIT PREPARED.
    /// 0/0 while not read from the primary.
    pub two_phase_at: Lsn,
    pub restart_lsn: Lsn,
    pub confirmed_flush_lsn: Lsn,
    pub catalog_xmin: Xid,
    /// `reserved`, `extended`, `unreserved`, `lost`, or empty when the slot holds no WAL.
    pub wal_status: String,
    /// PostgreSQL 16's `conflicting`: invalidated by a conflict with
    /// recovery while the primary was itself a standby (rows_removed or
    /// wal_level_insufficient; the view does not say which). False on 15.
    pub conflicting: bool,
    /// A consumer is connected to the slot on the primary now.
    pub active: bool,
}

impl RemoteSlot {
    /// The primary can no longer decode from this slot: copying it is
    /// pointless. Invalidation for removed WAL clears `restart_lsn`;
    /// `wal_status = 'lost'` alone can be transient (PostgreSQL 15 reports it
    /// for an inactive slot whose old segment a checkpoint removed after its
    /// restart_lsn moved).
    pub fn is_invalidated(&self) -> bool {
        self.invalidation_cause().is_some()
    }

    /// Why the primary's slot is invalidated, as PostgreSQL 16 names it.
    pub fn invalidation_cause(&self) -> Option<&'static str> {
        // Removed WAL clears restart_lsn; 16.2 also reports such a slot as
        // `conflicting`, so this is asked first.
        if self.wal_status == "lost" && !self.restart_lsn.is_valid() {
            Some(Invalidation::WalRemoved.as_str())
        } else if self.conflicting {
            Some("rows_removed or wal_level_insufficient")
        } else {
            None
        }
    }

    /// The slot is still being created on the primary (no consistent point yet).
    pub fn is_being_created(&self) -> bool {
        !self.is_invalidated()
            && (!self.restart_lsn.is_valid() || !self.confirmed_flush_lsn.is_valid())
    }
}

/// One term of `sync_logical_slot.slot_names`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotSelector {
    /// `name` or `name:NAME`: exactly this slot.
    Name(String),
    /// `name_like:PATTERN`: SQL LIKE on the slot name (`%` any run, `_` one character, `\` escapes).
    NameLike(String),
    /// `plugin:NAME`: every slot using this output plugin.
    Plugin(String),
}

/// `sync_logical_slot.slot_names`: a slot is selected when any term matches
/// it. The default value of the type selects nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotFilter {
    pub selectors: Vec<SlotSelector>,
}

/// The longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`).
pub const MAX_IDENTIFIER_LEN: usize = 63;

impl SlotFilter {
    pub const DEFAULT: &'static str = "name_like:%";

    /// Parses a comma list of `name` (or `name:NAME`, as pg_failover_slots
    /// writes it), `name_like:PATTERN` and `plugin:NAME`.
    /// White space around terms is ignored. An empty list selects nothing.
    pub fn parse(text: &str) -> Result<SlotFilter, String> {
        let mut selectors = Vec::new();
        if text.trim().is_empty() {
            return Ok(SlotFilter { selectors });
        }
        for raw in text.split(',') {
            let term = raw.trim();
            if term.is_empty() {
                return Err(format!(
                    "empty entry in slot list \"{text}\": remove the extra comma"
                ));
            }
            let selector = match term.split_once(':') {
                None => {
                    validate_slot_name(term)?;
                    SlotSelector::Name(term.to_string())
                }
                Some((kind, arg)) => {
                    let arg = arg.trim();
                    if arg.is_empty() {
                        return Err(format!("\"{kind}:\" needs a value after the colon"));
                    }
                    match kind.trim() {
                        // pg_failover_slots' spelling of an exact name.
                        "name" => {
                            validate_slot_name(arg)?;
                            SlotSelector::Name(arg.to_string())
                        }
                        "name_like" => {
                            if arg.ends_with('\\') && !arg.ends_with("\\\\") {
                                return Err(format!(
                                    "pattern \"{arg}\" ends with an unfinished escape"
                                ));
                            }
                            SlotSelector::NameLike(arg.to_string())
                        }
                        "plugin" => {
                            if arg.len() > MAX_IDENTIFIER_LEN {
                                return Err(format!("plugin name \"{arg}\" is too long"));
                            }
                            SlotSelector::Plugin(arg.to_string())
                        }
                        other => {
                            return Err(format!(
                                "unrecognized selector \"{other}:\" in \"{term}\": use a slot name, name:NAME, name_like:PATTERN or plugin:NAME"
                            ))
                        }
                    }
                }
            };
            selectors.push(selector);
        }
        Ok(SlotFilter { selectors })
    }

    /// The filter in the syntax every version of this library reads (`name:X`
    /// as plain `X`): what the worker sends to the primary's long poll, whose
    /// library may be older (a rolling upgrade).
    pub fn canonical(&self) -> String {
        self.selectors
            .iter()
            .map(|s| match s {
                SlotSelector::Name(n) => n.clone(),
                SlotSelector::NameLike(p) => format!("name_like:{p}"),
                SlotSelector::Plugin(p) => format!("plugin:{p}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether a slot of this name can be selected by some plugin (false: the
    /// filter excludes the name whatever the slot's plugin).
    pub fn may_select_name(&self, name: &str) -> bool {
        self.selectors.iter().any(|s| match s {
            SlotSelector::Name(n) => n == name,
            SlotSelector::NameLike(p) => like(name, p),
            SlotSelector::Plugin(_) => true,
        })
    }

    pub fn selects(&self, name: &str, plugin: &str) -> bool {
        self.selectors.iter().any(|s| match s {
            SlotSelector::Name(n) => n == name,
            SlotSelector::NameLike(p) => like(name, p),
            SlotSelector::Plugin(p) => p == plugin,
        })
    }
}

/// `ReplicationSlotValidateName`'s rules: 1..63 characters of `[a-z0-9_]`.
pub fn validate_slot_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("replication slot name is empty".into());
    }
    if name.len() > MAX_IDENTIFIER_LEN {
        return Err(format!("replication slot name \"{name}\" is too long"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "replication slot name \"{name}\" contains invalid character \"{c}\": slot names may only contain lower case letters, numbers and the underscore character"
        ));
    }
    Ok(())
}

/// SQL `LIKE` with the default escape character `\`. Linear in practice and
/// never worse than text × pattern: the usual wildcard walk that, on a
/// mismatch, only moves the text position of the last `%` on (no backtracking
/// over earlier `%`s, which a name_like with many of them would make
/// exponential).
pub fn like(text: &str, pattern: &str) -> bool {
    #[derive(PartialEq)]
    enum Token {
        Any,
        One,
        Char(char),
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '%' => Token::Any,
            '_' => Token::One,
            // A trailing lone backslash stands for itself.
            '\\' => Token::Char(chars.next().unwrap_or('\\')),
            c => Token::Char(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    let (mut t, mut p) = (0, 0);
    // The last `%` seen, and the text position it is tried at.
    let mut retry: Option<(usize, usize)> = None;
    while t < text.len() {
        match tokens.get(p) {
            Some(Token::Any) => {
                retry = Some((p, t));
                p += 1;
            }
            Some(Token::One) => {
                t += 1;
                p += 1;
            }
            Some(Token::Char(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            _ => match retry {
                // Let that `%` take one more character, and go on from there.
                Some((star, at)) => {
                    retry = Some((star, at + 1));
                    t = at + 1;
                    p = star + 1;
                }
                None => return false,
            },
        }
    }
    tokens[p..].iter().all(|k| *k == Token::Any)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_in_postgres_format() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        // %X/%08X, as PostgreSQL 18 prints LSNs (and parses either form).
        assert_eq!(Lsn(0x0000_0000_0100_0028).to_string(), "0/01000028");
        assert_eq!("0/1000028".parse::<Lsn>().unwrap(), Lsn(0x0100_0028));
        assert_eq!("0/0".parse::<Lsn>().unwrap(), Lsn::INVALID);
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("1/".parse::<Lsn>().is_err());
        assert!("G/0".parse::<Lsn>().is_err());
        assert!("123456789/0".parse::<Lsn>().is_err());
    }

    #[test]
    fn lsn_orders_numerically() {
        assert!("0/FFFFFFFF".parse::<Lsn>().unwrap() < "1/0".parse().unwrap());
    }

    #[test]
    fn xid_precedes_is_wraparound_aware() {
        assert!(Xid(100).precedes(Xid(200)));
        assert!(!Xid(200).precedes(Xid(100)));
        // 4_000_000_000 is "before" 10 once the counter has wrapped.
        assert!(Xid(4_000_000_000).precedes(Xid(10)));
        assert!(!Xid(10).precedes(Xid(4_000_000_000)));
        // Special ids precede normal ones.
        assert!(Xid(2).precedes(Xid(3)));
        assert!(Xid::INVALID.precedes(Xid(4_000_000_000)));
        assert!(Xid(7).precedes_or_equals(Xid(7)));
        assert!(!Xid(7).precedes(Xid(7)));
    }

    #[test]
    fn filter_parses_every_form() {
        let f = SlotFilter::parse(" s1 , name_like:cdc_%, plugin:pgoutput, name: s2").unwrap();
        assert_eq!(
            f.selectors,
            vec![
                SlotSelector::Name("s1".into()),
                SlotSelector::NameLike("cdc_%".into()),
                SlotSelector::Plugin("pgoutput".into()),
                SlotSelector::Name("s2".into()),
            ]
        );
        assert!(f.selects("s2", "test_decoding"));
        // Sent to the primary in the syntax 0.1.0 reads; it parses back the same.
        assert_eq!(f.canonical(), "s1, name_like:cdc_%, plugin:pgoutput, s2");
        assert_eq!(SlotFilter::parse(&f.canonical()).unwrap(), f);
        // name: is exact, never a pattern.
        assert!(!SlotFilter::parse("name:s_").unwrap().selects("sx", "x"));
        assert!(SlotFilter::parse("name:Bad-Name")
            .unwrap_err()
            .contains("invalid character"));
        assert!(f.selects("s1", "test_decoding"));
        assert!(f.selects("cdc_orders", "wal2json"));
        assert!(f.selects("other", "pgoutput"));
        assert!(!f.selects("other", "test_decoding"));
    }

    #[test]
    fn filter_default_selects_everything_and_empty_nothing() {
        assert!(SlotFilter::parse(SlotFilter::DEFAULT)
            .unwrap()
            .selects("anything", "x"));
        assert!(!SlotFilter::parse("").unwrap().selects("anything", "x"));
    }

    #[test]
    fn filter_rejects_malformed_terms_with_reason() {
        let e = SlotFilter::parse("nam:foo").unwrap_err();
        assert!(e.contains("unrecognized selector \"nam:\""), "{e}");
        assert!(SlotFilter::parse("a,,b")
            .unwrap_err()
            .contains("extra comma"));
        assert!(SlotFilter::parse("plugin:")
            .unwrap_err()
            .contains("needs a value"));
        assert!(SlotFilter::parse("Bad-Name")
            .unwrap_err()
            .contains("invalid character"));
        assert!(SlotFilter::parse(&"x".repeat(64))
            .unwrap_err()
            .contains("too long"));
        assert!(SlotFilter::parse("name_like:abc\\")
            .unwrap_err()
            .contains("escape"));
    }

    #[test]
    fn like_follows_sql_semantics() {
        assert!(like("", ""));
        assert!(like("", "%"));
        assert!(!like("", "_"));
        assert!(like("abc", "%%"));
        assert!(like("abcbc", "%bc"));
        assert!(like("aXbXc", "a%b%c"));
        assert!(!like("aXbXd", "a%b%c"));
        assert!(like("a_b", "a\\_b"));
        assert!(!like("axb", "a\\_b"));
        assert!(like("abc", "a%"));
        assert!(like("abc", "%c"));
        assert!(like("abc", "a_c"));
        assert!(!like("abc", "a_"));
        assert!(like("a%c", "a\\%c"));
        assert!(!like("abc", "a\\%c"));
        assert!(like("", "%"));
        assert!(!like("", "_"));
    }

    #[test]
    fn like_with_many_wildcards_does_not_backtrack() {
        // Exponential for a matcher that backtracks over every `%` (this
        // test would not finish); a few thousand steps for one that does not.
        let name = "a".repeat(63);
        let pattern = format!("{}b", "%a".repeat(30));
        assert!(!like(&name, &pattern));
        assert!(like(&format!("{name}b"), &pattern));
    }

    /// A primary slot at restart_lsn 1 with `wal_status`.
    fn remote_slot(wal_status: &str) -> RemoteSlot {
        RemoteSlot {
            two_phase_at: Lsn(0),
            name: "s".into(),
            plugin: "p".into(),
            database: "d".into(),
            two_phase: false,
            restart_lsn: Lsn(1),
            confirmed_flush_lsn: Lsn(1),
            catalog_xmin: Xid(5),
            wal_status: wal_status.into(),
            conflicting: false,
            active: false,
        }
    }

    #[test]
    fn invalidated_remote_slot_is_recognised() {
        let mut s = remote_slot("reserved");
        assert!(!s.is_invalidated());
        s.wal_status = "lost".into();
        assert!(
            !s.is_invalidated(),
            "'lost' with a restart_lsn is a passing report"
        );
        s.restart_lsn = Lsn::INVALID;
        assert!(s.is_invalidated());
        assert!(!s.is_being_created());
        s.wal_status = String::new();
        s.restart_lsn = Lsn::INVALID;
        assert!(!s.is_invalidated(), "no restart_lsn yet is not invalidated");
        assert!(s.is_being_created());
    }

    #[test]
    fn conflicting_remote_slot_is_invalidated_with_its_cause() {
        let mut s = remote_slot("lost");
        assert_eq!(s.invalidation_cause(), None);
        // 16 keeps restart_lsn for a slot invalidated by a recovery conflict.
        s.conflicting = true;
        assert!(s.is_invalidated());
        assert_eq!(
            s.invalidation_cause(),
            Some("rows_removed or wal_level_insufficient")
        );
        // 16.2 says `conflicting` for removed WAL too: restart_lsn tells.
        s.restart_lsn = Lsn(0);
        assert_eq!(s.invalidation_cause(), Some("wal_removed"));
        s.conflicting = false;
        assert_eq!(s.invalidation_cause(), Some("wal_removed"));
    }
}
