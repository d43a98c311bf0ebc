//! The pause snapshot the worker sends at each pause (and after anything run
//! in the paused test): the test's frames with their scopes' variables, so
//! `stackTrace`, `scopes` and `variables` are answered without the worker.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One variable as DAP shows it (`variablesReference` 0: not expandable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Variable {
    /// Its name (an index or a key's repr for children).
    pub name: String,
    /// A short repr.
    pub value: String,
    /// The type's name.
    #[serde(rename = "type", default)]
    pub type_name: String,
    /// Where its children are (0: none).
    #[serde(default)]
    pub variables_reference: u64,
    /// An expression giving it in the paused namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluate_name: Option<String>,
    /// How many indexed children it has (lists), for paging clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexed_variables: Option<u64>,
    /// How many named children it has (dicts, objects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_variables: Option<u64>,
}

/// A scope of a frame (`Locals`, `Globals`) with its variables.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scope {
    /// Shown as the scope's title.
    pub name: String,
    /// Its reference (unique within the snapshot).
    pub variables_reference: u64,
    /// Its variables, in order.
    #[serde(default)]
    pub variables: Vec<Variable>,
}

/// One frame: the test function first, then the code under test down to the raise.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Frame {
    /// Its id (fresh in every snapshot).
    pub id: u64,
    /// The function's qualified name.
    pub name: String,
    /// The real file's absolute path.
    pub path: String,
    /// The current line (1-based).
    pub line: u64,
    /// Its scopes.
    #[serde(default)]
    pub scopes: Vec<Scope>,
}

/// The state of a paused test as the debugger shows it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Snapshot {
    /// Why the test paused: the engine's reason (`error`, `breakpoint`, `pause`, `next`...).
    #[serde(default)]
    pub reason: String,
    /// The error (`Type: message`), when it paused on one.
    #[serde(default)]
    pub error: Option<String>,
    /// The test's node id.
    #[serde(default)]
    pub test: String,
    /// The frames.
    #[serde(default)]
    pub frames: Vec<Frame>,
}

/// The one thread a stepkernel run has.
pub const THREAD_ID: u64 = 1;

impl Snapshot {
    /// Reads the worker's snapshot.
    pub fn from_value(value: &Value) -> Result<Snapshot, serde_json::Error> {
        Snapshot::deserialize(value)
    }

    /// The DAP `stopped` reason for the engine's pause reason.
    pub fn stopped_reason(&self) -> &'static str {
        match self.reason.as_str() {
            "error" => "exception",
            "breakpoint" => "breakpoint",
            "pause" | "interrupt" => "pause",
            "loaded" => "entry",
            _ => "step",
        }
    }

    /// The `stopped` event's body.
    pub fn stopped_body(&self) -> Value {
        let mut body = json!({"reason": self.stopped_reason(), "threadId": THREAD_ID,
                              "allThreadsStopped": true, "preserveFocusHint": false});
        let text = self.error.clone().unwrap_or_else(|| self.reason.clone());
        body["description"] = json!(format!("Paused ({}) in {}", self.reason, self.test));
        body["text"] = json!(text);
        body
    }

    /// `stackTrace`'s body.
    pub fn stack_trace(&self) -> Value {
        let frames: Vec<Value> = self
            .frames
            .iter()
            .map(|f| {
                let name = std::path::Path::new(&f.path)
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                json!({"id": f.id, "name": f.name, "line": f.line, "column": 1,
                       "source": {"name": name, "path": f.path}})
            })
            .collect();
        json!({"stackFrames": frames, "totalFrames": self.frames.len()})
    }

    /// `scopes`' body for a frame, if it is in this snapshot.
    pub fn scopes(&self, frame_id: u64) -> Option<Value> {
        let frame = self.frames.iter().find(|f| f.id == frame_id)?;
        let scopes: Vec<Value> = frame
            .scopes
            .iter()
            .map(|s| {
                json!({"name": s.name, "variablesReference": s.variables_reference,
                       "expensive": false, "namedVariables": s.variables.len(),
                       "presentationHint": if s.name == "Locals" { "locals" } else { "globals" }})
            })
            .collect();
        Some(json!({"scopes": scopes}))
    }

    /// A scope's variables, if `reference` is one of this snapshot's scopes.
    pub fn scope_variables(&self, reference: u64) -> Option<&[Variable]> {
        self.frames
            .iter()
            .flat_map(|f| &f.scopes)
            .find(|s| s.variables_reference == reference)
            .map(|s| s.variables.as_slice())
    }

    /// The test's own variables (frame 0's first scope), for `inspectVariables`.
    pub fn test_locals(&self) -> &[Variable] {
        self.frames
            .first()
            .and_then(|f| f.scopes.first())
            .map_or(&[], |s| s.variables.as_slice())
    }

    /// Whether `frame_id` is one of this snapshot's frames.
    pub fn has_frame(&self, frame_id: u64) -> bool {
        self.frames.iter().any(|f| f.id == frame_id)
    }
}

/// `variables`' arguments `start`/`count` applied (DAP paging).
pub fn page(variables: &[Variable], start: Option<u64>, count: Option<u64>) -> Vec<Variable> {
    let start = start.unwrap_or(0) as usize;
    let count = match count {
        Some(0) | None => usize::MAX,
        Some(n) => n as usize,
    };
    variables.iter().skip(start).take(count).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> Snapshot {
        Snapshot::from_value(&json!({
            "reason": "error", "error": "AssertionError: assert 2 == 3", "test": "t.py::test_a",
            "frames": [
                {"id": 11, "name": "test_a", "path": "/p/t.py", "line": 7, "scopes": [
                    {"name": "Locals", "variablesReference": 12, "variables": [
                        {"name": "basket", "value": "['a', 'b']", "type": "list", "variablesReference": 14,
                         "evaluateName": "basket", "indexedVariables": 2},
                        {"name": "n", "value": "2", "type": "int", "variablesReference": 0}]},
                    {"name": "Globals", "variablesReference": 13, "variables": []}]},
                {"id": 21, "name": "Cart.total", "path": "/p/cart.py", "line": 3, "scopes": []}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn answers_stack_scopes_and_variables() {
        let s = sample();
        let stack = s.stack_trace();
        assert_eq!(stack["stackFrames"][0]["name"], "test_a");
        assert_eq!(stack["stackFrames"][0]["line"], 7);
        assert_eq!(stack["stackFrames"][0]["source"]["path"], "/p/t.py");
        assert_eq!(stack["stackFrames"][1]["source"]["name"], "cart.py");
        let scopes = s.scopes(11).unwrap();
        assert_eq!(scopes["scopes"][0]["name"], "Locals");
        assert_eq!(scopes["scopes"][1]["variablesReference"], 13);
        assert!(s.scopes(99).is_none());
        let locals = s.scope_variables(12).unwrap();
        assert_eq!(locals[0].name, "basket");
        let shown = serde_json::to_value(&locals[0]).unwrap();
        assert_eq!(shown["variablesReference"], 14);
        assert_eq!(shown["type"], "list");
        assert!(s.scope_variables(14).is_none(), "children are the worker's");
        assert_eq!(s.stopped_reason(), "exception");
        assert_eq!(s.stopped_body()["text"], "AssertionError: assert 2 == 3");
    }

    #[test]
    fn pages_variables() {
        let s = sample();
        let all = s.scope_variables(12).unwrap();
        assert_eq!(page(all, Some(1), Some(5)).len(), 1);
        assert_eq!(page(all, None, None).len(), 2);
        assert_eq!(page(all, Some(0), Some(1))[0].name, "basket");
    }
}
