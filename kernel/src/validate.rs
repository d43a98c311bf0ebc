//! Request contents checked against the messaging specification before they
//! reach the worker: a signed but malformed request gets an error reply and
//! never ends (or confuses) a paused test.

use serde_json::{Map, Value};

/// The name clients show for a refused request (`ename`).
pub const ENAME: &str = "InvalidRequest";

/// Checks `content` of a request of type `msg_type`; the error says what is
/// wrong, naming the field (the reply's `evalue`).
pub fn check(msg_type: &str, content: &Value) -> Result<(), String> {
    let Some(fields) = content.as_object() else {
        return Err(format!(
            "{msg_type}: the content must be a JSON object, not {}",
            kind(content)
        ));
    };
    let c = Fields { msg_type, fields };
    match msg_type {
        "execute_request" => {
            c.string("code", true)?;
            for flag in ["silent", "store_history", "allow_stdin", "stop_on_error"] {
                c.boolean(flag)?;
            }
            if let Some(exprs) = c.get("user_expressions") {
                let Some(map) = exprs.as_object() else {
                    return Err(c.wrong(
                        "user_expressions",
                        "an object mapping names to expressions",
                        exprs,
                    ));
                };
                if let Some((name, value)) = map.iter().find(|(_, v)| !v.is_string()) {
                    return Err(format!(
                        "{msg_type}: user_expressions[{name:?}] must be a string (an expression), not {}",
                        kind(value)
                    ));
                }
            }
        }
        "complete_request" | "inspect_request" => {
            let code = c.string("code", true)?.unwrap_or("");
            c.cursor_pos(code)?;
            if msg_type == "inspect_request" {
                if let Some(level) = c.get("detail_level") {
                    if !matches!(level.as_u64(), Some(0 | 1)) {
                        return Err(c.wrong("detail_level", "0 or 1", level));
                    }
                }
            }
        }
        "is_complete_request" => {
            c.string("code", true)?;
        }
        "history_request" => {
            for flag in ["output", "raw", "unique"] {
                c.boolean(flag)?;
            }
            if let Some(access) = c.string("hist_access_type", false)? {
                if !matches!(access, "range" | "tail" | "search") {
                    return Err(format!(
                        "{msg_type}: hist_access_type must be \"range\", \"tail\" or \"search\", not {access:?}"
                    ));
                }
            }
            for number in ["session", "start", "stop", "n"] {
                c.integer(number)?;
            }
            c.string("pattern", false)?;
        }
        "comm_info_request" => {
            c.string("target_name", false)?;
        }
        "shutdown_request" => c.boolean("restart")?,
        "input_reply" => {
            c.string("value", true)?;
        }
        _ => {}
    }
    Ok(())
}

/// The cursor position a complete or inspect request means: its
/// `cursor_pos`, or the end of the code when absent or null (as
/// jupyter_client sends it). Assumes [`check`] passed.
pub fn cursor_pos(content: &Value) -> u64 {
    let code = content.get("code").and_then(Value::as_str).unwrap_or("");
    content
        .get("cursor_pos")
        .and_then(Value::as_u64)
        .unwrap_or(code.chars().count() as u64)
}

struct Fields<'a> {
    msg_type: &'a str,
    fields: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.fields.get(name)
    }

    fn wrong(&self, name: &str, expected: &str, found: &Value) -> String {
        format!(
            "{}: {name} must be {expected}, not {}",
            self.msg_type,
            kind(found)
        )
    }

    fn string(&self, name: &str, required: bool) -> Result<Option<&'a str>, String> {
        match self.get(name) {
            None if required => Err(format!(
                "{}: {name} is missing (it must be a string)",
                self.msg_type
            )),
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(other) => Err(self.wrong(name, "a string", other)),
        }
    }

    fn boolean(&self, name: &str) -> Result<(), String> {
        match self.get(name) {
            None | Some(Value::Bool(_)) => Ok(()),
            Some(other) => Err(self.wrong(name, "true or false", other)),
        }
    }

    fn integer(&self, name: &str) -> Result<(), String> {
        match self.get(name) {
            None => Ok(()),
            Some(v) if v.is_i64() || v.is_u64() => Ok(()),
            Some(other) => Err(self.wrong(name, "an integer", other)),
        }
    }

    fn cursor_pos(&self, code: &str) -> Result<(), String> {
        let len = code.chars().count() as u64;
        match self.get("cursor_pos") {
            None | Some(Value::Null) => Ok(()),
            Some(v) if v.as_u64().is_some_and(|p| p <= len) => Ok(()),
            Some(other) => Err(format!(
                "{}: cursor_pos must be an integer from 0 to {len} (the length of code in characters), not {}",
                self.msg_type,
                kind(other)
            )),
        }
    }
}

/// A short description of a JSON value for error messages.
fn kind(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if s.chars().count() <= 20 => format!("the string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn well_formed_requests_pass() {
        for (t, c) in [
            (
                "execute_request",
                json!({"code": "1", "silent": false, "user_expressions": {"a": "1"}}),
            ),
            ("complete_request", json!({"code": "pri", "cursor_pos": 3})),
            ("complete_request", json!({"code": "é", "cursor_pos": 1})),
            (
                "inspect_request",
                json!({"code": "x", "cursor_pos": 0, "detail_level": 1}),
            ),
            ("is_complete_request", json!({"code": "if x:"})),
            (
                "history_request",
                json!({"hist_access_type": "tail", "n": 10, "output": false, "raw": true, "session": -1}),
            ),
            ("kernel_info_request", json!({})),
            ("shutdown_request", json!({"restart": false})),
            (
                "comm_info_request",
                json!({"target_name": "jupyter.widget"}),
            ),
        ] {
            assert_eq!(check(t, &c), Ok(()), "{t} {c}");
        }
    }

    #[test]
    fn malformed_requests_are_named() {
        let cases = [
            (
                "execute_request",
                json!({"code": "1", "user_expressions": []}),
                "user_expressions must be an object",
            ),
            (
                "execute_request",
                json!({"code": "1", "user_expressions": {"a": 1}}),
                "user_expressions[\"a\"] must be a string",
            ),
            (
                "execute_request",
                json!({"code": 5}),
                "code must be a string, not 5",
            ),
            ("execute_request", json!({}), "code is missing"),
            (
                "execute_request",
                json!({"code": "1", "silent": "yes"}),
                "silent must be true or false",
            ),
            (
                "execute_request",
                json!([1]),
                "must be a JSON object, not a list",
            ),
            (
                "complete_request",
                json!({"code": "x", "cursor_pos": 1e30}),
                "cursor_pos must be an integer from 0 to 1",
            ),
            (
                "complete_request",
                json!({"code": "x", "cursor_pos": "1"}),
                "not the string \"1\"",
            ),
            (
                "complete_request",
                json!({"code": "x", "cursor_pos": 1.5}),
                "cursor_pos must be",
            ),
            (
                "inspect_request",
                json!({"code": "x", "cursor_pos": 2}),
                "cursor_pos must be",
            ),
            (
                "inspect_request",
                json!({"code": "x", "cursor_pos": -1}),
                "cursor_pos must be",
            ),
            (
                "inspect_request",
                json!({"code": "x", "detail_level": "x"}),
                "detail_level must be 0 or 1",
            ),
            (
                "history_request",
                json!({"hist_access_type": "all"}),
                "hist_access_type must be",
            ),
            (
                "history_request",
                json!({"n": "10"}),
                "n must be an integer",
            ),
            ("input_reply", json!({"value": 3}), "value must be a string"),
        ];
        for (t, c, want) in cases {
            let err = check(t, &c).unwrap_err();
            assert!(err.starts_with(t) && err.contains(want), "{t} {c}: {err}");
        }
    }

    #[test]
    fn cursor_defaults_to_the_end() {
        assert_eq!(cursor_pos(&json!({"code": "héllo"})), 5);
        assert_eq!(cursor_pos(&json!({"code": "abc", "cursor_pos": null})), 3);
        assert_eq!(cursor_pos(&json!({"code": "abc", "cursor_pos": 1})), 1);
    }
}
