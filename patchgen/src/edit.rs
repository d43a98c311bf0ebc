//! The journaled edit record and the rules that identify a step's original text.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One journaled edit of a step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    /// Path relative to the repo workdir (or the session root outside git), '/'-separated;
    /// git-quoted when the name is not UTF-8 (see [`crate::path_text`]).
    pub file: String,
    /// 1-based first line of the original step text, in the file as the session loaded it.
    pub start_line: usize,
    /// 1-based last line of the original step text, inclusive.
    pub end_line: usize,
    /// `sha256_hex(original_text(file, start_line, end_line))`.
    pub original_sha256: String,
    /// The replacement as typed (dedented, '\n' line ends); empty deletes the step.
    pub new_text: String,
    /// The step's indentation in the file ("    ", "\t", ...).
    pub indent: String,
    /// pytest node id of the test the step belongs to.
    pub test_id: String,
    /// The step number as shown to the user.
    pub step_index: usize,
    /// The step's name (its marker name, or its first source line).
    pub step_name: String,
    /// The error the edit fixed, e.g. "AssertionError: assert 3 == 4".
    #[serde(default)]
    pub error: Option<String>,
    /// When the edit was made, RFC 3339 UTC (see [`now_rfc3339`]).
    pub time: String,
    /// For `%%edit NAME`: the function or method replaced, as the user named it
    /// (`Cart.subtotal`); None for a step edit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
}

/// Hex SHA-256 of `text`'s UTF-8 bytes.
pub fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The exact text of lines `start_line..=end_line` (1-based) of `file_content`.
///
/// The lines keep their own terminators ("\n" or "\r\n") except the last line,
/// whose terminator is left out; this is the text `original_sha256` hashes.
/// `None` when the range is empty, 0-based, or past the end of the file.
pub fn original_text(file_content: &str, start_line: usize, end_line: usize) -> Option<String> {
    if start_line == 0 || end_line < start_line {
        return None;
    }
    let lines: Vec<&str> = file_content.split_inclusive('\n').collect();
    if end_line > lines.len() {
        return None;
    }
    let mut text = lines[start_line - 1..end_line].concat();
    let terminator = crate::render::terminator(lines[end_line - 1]);
    text.truncate(text.len() - terminator.len());
    Some(text)
}

/// The edits that count: the last edit of each (file, start_line, end_line) wins,
/// ordered by file, then start line.
pub fn effective_edits(edits: &[Edit]) -> Vec<Edit> {
    let mut last: BTreeMap<(&str, usize, usize), &Edit> = BTreeMap::new();
    for edit in edits {
        last.insert((edit.file.as_str(), edit.start_line, edit.end_line), edit);
    }
    last.into_values().cloned().collect()
}

/// One step's edits, for rendering: the last one's text is what gets written;
/// the earlier ones (same original text) may stand on disk from an earlier `apply`.
pub(crate) struct StepEdits<'a> {
    /// The edit that wins.
    pub last: &'a Edit,
    /// Earlier edits of the step with the same original, newest first.
    pub earlier: Vec<&'a Edit>,
}

/// The edits grouped by step (file, start_line, end_line), ordered by file, then start line.
///
/// Like [`effective_edits`], but each step keeps its history: an earlier edit
/// whose original hash differs from the last one's did not start from the same
/// text, so it is left out of the history.
pub(crate) fn step_edits(edits: &[Edit]) -> Vec<StepEdits<'_>> {
    let mut steps: BTreeMap<(&str, usize, usize), Vec<&Edit>> = BTreeMap::new();
    for edit in edits {
        let key = (edit.file.as_str(), edit.start_line, edit.end_line);
        steps.entry(key).or_default().push(edit);
    }
    steps
        .into_values()
        .filter_map(|mut history| {
            let last = history.pop()?;
            history.retain(|e| e.original_sha256 == last.original_sha256);
            history.reverse();
            Some(StepEdits {
                last,
                earlier: history,
            })
        })
        .collect()
}

/// The current time as RFC 3339 UTC with second precision, e.g. "2025-01-31T09:05:00Z".
///
/// Every event a run writes is stamped with it: the text is made once per
/// second, not once per call.
pub fn now_rfc3339() -> String {
    static LAST: std::sync::Mutex<(u64, String)> = std::sync::Mutex::new((u64::MAX, String::new()));
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if last.0 != secs {
        *last = (secs, rfc3339_from_unix(secs));
    }
    last.1.clone()
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC.
pub(crate) fn rfc3339_from_unix(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil-from-days (H. Hinnant): avoids a date crate for one timestamp.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339_from_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_from_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_from_unix(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339_from_unix(4_102_444_800), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn now_follows_the_clock_across_seconds() {
        let secs = |t: &str| {
            let hms: Vec<u64> = t[11..19].split(':').map(|x| x.parse().unwrap()).collect();
            hms[0] * 3600 + hms[1] * 60 + hms[2]
        };
        let first = now_rfc3339();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let later = now_rfc3339();
        assert_ne!(
            first, later,
            "the once-per-second text must change with the second"
        );
        let step = (secs(&later) + 86_400 - secs(&first)) % 86_400;
        assert!((1..=3).contains(&step), "{first} -> {later}");
    }

    #[test]
    fn original_text_keeps_inner_terminators_only() {
        let content = "a\r\nb\r\nc\r\n";
        assert_eq!(original_text(content, 1, 2).as_deref(), Some("a\r\nb"));
        assert_eq!(original_text("x\ny", 2, 2).as_deref(), Some("y"));
        assert_eq!(original_text("x\ny", 2, 3), None);
        assert_eq!(original_text("x\ny", 0, 1), None);
        assert_eq!(original_text("x\ny", 2, 1), None);
    }

    #[test]
    fn sha256_of_abc() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
