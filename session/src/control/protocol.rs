//! The control protocol: checking a request line, shaping a response.

use super::PROTOCOL_VERSION;
use serde_json::{json, Value};

/// A failed request: a code programs can test and a sentence for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// `bad_json`, `bad_request`, `version`, `unknown_verb`, `bad_args`,
    /// `unknown_test`, `state`, `not_supported`, `ended`.
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

pub(super) fn refuse(code: &'static str, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

pub(super) fn response(id: &Value, verb: &str, result: Result<Value, Refusal>) -> Value {
    match result {
        Ok(result) => {
            json!({"v": PROTOCOL_VERSION, "id": id, "ok": true, "verb": verb, "result": result})
        }
        Err(refusal) => json!({"v": PROTOCOL_VERSION, "id": id, "ok": false, "verb": verb,
                               "error": {"code": refusal.code, "message": refusal.message}}),
    }
}

/// A request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    /// The verb.
    pub verb: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// `events`: first line wanted (0-based).
    pub offset: u64,
    /// `events`: stream until the session ends.
    pub follow: bool,
}

/// Checks a request's shape, version and arguments' types.
pub fn parse_request(request: &Value) -> Result<Parsed, Refusal> {
    let Some(object) = request.as_object() else {
        return Err(refuse(
            "bad_request",
            "a request is a JSON object with \"verb\"",
        ));
    };
    match object.get("v") {
        None => {}
        Some(v) if v.as_u64() == Some(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(refuse(
                "version",
                format!(
                "protocol version {v} is not supported (this session speaks {PROTOCOL_VERSION})"
            ),
            ))
        }
    }
    let Some(verb) = object.get("verb").and_then(Value::as_str) else {
        return Err(refuse(
            "bad_request",
            "the request has no \"verb\" (a string); try \"help\"",
        ));
    };
    let args = match object.get("args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => Err(refuse(
                    "bad_args",
                    format!("arguments are strings, not {other}"),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(refuse(
                "bad_args",
                format!("\"args\" is a list of strings, not {other}"),
            ))
        }
    };
    let mut parsed = Parsed {
        verb: verb.to_string(),
        args,
        offset: 0,
        follow: false,
    };
    if verb == "events" {
        parsed.follow = object
            .get("follow")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if let Some(offset) = object.get("offset") {
            parsed.offset = offset.as_u64().ok_or_else(|| {
                refuse("bad_args", format!("offset is a line number, not {offset}"))
            })?;
        }
        for arg in std::mem::take(&mut parsed.args) {
            if arg == "follow" || arg == "--follow" {
                parsed.follow = true;
            } else {
                parsed.offset = arg.parse().map_err(|_| {
                    refuse(
                        "bad_args",
                        format!("usage: events [OFFSET] [follow]; {arg:?} is not a line number"),
                    )
                })?;
            }
        }
    }
    Ok(parsed)
}

pub(super) fn arity(parsed: &Parsed, min: usize, max: usize, usage: &str) -> Result<(), Refusal> {
    let n = parsed.args.len();
    if n < min || n > max {
        return Err(refuse("bad_args", format!("usage: {usage}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked() {
        let ok =
            parse_request(&json!({"v": 1, "verb": "break", "args": ["t.py::test_a", 2]})).unwrap();
        assert_eq!(ok.args, vec!["t.py::test_a", "2"]);
        assert_eq!(
            parse_request(&json!({"v": 2, "verb": "status"}))
                .unwrap_err()
                .code,
            "version"
        );
        assert_eq!(
            parse_request(&json!({"args": []})).unwrap_err().code,
            "bad_request"
        );
        assert_eq!(parse_request(&json!([1])).unwrap_err().code, "bad_request");
        assert_eq!(
            parse_request(&json!({"verb": "set", "args": [{}]}))
                .unwrap_err()
                .code,
            "bad_args"
        );
        let events = parse_request(&json!({"verb": "events", "args": ["12", "follow"]})).unwrap();
        assert_eq!((events.offset, events.follow), (12, true));
        assert_eq!(
            parse_request(&json!({"verb": "events", "args": ["x"]}))
                .unwrap_err()
                .code,
            "bad_args"
        );
    }
}
