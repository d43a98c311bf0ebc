//! MIME headers for the mbox: declare UTF-8, and carry CRLF text through `git am`.
//!
//! `git am` strips a CR before every LF of a plain message, which breaks patches
//! of CRLF files; a base64-encoded body is decoded after that step, so its CRs
//! survive (git notes "quoted CRLF detected" and applies the patch).

/// Adds MIME headers to `mbox`: base64 body when it holds a CR, 8bit when non-ASCII.
pub(crate) fn encode_body(mbox: Vec<u8>) -> Vec<u8> {
    let has_cr = mbox.contains(&b'\r');
    if !has_cr && mbox.is_ascii() {
        return mbox;
    }
    let Some(split) = mbox.windows(2).position(|w| w == b"\n\n") else {
        return mbox;
    };
    let (headers, body) = (&mbox[..split + 1], &mbox[split + 2..]);
    let mut out = Vec::with_capacity(mbox.len() * 4 / 3 + 200);
    out.extend_from_slice(headers);
    out.extend_from_slice(b"MIME-Version: 1.0\nContent-Type: text/plain; charset=UTF-8\n");
    if has_cr {
        out.extend_from_slice(b"Content-Transfer-Encoding: base64\n\n");
        out.extend_from_slice(base64_lines(body).as_bytes());
    } else {
        out.extend_from_slice(b"Content-Transfer-Encoding: 8bit\n\n");
        out.extend_from_slice(body);
    }
    out
}

/// Base64 of `data` in lines of 76 characters, each ending in '\n'.
fn base64_lines(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len() * 4 / 3 + data.len() / 57 + 4);
    for line in data.chunks(57) {
        for group in line.chunks(3) {
            let b = [
                group[0],
                *group.get(1).unwrap_or(&0),
                *group.get(2).unwrap_or(&0),
            ];
            let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
            for i in 0..4 {
                if i <= group.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64_lines(b"f"), "Zg==\n");
        assert_eq!(base64_lines(b"fo"), "Zm8=\n");
        assert_eq!(base64_lines(b"foobar"), "Zm9vYmFy\n");
        assert_eq!(
            base64_lines(&[0u8; 58])
                .lines()
                .map(str::len)
                .collect::<Vec<_>>(),
            [76, 4]
        );
    }

    #[test]
    fn ascii_without_cr_is_untouched() {
        let m = b"From: a\nSubject: b\n\nbody\n".to_vec();
        assert_eq!(encode_body(m.clone()), m);
    }

    #[test]
    fn crlf_bodies_become_base64() {
        let m = encode_body(b"Subject: s\n\nx\r\n".to_vec());
        let text = String::from_utf8(m).unwrap();
        assert!(
            text.contains("Content-Transfer-Encoding: base64\n\neA0K\n"),
            "{text}"
        );
    }
}
