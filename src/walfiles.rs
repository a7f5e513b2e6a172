//! Whether this standby still holds, on disk, the WAL from a given LSN on
//! (docs/design.md, "Where a new copy reserves WAL").
//!
//! A new copy normally reserves WAL from the standby's last restartpoint and
//! waits until the primary's slot restarts past that point. When the
//! primary's slot restarts from older WAL that the standby still has (an old
//! primary that now follows the server it switched over to keeps the WAL its
//! own slots held), the copy can reserve from the primary's `restart_lsn`
//! itself and be ready at once, however long a transaction keeps that
//! `restart_lsn` where it is. That is only safe when decoding from there will
//! find every segment: this module answers that, by looking for each segment
//! file where a reader would open it.
//!
//! A reader on this server (a walsender or SQL decoding, here or after a
//! promotion) opens each segment on the timeline that the current timeline's
//! history gives for the *last* byte of that segment (the newest timeline on
//! it, whose file also holds the older timelines' part). So for every segment
//! from the wanted LSN up to the restartpoint, that file must exist and be
//! whole. Everything here is plain file reading: no server call can raise an
//! error from it, and any doubt (a missing or unreadable history file, a
//! short segment) answers "not held", which only means the copy waits as
//! before.

use std::fs;
use std::path::Path;

use crate::types::Lsn;

/// One line of a timeline history: `tli` was current up to `end` (exclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Switch {
    pub tli: u32,
    pub end: Lsn,
}

/// Parses a timeline history file (`<tli>.history`): lines of
/// `parentTLI<TAB>switchpoint<TAB>reason`, comments and blank lines skipped.
/// None when a line cannot be read (the caller then assumes nothing).
pub fn parse_history(text: &str) -> Option<Vec<Switch>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let tli = fields.next()?.parse::<u32>().ok()?;
        let end = fields.next()?.parse::<Lsn>().ok()?;
        out.push(Switch { tli, end });
    }
    Some(out)
}

/// The timeline that `ptr` belongs to in the history of `current` (which
/// continues after the last switch).
pub fn tli_of_point(ptr: Lsn, current: u32, history: &[Switch]) -> u32 {
    history
        .iter()
        .find(|s| ptr < s.end)
        .map_or(current, |s| s.tli)
}

/// A WAL segment file's name, `TTTTTTTTXXXXXXXXYYYYYYYY`, as core names it.
pub fn segment_file_name(tli: u32, segno: u64, segment_size: u64) -> String {
    let per_id = 0x1_0000_0000u64 / segment_size;
    format!("{tli:08X}{:08X}{:08X}", segno / per_id, segno % per_id)
}

/// The segment files a reader opens to decode from `from` up to `upto`, in
/// the history of timeline `current` (`history`: its switches).
pub fn files_needed(
    from: Lsn,
    upto: Lsn,
    current: u32,
    history: &[Switch],
    segment_size: u64,
) -> Vec<String> {
    (from.0 / segment_size..=upto.0 / segment_size)
        .map(|segno| {
            let last_byte = Lsn((segno + 1) * segment_size - 1);
            segment_file_name(
                tli_of_point(last_byte, current, history),
                segno,
                segment_size,
            )
        })
        .collect()
}

/// Whether every segment from `from` to `upto` is in `wal_dir` (pg_wal),
/// whole, on the timeline a reader on timeline `current` would open it on.
pub fn held_from(wal_dir: &Path, from: Lsn, upto: Lsn, current: u32, segment_size: u64) -> bool {
    if !from.is_valid() || from > upto || segment_size == 0 {
        return false;
    }
    let history = if current <= 1 {
        Vec::new()
    } else {
        match fs::read_to_string(wal_dir.join(format!("{current:08X}.history")))
            .ok()
            .and_then(|t| parse_history(&t))
        {
            Some(h) => h,
            None => return false,
        }
    };
    files_needed(from, upto, current, &history, segment_size)
        .iter()
        .all(|f| {
            fs::metadata(wal_dir.join(f)).is_ok_and(|m| m.is_file() && m.len() == segment_size)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    #[test]
    fn history_lines_are_parsed_and_comments_skipped() {
        let text = "1\t0/3000158\tno recovery target specified\n\n# a comment\n2\t1/A0000000\tbefore 2000-01-01\n";
        assert_eq!(
            parse_history(text),
            Some(vec![
                Switch {
                    tli: 1,
                    end: Lsn(0x300_0158)
                },
                Switch {
                    tli: 2,
                    end: Lsn(0x1_A000_0000)
                },
            ])
        );
        assert_eq!(parse_history("1\tnot-an-lsn\tx\n"), None);
        assert_eq!(parse_history("x\t0/1\n"), None);
    }

    #[test]
    fn segment_names_are_cores() {
        assert_eq!(segment_file_name(1, 4, SEG), "000000010000000000000004");
        assert_eq!(
            segment_file_name(3, 0x1_05, SEG),
            "000000030000000100000005"
        );
    }

    #[test]
    fn each_segment_is_opened_on_the_newest_timeline_on_it() {
        // Timeline 2 began at 0/4105860, inside segment 4.
        let history = [Switch {
            tli: 1,
            end: Lsn(0x410_5860),
        }];
        assert_eq!(
            files_needed(Lsn(0x200_0000), Lsn(0x500_0028), 2, &history, SEG),
            vec![
                "000000010000000000000002",
                "000000010000000000000003",
                // The switch segment: timeline 2's file holds timeline 1's part too.
                "000000020000000000000004",
                "000000020000000000000005",
            ]
        );
        // A switch exactly at a segment boundary: segment 3 is all timeline 1.
        let at_boundary = [Switch {
            tli: 1,
            end: Lsn(0x400_0000),
        }];
        assert_eq!(
            files_needed(Lsn(0x300_0010), Lsn(0x400_0010), 2, &at_boundary, SEG),
            vec!["000000010000000000000003", "000000020000000000000004"]
        );
    }

    #[test]
    fn nothing_is_assumed_held_without_a_valid_range() {
        let dir = Path::new("/nonexistent");
        assert!(!held_from(dir, Lsn(0), Lsn(0x100), 1, SEG));
        assert!(!held_from(dir, Lsn(0x200), Lsn(0x100), 1, SEG));
    }

    /// A small segment size keeps the files small; the logic is the same.
    #[test]
    fn every_segment_must_be_there_whole_on_its_timeline() {
        const S: u64 = 4096;
        let dir = std::env::temp_dir().join(format!("sls-walfiles-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let put = |name: &str, len: u64| {
            fs::write(dir.join(name), vec![0u8; len as usize]).unwrap();
        };
        // Timeline 2 began inside segment 3.
        fs::write(
            dir.join("00000002.history"),
            "1\t0/3100\tno recovery target specified\n",
        )
        .unwrap();
        put("000000010000000000000001", S);
        put("000000010000000000000002", S);
        put("000000020000000000000003", S);
        put("000000020000000000000004", S);
        assert!(held_from(&dir, Lsn(0x1010), Lsn(0x4010), 2, S));
        // Timeline 1's copy of the switch segment is not what a reader opens.
        fs::remove_file(dir.join("000000020000000000000003")).unwrap();
        put("000000010000000000000003", S);
        assert!(!held_from(&dir, Lsn(0x1010), Lsn(0x4010), 2, S));
        put("000000020000000000000003", S);
        assert!(held_from(&dir, Lsn(0x1010), Lsn(0x4010), 2, S));
        // A gap in the middle, or a short file.
        fs::remove_file(dir.join("000000010000000000000002")).unwrap();
        assert!(!held_from(&dir, Lsn(0x1010), Lsn(0x4010), 2, S));
        assert!(held_from(&dir, Lsn(0x3010), Lsn(0x4010), 2, S));
        put("000000020000000000000004", S - 1);
        assert!(!held_from(&dir, Lsn(0x3010), Lsn(0x4010), 2, S));
        // Without the history file nothing is assumed.
        put("000000020000000000000004", S);
        fs::remove_file(dir.join("00000002.history")).unwrap();
        assert!(!held_from(&dir, Lsn(0x3010), Lsn(0x4010), 2, S));
        let _ = fs::remove_dir_all(&dir);
    }
}
