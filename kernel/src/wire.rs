//! Jupyter messages on the wire: identities, `<IDS|MSG>`, signature, four JSON frames, buffers.

use crate::replay::DigestHistory;
use crate::signing::Signer;
use bytes::Bytes;
use serde_json::{json, Value};

/// The frame separating routing identities from the message.
pub const DELIMITER: &[u8] = b"<IDS|MSG>";
/// The messaging protocol version this kernel speaks.
pub const PROTOCOL_VERSION: &str = "5.4";

/// A decoded Jupyter message.
#[derive(Debug, Clone)]
pub struct Message {
    /// ROUTER identities to reply to.
    pub identities: Vec<Bytes>,
    /// `msg_id`, `msg_type`, `session`, `username`, `date`, `version`.
    pub header: Value,
    /// The header of the request this answers (or `{}`).
    pub parent_header: Value,
    /// Free-form metadata.
    pub metadata: Value,
    /// The message body.
    pub content: Value,
    /// Extra binary frames.
    pub buffers: Vec<Bytes>,
}

/// Why an incoming multipart message was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WireError {
    /// No `<IDS|MSG>` delimiter.
    #[error("no <IDS|MSG> delimiter among {0} frames")]
    NoDelimiter(usize),
    /// Fewer than signature + 4 frames after the delimiter.
    #[error("expected a signature and 4 JSON frames after <IDS|MSG>, got {0} frames")]
    TooFewFrames(usize),
    /// Missing or wrong HMAC signature.
    #[error("bad or missing HMAC signature")]
    BadSignature,
    /// A frame is not JSON.
    #[error("frame {frame} is not valid JSON: {error}")]
    BadJson {
        /// Which frame (header, parent_header, metadata, content).
        frame: &'static str,
        /// The parser's message.
        error: String,
    },
    /// The header has no string `msg_type`.
    #[error("header has no msg_type")]
    NoMsgType,
    /// A validly signed message whose signature was already accepted once.
    #[error("replayed message (its signature was already seen in this session)")]
    Replayed,
}

impl Message {
    /// Decodes and verifies `frames` (the whole multipart message, identities first).
    pub fn parse(frames: Vec<Bytes>, signer: &Signer) -> Result<Message, WireError> {
        let count = frames.len();
        let split = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .ok_or(WireError::NoDelimiter(count))?;
        let identities = frames[..split].to_vec();
        let rest = &frames[split + 1..];
        if rest.len() < 5 {
            return Err(WireError::TooFewFrames(rest.len()));
        }
        let signed: [&[u8]; 4] = [&rest[1], &rest[2], &rest[3], &rest[4]];
        if !signer.verify(&rest[0], &signed) {
            return Err(WireError::BadSignature);
        }
        let parse = |frame: &'static str, bytes: &Bytes| -> Result<Value, WireError> {
            serde_json::from_slice(bytes).map_err(|e| WireError::BadJson {
                frame,
                error: e.to_string(),
            })
        };
        let header = parse("header", &rest[1])?;
        if !header.get("msg_type").is_some_and(Value::is_string) {
            return Err(WireError::NoMsgType);
        }
        Ok(Message {
            identities,
            header,
            parent_header: parse("parent_header", &rest[2])?,
            metadata: parse("metadata", &rest[3])?,
            content: parse("content", &rest[4])?,
            buffers: rest[5..].to_vec(),
        })
    }

    /// Like [`Message::parse`], and refuses a signature already in `history`
    /// (a replayed message). Without a key there is nothing to remember, as in
    /// jupyter_client.
    pub fn parse_fresh(
        frames: Vec<Bytes>,
        signer: &Signer,
        history: &std::sync::Mutex<DigestHistory>,
    ) -> Result<Message, WireError> {
        let signature = frames
            .iter()
            .position(|f| f.as_ref() == DELIMITER)
            .and_then(|split| frames.get(split + 1).cloned());
        let msg = Message::parse(frames, signer)?;
        if let (true, Some(signature)) = (signer.enabled(), signature) {
            let mut history = history.lock().unwrap_or_else(|e| e.into_inner());
            if !history.insert(&signature) {
                return Err(WireError::Replayed);
            }
        }
        Ok(msg)
    }

    /// Encodes this message as frames, signing with `signer`.
    pub fn to_frames(&self, signer: &Signer) -> Vec<Bytes> {
        let header = serde_json::to_vec(&self.header).expect("JSON serializes");
        let parent = serde_json::to_vec(&self.parent_header).expect("JSON serializes");
        let metadata = serde_json::to_vec(&self.metadata).expect("JSON serializes");
        let content = serde_json::to_vec(&self.content).expect("JSON serializes");
        let signature = signer.sign(&[&header, &parent, &metadata, &content]);
        let mut frames = self.identities.clone();
        frames.push(Bytes::from_static(DELIMITER));
        frames.push(Bytes::from(signature));
        frames.push(Bytes::from(header));
        frames.push(Bytes::from(parent));
        frames.push(Bytes::from(metadata));
        frames.push(Bytes::from(content));
        frames.extend(self.buffers.iter().cloned());
        frames
    }

    /// The message type, e.g. `execute_request`.
    pub fn msg_type(&self) -> &str {
        self.header
            .get("msg_type")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// A reply or broadcast whose parent is this message.
    pub fn child(&self, msg_type: &str, content: Value, session: &str) -> Message {
        Message {
            identities: self.identities.clone(),
            header: new_header(msg_type, session),
            parent_header: self.header.clone(),
            metadata: json!({}),
            content,
            buffers: Vec::new(),
        }
    }

    /// The request's `content[key]` as a bool (with a default).
    pub fn flag(&self, key: &str, default: bool) -> bool {
        self.content
            .get(key)
            .and_then(Value::as_bool)
            .unwrap_or(default)
    }

    /// The request's `content[key]` as a string (empty if absent).
    pub fn text(&self, key: &str) -> &str {
        self.content.get(key).and_then(Value::as_str).unwrap_or("")
    }
}

/// A fresh header for a message this kernel sends.
pub fn new_header(msg_type: &str, session: &str) -> Value {
    json!({
        "msg_id": uuid::Uuid::new_v4().to_string(),
        "msg_type": msg_type,
        "session": session,
        "username": "stepkernel",
        "date": now_iso8601(),
        "version": PROTOCOL_VERSION,
    })
}

/// The current UTC time as ISO 8601 with microseconds, as Jupyter writes it.
pub fn now_iso8601() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format_epoch(now.as_secs() as i64, now.subsec_micros())
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn format_epoch(secs: i64, micros: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(signer: &Signer) -> Vec<Bytes> {
        let msg = Message {
            identities: vec![Bytes::from_static(b"client-1")],
            header: new_header("kernel_info_request", "s"),
            parent_header: json!({}),
            metadata: json!({}),
            content: json!({}),
            buffers: vec![Bytes::from_static(b"raw")],
        };
        msg.to_frames(signer)
    }

    #[test]
    fn round_trip_with_signature() {
        let signer = Signer::new("key");
        let frames = sample(&signer);
        let msg = Message::parse(frames, &signer).unwrap();
        assert_eq!(msg.msg_type(), "kernel_info_request");
        assert_eq!(msg.identities, vec![Bytes::from_static(b"client-1")]);
        assert_eq!(msg.buffers.len(), 1);
    }

    #[test]
    fn wrong_key_and_tampering_are_rejected() {
        let frames = sample(&Signer::new("other"));
        assert_eq!(
            Message::parse(frames, &Signer::new("key")).unwrap_err(),
            WireError::BadSignature
        );
        let signer = Signer::new("key");
        let mut frames = sample(&signer);
        frames[6] = Bytes::from_static(b"{\"evil\": 1}");
        assert_eq!(
            Message::parse(frames, &signer).unwrap_err(),
            WireError::BadSignature
        );
    }

    #[test]
    fn replayed_message_is_refused() {
        let signer = Signer::new("key");
        let history = std::sync::Mutex::new(DigestHistory::default());
        let frames = sample(&signer);
        assert!(Message::parse_fresh(frames.clone(), &signer, &history).is_ok());
        assert_eq!(
            Message::parse_fresh(frames, &signer, &history).unwrap_err(),
            WireError::Replayed
        );
        // A new message (new msg_id) is fine; a bad signature is not remembered.
        assert!(Message::parse_fresh(sample(&signer), &signer, &history).is_ok());
        let forged = sample(&Signer::new("other"));
        let _ = Message::parse_fresh(forged.clone(), &signer, &history);
        assert_eq!(history.lock().unwrap().len(), 2);
    }

    #[test]
    fn malformed_frames() {
        let signer = Signer::new("");
        assert_eq!(
            Message::parse(vec![Bytes::from_static(b"x")], &signer).unwrap_err(),
            WireError::NoDelimiter(1)
        );
        let short = vec![Bytes::from_static(DELIMITER), Bytes::new()];
        assert_eq!(
            Message::parse(short, &signer).unwrap_err(),
            WireError::TooFewFrames(1)
        );
        let bad = vec![
            Bytes::from_static(DELIMITER),
            Bytes::new(),
            Bytes::from_static(b"{not json"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
        ];
        assert!(matches!(
            Message::parse(bad, &signer).unwrap_err(),
            WireError::BadJson {
                frame: "header",
                ..
            }
        ));
        let no_type = vec![
            Bytes::from_static(DELIMITER),
            Bytes::new(),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
            Bytes::from_static(b"{}"),
        ];
        assert_eq!(
            Message::parse(no_type, &signer).unwrap_err(),
            WireError::NoMsgType
        );
    }

    #[test]
    fn dates() {
        assert_eq!(format_epoch(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            format_epoch(1_700_000_000, 5),
            "2023-11-14T22:13:20.000005Z"
        );
    }
}
