//! DAP requests as they arrive in a `debug_request`, and the responses and
//! events sent back (Debug Adapter Protocol, as Jupyter messaging 5.5 carries it).

use serde_json::{json, Map, Value};

/// Why a `debug_request`'s content is not a DAP request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RequestError {
    /// The content is not a JSON object.
    #[error("a debug_request's content must be a DAP request object")]
    NotAnObject,
    /// `type` is missing or not `"request"`.
    #[error("a DAP request has \"type\": \"request\" (got {0})")]
    NotARequest(String),
    /// `command` is missing or not a string.
    #[error("a DAP request needs a \"command\" string")]
    NoCommand,
    /// `arguments` is present but not an object.
    #[error("the arguments of {0:?} must be an object")]
    BadArguments(String),
}

/// One DAP request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The client's sequence number (answered as `request_seq`).
    pub seq: u64,
    /// The command (`stackTrace`, `variables`...).
    pub command: String,
    /// Its arguments (an empty object when absent).
    pub arguments: Value,
}

impl Request {
    /// Parses a `debug_request`'s content. On error, the `seq` and `command`
    /// that could be read are returned too, so the error reply can name them.
    pub fn parse(content: &Value) -> Result<Request, (RequestError, u64, String)> {
        let seq = content.get("seq").and_then(Value::as_u64).unwrap_or(0);
        let command = content
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let Some(object) = content.as_object() else {
            return Err((RequestError::NotAnObject, seq, command));
        };
        match object.get("type") {
            Some(Value::String(t)) if t == "request" => {}
            other => {
                let got = other.map_or("nothing".to_string(), Value::to_string);
                return Err((RequestError::NotARequest(got), seq, command));
            }
        }
        if command.is_empty() {
            return Err((RequestError::NoCommand, seq, command));
        }
        let arguments = match object.get("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => {
                return Err((RequestError::BadArguments(command.clone()), seq, command));
            }
        };
        Ok(Request {
            seq,
            command,
            arguments,
        })
    }

    /// An argument as text.
    pub fn str_arg(&self, name: &str) -> Option<&str> {
        self.arguments.get(name).and_then(Value::as_str)
    }

    /// An argument as an unsigned integer.
    pub fn u64_arg(&self, name: &str) -> Option<u64> {
        self.arguments.get(name).and_then(Value::as_u64)
    }
}

/// Numbers the messages the adapter sends (responses and events share one sequence).
#[derive(Debug, Default)]
pub struct Sequence {
    next: u64,
}

impl Sequence {
    fn take(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// A successful response to the request `(seq, command)` with `body`.
    pub fn success(&mut self, request_seq: u64, command: &str, body: Value) -> Value {
        json!({"seq": self.take(), "type": "response", "request_seq": request_seq,
               "command": command, "success": true, "body": body})
    }

    /// A failed response with a message the client shows.
    pub fn failure(&mut self, request_seq: u64, command: &str, message: &str) -> Value {
        json!({"seq": self.take(), "type": "response", "request_seq": request_seq,
               "command": command, "success": false, "message": message, "body": {}})
    }

    /// An event.
    pub fn event(&mut self, event: &str, body: Value) -> Value {
        json!({"seq": self.take(), "type": "event", "event": event, "body": body})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_request_and_defaults_arguments() {
        let r =
            Request::parse(&json!({"type": "request", "seq": 3, "command": "debugInfo"})).unwrap();
        assert_eq!(r.seq, 3);
        assert_eq!(r.command, "debugInfo");
        assert_eq!(r.arguments, json!({}));
    }

    #[test]
    fn refuses_what_is_not_a_request() {
        let (err, seq, command) =
            Request::parse(&json!({"type": "event", "seq": 9, "command": "x"})).unwrap_err();
        assert!(matches!(err, RequestError::NotARequest(_)));
        assert_eq!((seq, command.as_str()), (9, "x"));
        assert!(matches!(
            Request::parse(&json!({"type": "request", "seq": 1}))
                .unwrap_err()
                .0,
            RequestError::NoCommand
        ));
        assert!(matches!(
            Request::parse(&json!({"type": "request", "command": "scopes", "arguments": [1]}))
                .unwrap_err()
                .0,
            RequestError::BadArguments(_)
        ));
        assert!(matches!(
            Request::parse(&json!("text")).unwrap_err().0,
            RequestError::NotAnObject
        ));
    }

    #[test]
    fn responses_and_events_share_one_sequence() {
        let mut seq = Sequence::default();
        let ok = seq.success(4, "attach", json!({}));
        let ev = seq.event("stopped", json!({"threadId": 1}));
        let no = seq.failure(5, "stepIn", "no");
        assert_eq!(
            (ok["seq"].as_u64(), ev["seq"].as_u64(), no["seq"].as_u64()),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(ok["request_seq"], 4);
        assert_eq!(no["success"], false);
        assert_eq!(no["message"], "no");
    }
}
