//! The primary's serialized decoding snapshots, kept on the standby
//! (docs/design.md invariant 4).
//!
//! A logical slot's `restart_lsn` is where decoding resumes, and on the
//! primary it normally points at a `pg_logical/snapshots/<lsn>.snap` file that
//! the decoder wrote there: with it, decoding is consistent at once. These
//! files are not WAL-logged, so a standby has none; decoding from a copy
//! without it rebuilds a snapshot from the WAL, and while a transaction stays
//! open across `restart_lsn`, commits between the consumer's position and the
//! rebuilt consistent point are skipped. So a copy's `restart_lsn` moves only
//! to an LSN whose file the standby holds, written here durably (fsync, then
//! rename, then fsync of the directory) *before* the copy moves; or, when the
//! primary itself has no file for that LSN (a slot that has not decoded past
//! its creation point), the primary would rebuild exactly as the standby will.
//!
//! Files older than every local slot's `restart_lsn` are removed, as core does.

use std::fs;
use std::io::Write;
use std::path::PathBuf;

use crate::types::Lsn;

const DIR: &str = "pg_logical/snapshots";

/// The file name PostgreSQL uses for the snapshot at `lsn` (`%X-%X.snap`),
/// relative to the data directory.
pub fn file_name(lsn: Lsn) -> String {
    format!("{:X}-{:X}.snap", lsn.0 >> 32, lsn.0 & 0xFFFF_FFFF)
}

pub fn remote_path(lsn: Lsn) -> String {
    format!("{DIR}/{}", file_name(lsn))
}

fn local_path(lsn: Lsn) -> PathBuf {
    PathBuf::from(DIR).join(file_name(lsn))
}

/// Whether the standby already holds the snapshot file for `lsn`.
pub fn held(lsn: Lsn) -> bool {
    local_path(lsn).is_file()
}

/// Writes the primary's snapshot file for `lsn` durably.
pub fn write(lsn: Lsn, bytes: &[u8]) -> std::io::Result<()> {
    let path = local_path(lsn);
    let tmp = PathBuf::from(DIR).join(format!(
        "{}.{}.sync_logical_slot.tmp",
        file_name(lsn),
        std::process::id()
    ));
    fs::create_dir_all(DIR)?;
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, &path)?;
    fs::File::open(DIR)?.sync_all()
}

/// Parses a snapshot file name back into its LSN.
pub fn parse_file_name(name: &str) -> Option<Lsn> {
    let stem = name.strip_suffix(".snap")?;
    let (hi, lo) = stem.split_once('-')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    (hi <= u32::MAX as u64 && lo <= u32::MAX as u64).then_some(Lsn((hi << 32) | lo))
}

/// Removes snapshot files older than `oldest` (the oldest restart_lsn of any
/// local logical slot; None: there is none, every file goes), and leftover
/// temporary files of ours. Files at or after `oldest` may still be needed.
/// Returns how many were removed.
pub fn remove_older_than(oldest: Option<Lsn>) -> usize {
    let Ok(entries) = fs::read_dir(DIR) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let unneeded = name.ends_with(".sync_logical_slot.tmp")
            || matches!(parse_file_name(&name), Some(lsn) if oldest.is_none_or(|o| lsn < o));
        if unneeded && fs::remove_file(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_match_postgres() {
        assert_eq!(file_name(Lsn(0x1_0500_0028)), "1-5000028.snap");
        assert_eq!(file_name(Lsn(0x16B3748)), "0-16B3748.snap");
        assert_eq!(parse_file_name("0-16B3748.snap"), Some(Lsn(0x16B3748)));
        assert_eq!(parse_file_name("1-5000028.snap"), Some(Lsn(0x1_0500_0028)));
        assert_eq!(parse_file_name("0-16B3748.snap.123.tmp"), None);
        assert_eq!(parse_file_name("xlog"), None);
    }
}
