//! Replay protection: a bounded history of the signatures already accepted.
//!
//! jupyter_client's `Session` drops a message whose signature it has seen
//! before (its `digest_history`, 2^16 entries); so does this kernel, so a
//! captured, validly signed request cannot be run twice.

use std::collections::{HashSet, VecDeque};

/// How many signatures are remembered by default (jupyter_client's `digest_history_size`).
pub const DEFAULT_HISTORY: usize = 1 << 16;

/// The signatures seen in this session, oldest forgotten first.
#[derive(Debug)]
pub struct DigestHistory {
    // The first 128 bits of each HMAC: unforgeable without the key, and a
    // quarter of the memory of the whole hex string.
    seen: HashSet<u128>,
    order: VecDeque<u128>,
    capacity: usize,
}

impl DigestHistory {
    /// An empty history remembering at most `capacity` signatures.
    pub fn new(capacity: usize) -> Self {
        DigestHistory {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records `signature` (hex); false when it was seen before (a replay).
    pub fn insert(&mut self, signature: &[u8]) -> bool {
        let key = fingerprint(signature);
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// How many signatures are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// True when nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl Default for DigestHistory {
    fn default() -> Self {
        DigestHistory::new(DEFAULT_HISTORY)
    }
}

/// The first 16 bytes of a hex signature (fewer bytes are zero-padded).
fn fingerprint(signature: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    for (i, pair) in signature.chunks(2).take(16).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
        bytes[i] = digit(pair[0]) << 4 | pair.get(1).map_or(0, |c| digit(*c));
    }
    u128::from_be_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_accepted_once() {
        let mut history = DigestHistory::default();
        let sig = b"5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert!(history.insert(sig));
        assert!(!history.insert(sig));
        assert!(history.insert(b"00dcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"));
        assert_eq!(history.len(), 2);
    }

    #[test]
    fn history_is_bounded_and_forgets_the_oldest() {
        let mut history = DigestHistory::new(3);
        let sigs: Vec<String> = (0..5u8).map(|i| format!("{i:032x}{:032x}", 0)).collect();
        for sig in &sigs {
            assert!(history.insert(sig.as_bytes()));
        }
        assert_eq!(history.len(), 3);
        // The two oldest were forgotten; the three newest are still refused.
        assert!(history.insert(sigs[0].as_bytes()));
        assert!(!history.insert(sigs[4].as_bytes()));
    }
}
