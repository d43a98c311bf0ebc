//! How a file's relative path travels as text in the journal and in patches:
//! as itself when it is UTF-8, otherwise quoted the way git shows such names
//! (`"caf\351.py"`, C escapes and octal bytes), so no byte is lost and every
//! message names the file as `git status` would.

use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// The text form of a relative path given as bytes.
pub fn path_text(path: &OsStr) -> String {
    match std::str::from_utf8(path.as_bytes()) {
        // A UTF-8 name that looks quoted is quoted too, so decoding is exact.
        Ok(text) if !(text.starts_with('"') && text.ends_with('"') && text.len() > 1) => {
            text.to_string()
        }
        _ => quote(path.as_bytes()),
    }
}

/// The path a text form names (the inverse of [`path_text`]).
pub fn text_path(text: &str) -> PathBuf {
    match unquote(text) {
        Some(bytes) => PathBuf::from(std::ffi::OsString::from_vec(bytes)),
        None => PathBuf::from(text),
    }
}

/// Whether a text form is git-quoted (its name is not plain UTF-8).
pub(crate) fn is_quoted(text: &str) -> bool {
    unquote(text).is_some()
}

/// `prefix` joined to a text form, quoted as a whole when the form is quoted
/// (`a/` + `"caf\351.py"` gives `"a/caf\351.py"`, as in git's diff headers).
pub(crate) fn prefixed(prefix: &str, text: &str) -> String {
    if is_quoted(text) {
        format!("\"{prefix}{}", &text[1..])
    } else {
        format!("{prefix}{text}")
    }
}

fn quote(bytes: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in bytes {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out.push('"');
    out
}

fn unquote(text: &str) -> Option<Vec<u8>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next()? {
            b'"' => out.push(b'"'),
            b'\\' => out.push(b'\\'),
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            d @ b'0'..=b'3' => {
                let mut value = u32::from(d - b'0');
                for _ in 0..2 {
                    let d = bytes.next().filter(u8::is_ascii_digit)?;
                    value = value * 8 + u32::from(d - b'0');
                }
                out.push(u8::try_from(value).ok()?);
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_names_are_themselves() {
        assert_eq!(path_text(OsStr::new("shop/café.py")), "shop/café.py");
        assert_eq!(text_path("shop/café.py"), PathBuf::from("shop/café.py"));
    }

    #[test]
    fn other_names_are_quoted_as_git_shows_them_and_come_back_exactly() {
        let raw = OsStr::from_bytes(b"shop/caf\xe9 \"x\"\\.py");
        let text = path_text(raw);
        assert_eq!(text, r#""shop/caf\351 \"x\"\\.py""#);
        assert_eq!(text_path(&text).as_os_str(), raw);
        assert_eq!(prefixed("a/", &text), r#""a/shop/caf\351 \"x\"\\.py""#);
    }

    #[test]
    fn a_utf8_name_that_looks_quoted_survives() {
        let raw = OsStr::new("\"odd\"");
        let text = path_text(raw);
        assert_ne!(text, "\"odd\"");
        assert_eq!(text_path(&text).as_os_str(), raw);
    }

    #[test]
    fn every_byte_round_trips() {
        let raw: Vec<u8> = (1..=255u8).filter(|&b| b != b'/').collect();
        let raw = OsStr::from_bytes(&raw);
        assert_eq!(text_path(&path_text(raw)).as_os_str(), raw);
    }
}
