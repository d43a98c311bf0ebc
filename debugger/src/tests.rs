use super::*;
use std::collections::HashMap;

struct FakeFiles(HashMap<PathBuf, (String, Value)>);

impl Files for FakeFiles {
    fn steps_report(&self, path: &Path) -> Option<Value> {
        self.0.get(path).map(|(_, r)| r.clone())
    }
    fn read(&self, path: &Path) -> Option<String> {
        self.0.get(path).map(|(t, _)| t.clone())
    }
}

fn files() -> FakeFiles {
    let report = json!({
        "tests": [{"id": "t.py::test_a", "phases": [{"name": "test_a", "function": "test_a"}]}],
        "functions": [{"qualname": "test_a", "def_line": 1, "end_line": 4, "steps": [
            {"index": 0, "start_line": 2, "end_line": 2},
            {"index": 1, "start_line": 3, "end_line": 4}]}]});
    let text = "def test_a():\n    x = 1\n    y = 2\n    assert x == y\n".to_string();
    FakeFiles(HashMap::from([(PathBuf::from("/p/t.py"), (text, report))]))
}

const LISTENS: RunView = RunView {
    worker_listens: true,
};

fn request(seq: u64, command: &str, arguments: Value) -> Value {
    json!({"type": "request", "seq": seq, "command": command, "arguments": arguments})
}

fn reply(action: Action) -> (Value, Vec<Value>) {
    match action {
        Action::Reply { response, events } => (response, events),
        Action::Breakpoints { response, .. } => (response, Vec::new()),
        other => panic!("not a reply: {other:?}"),
    }
}

fn snapshot() -> Snapshot {
    Snapshot::from_value(
        &json!({"reason": "error", "error": "AssertionError", "test": "t.py::test_a",
        "frames": [{"id": 5, "name": "test_a", "path": "/p/t.py", "line": 4, "scopes": [
            {"name": "Locals", "variablesReference": 6, "variables": [
                {"name": "x", "value": "1", "type": "int", "variablesReference": 0}]},
            {"name": "Globals", "variablesReference": 7, "variables": []}]}]}),
    )
    .unwrap()
}

#[test]
fn debug_info_says_paused_so_jupyterlab_opens_the_debugger() {
    let mut d = Debugger::new("/tmp/stepkernel_1/");
    let (r, _) = reply(d.handle(&request(0, "debugInfo", json!({})), LISTENS, &files()));
    assert_eq!(r["body"]["stoppedThreads"], json!([]));
    assert_eq!(r["body"]["hashMethod"], "Murmur2");
    d.on_snapshot(snapshot());
    let (r, _) = reply(d.handle(&request(1, "debugInfo", json!({})), LISTENS, &files()));
    assert_eq!(r["body"]["stoppedThreads"], json!([1]));
    assert_eq!(r["body"]["isStarted"], false);
    assert!(r["body"]["breakpoints"].is_array());
}

#[test]
fn attach_when_paused_sends_stopped_and_events_follow_the_run() {
    let mut d = Debugger::new("/tmp/x/");
    assert!(
        d.on_snapshot(snapshot()).is_empty(),
        "no events before initialize"
    );
    let (r, events) = reply(d.handle(&request(1, "initialize", json!({})), LISTENS, &files()));
    assert_eq!(r["success"], true);
    assert_eq!(
        r["body"]["exceptionBreakpointFilters"][0]["filter"],
        "let-steps-fail"
    );
    assert_eq!(events[0]["event"], "initialized");
    let (_, events) = reply(d.handle(&request(2, "attach", json!({})), LISTENS, &files()));
    assert_eq!(events[0]["event"], "stopped");
    assert_eq!(events[0]["body"]["reason"], "exception");
    let continued = d.on_resumed();
    assert_eq!(continued[0]["event"], "continued");
    assert!(d.on_resumed().is_empty(), "once per resume");
    assert_eq!(d.on_terminated()[0]["event"], "terminated");
}

#[test]
fn stack_scopes_variables_from_the_snapshot_children_from_the_worker() {
    let mut d = Debugger::new("/tmp/x/");
    d.on_snapshot(snapshot());
    let (r, _) = reply(d.handle(
        &request(1, "stackTrace", json!({"threadId": 1})),
        LISTENS,
        &files(),
    ));
    assert_eq!(r["body"]["stackFrames"][0]["line"], 4);
    let (r, _) = reply(d.handle(
        &request(2, "scopes", json!({"frameId": 5})),
        LISTENS,
        &files(),
    ));
    assert_eq!(r["body"]["scopes"][0]["variablesReference"], 6);
    let (r, _) = reply(d.handle(
        &request(3, "variables", json!({"variablesReference": 6})),
        LISTENS,
        &files(),
    ));
    assert_eq!(r["body"]["variables"][0]["name"], "x");
    assert!(matches!(
        d.handle(
            &request(4, "variables", json!({"variablesReference": 99})),
            LISTENS,
            &files()
        ),
        Action::Worker(_)
    ));
    let (r, _) = reply(d.handle(
        &request(5, "scopes", json!({"frameId": 1})),
        LISTENS,
        &files(),
    ));
    assert_eq!(r["success"], false);
    assert!(matches!(
        d.handle(
            &request(6, "evaluate", json!({"expression": "x"})),
            LISTENS,
            &files()
        ),
        Action::Worker(_)
    ));
}

#[test]
fn breakpoints_map_to_steps_and_move_to_their_first_line() {
    let mut d = Debugger::new("/tmp/x/");
    let action = d.handle(
        &request(
            1,
            "setBreakpoints",
            json!({"source": {"path": "/p/t.py"}, "breakpoints": [{"line": 4}, {"line": 9}]}),
        ),
        LISTENS,
        &files(),
    );
    let Action::Breakpoints {
        response,
        source,
        items,
    } = action
    else {
        panic!()
    };
    assert_eq!(source.as_deref(), Some("/p/t.py"));
    assert_eq!(
        items,
        vec![
            json!({"test": null, "phase": "test_a", "step": 1, "file": "t.py", "source": "/p/t.py"})
        ]
    );
    let bps = &response["body"]["breakpoints"];
    assert_eq!(
        (bps[0]["verified"].clone(), bps[0]["line"].clone()),
        (json!(true), json!(3))
    );
    assert_eq!(bps[1]["verified"], false);
    assert!(bps[1]["message"]
        .as_str()
        .unwrap()
        .contains("not in a test function"));
    let (info, _) = reply(d.handle(&request(2, "debugInfo", json!({})), LISTENS, &files()));
    assert_eq!(info["body"]["breakpoints"][0]["source"], "/p/t.py");
}

#[test]
fn dumped_text_of_a_test_file_takes_its_breakpoints() {
    let mut d = Debugger::new("/tmp/x/");
    d.note_test_file(PathBuf::from("/p/t.py"));
    let text = files().read(Path::new("/p/t.py")).unwrap();
    let (r, _) = reply(d.handle(
        &request(1, "dumpCell", json!({"code": text})),
        LISTENS,
        &files(),
    ));
    let path = r["body"]["sourcePath"].as_str().unwrap().to_string();
    assert!(path.starts_with("/tmp/x/"));
    let action = d.handle(
        &request(
            2,
            "setBreakpoints",
            json!({"source": {"path": path}, "breakpoints": [{"line": 2}]}),
        ),
        LISTENS,
        &files(),
    );
    let Action::Breakpoints { items, .. } = action else {
        panic!()
    };
    assert_eq!(items[0]["step"], 0);
    let (r, _) = reply(d.handle(
        &request(3, "source", json!({"source": {"path": path}})),
        LISTENS,
        &files(),
    ));
    assert_eq!(r["body"]["content"], json!(text));
    // A notebook cell is no test file: refused, with a reason.
    let (r, _) = reply(d.handle(
        &request(4, "dumpCell", json!({"code": "x = 1"})),
        LISTENS,
        &files(),
    ));
    let cell = r["body"]["sourcePath"].as_str().unwrap().to_string();
    let action = d.handle(
        &request(
            5,
            "setBreakpoints",
            json!({"source": {"path": cell}, "breakpoints": [{"line": 1}]}),
        ),
        LISTENS,
        &files(),
    );
    let Action::Breakpoints {
        response, items, ..
    } = action
    else {
        panic!()
    };
    assert!(items.is_empty());
    assert_eq!(response["body"]["breakpoints"][0]["verified"], false);
}

#[test]
fn unknown_and_malformed_requests_fail_with_a_message() {
    let mut d = Debugger::new("/tmp/x/");
    for content in [
        request(1, "restartFrame", json!({})),
        request(2, "stepIn", json!({"threadId": 1})),
        json!({"type": "request", "seq": 3}),
        json!({"type": "request", "seq": 4, "command": "scopes", "arguments": "x"}),
        json!([1, 2]),
        request(5, "scopes", json!({})),
        request(6, "continue", json!({"threadId": 1})),
    ] {
        let (r, _) = reply(d.handle(&content, LISTENS, &files()));
        assert_eq!(r["success"], false, "{content}");
        assert!(!r["message"].as_str().unwrap().is_empty());
        assert_eq!(r["type"], "response");
    }
}

#[test]
fn continue_and_next_steer_only_while_paused() {
    let mut d = Debugger::new("/tmp/x/");
    d.on_snapshot(snapshot());
    let action = d.handle(
        &request(1, "next", json!({"threadId": 1})),
        LISTENS,
        &files(),
    );
    let Action::Steer(req, Steer::Resume("next")) = action else {
        panic!("{action:?}")
    };
    assert_eq!(d.steered(&req, Ok(()))["success"], true);
    assert_eq!(d.steered(&req, Err("busy".into()))["message"], "busy");
}

#[test]
fn the_exception_filter_switches_on_error_only_when_it_changes() {
    let mut d = Debugger::new("/tmp/x/");
    // JupyterLab's attach-time default (no filters) is the run's default: nothing to steer.
    let (r, _) = reply(d.handle(
        &request(1, "setExceptionBreakpoints", json!({"filters": []})),
        LISTENS,
        &files(),
    ));
    assert_eq!(r["success"], true);
    let action = d.handle(
        &request(
            2,
            "setExceptionBreakpoints",
            json!({"filters": ["let-steps-fail"]}),
        ),
        LISTENS,
        &files(),
    );
    let Action::Steer(req, Steer::OnError("fail")) = action else {
        panic!("{action:?}")
    };
    d.set_on_error_pauses(false); // as the kernel does when it steers
    assert_eq!(
        d.steered(&req, Ok(()))["body"]["breakpoints"][0]["verified"],
        true
    );
    let action = d.handle(
        &request(3, "setExceptionBreakpoints", json!({"filters": []})),
        LISTENS,
        &files(),
    );
    assert!(matches!(action, Action::Steer(_, Steer::OnError("pause"))));
    let (r, _) = reply(d.handle(
        &request(4, "setExceptionBreakpoints", json!({"filters": ["raised"]})),
        LISTENS,
        &files(),
    ));
    assert_eq!(r["success"], false);
}
