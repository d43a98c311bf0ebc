//! HMAC-SHA256 message signatures, checked in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies the four signed frames of a Jupyter message.
#[derive(Clone)]
pub struct Signer {
    mac: Option<HmacSha256>,
}

impl Signer {
    /// A signer for `key`; an empty key disables signing, as in Jupyter.
    pub fn new(key: &str) -> Self {
        let mac = if key.is_empty() {
            None
        } else {
            Some(HmacSha256::new_from_slice(key.as_bytes()).expect("HMAC accepts any key length"))
        };
        Signer { mac }
    }

    /// Whether messages are signed at all.
    pub fn enabled(&self) -> bool {
        self.mac.is_some()
    }

    /// The hex signature of header, parent header, metadata and content.
    pub fn sign(&self, parts: &[&[u8]]) -> String {
        match &self.mac {
            None => String::new(),
            Some(mac) => {
                let mut mac = mac.clone();
                for part in parts {
                    mac.update(part);
                }
                hex(&mac.finalize().into_bytes())
            }
        }
    }

    /// True when `signature` (hex) is right for `parts`; compared in constant time.
    pub fn verify(&self, signature: &[u8], parts: &[&[u8]]) -> bool {
        match &self.mac {
            None => true,
            Some(mac) => {
                let Some(expected) = unhex(signature) else {
                    return false;
                };
                let mut mac = mac.clone();
                for part in parts {
                    mac.update(part);
                }
                mac.verify_slice(&expected).is_ok()
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn unhex(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        // Lowercase only, as jupyter_client compares `hexdigest()`: one valid
        // encoding per message, so the replay check cannot be sidestepped.
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    text.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector() {
        // RFC 4231 test case 2.
        let signer = Signer::new("Jefe");
        assert_eq!(
            signer.sign(&[b"what do ya want ", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn verify_accepts_right_and_rejects_wrong() {
        let signer = Signer::new("secret");
        let sig = signer.sign(&[b"a", b"b"]);
        assert!(signer.verify(sig.as_bytes(), &[b"a", b"b"]));
        assert!(!signer.verify(sig.as_bytes(), &[b"a", b"c"]));
        assert!(!signer.verify(b"", &[b"a", b"b"]));
        assert!(!signer.verify(b"zz", &[b"a", b"b"]));
        let other = Signer::new("other").sign(&[b"a", b"b"]);
        assert!(!signer.verify(other.as_bytes(), &[b"a", b"b"]));
    }

    #[test]
    fn upper_case_hex_is_rejected() {
        let signer = Signer::new("secret");
        let sig = signer.sign(&[b"a"]);
        assert!(sig.bytes().any(|c| c.is_ascii_lowercase()), "{sig}");
        assert!(!signer.verify(sig.to_ascii_uppercase().as_bytes(), &[b"a"]));
        assert!(signer.verify(sig.as_bytes(), &[b"a"]));
    }

    #[test]
    fn empty_key_disables_signing() {
        let signer = Signer::new("");
        assert!(!signer.enabled());
        assert_eq!(signer.sign(&[b"x"]), "");
        assert!(signer.verify(b"", &[b"x"]));
    }
}
