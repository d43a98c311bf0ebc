//! What each verb does: queries from the hooks' state, steering through the
//! kernel's `Steering` handle (the path the magics take).

use super::protocol::{arity, refuse, Parsed, Refusal};
use super::{read_events, Context};
use crate::hooks::RunHooks;
use kernel::steer::{self, SteerCommand, SteerError};
use serde_json::{json, Value};

/// Most events one non-follow `events` answer carries (page on with `offset`).
const EVENTS_PAGE: usize = 10_000;

/// What `queue` and `rerun` answer until the run's pytest plugin says (with
/// a `queue_ready` event) that it runs queued tests.
pub const NOT_SUPPORTED_QUEUE: &str =
    "queue add/remove and rerun failed need a session that takes \
queued tests (the pytest runner, once its tests are collected; not --runner unittest). Run them in \
a new session (`stepkernel run NODEID...`, or stepkernel.client.Job)";

/// Every verb, with its arguments, as `help` lists them.
pub const VERBS: &[(&str, &str)] = &[
    (
        "status",
        "state, test and step running or paused (file:line), done/total, counts, elapsed, failures",
    ),
    ("tests", "the tests seen so far with their status"),
    (
        "steps TEST",
        "a test's steps (instrumenter) with the status of those that ran",
    ),
    (
        "events [OFFSET] [follow]",
        "events.jsonl from line OFFSET; follow streams until the session ends",
    ),
    ("pause", "pause before the next step"),
    (
        "continue | next | retry | skip | fail | abort",
        "resume a paused test (as the magics do)",
    ),
    (
        "break TEST STEP [PHASE]",
        "pause before step STEP of TEST (0-based, as `steps` shows)",
    ),
    ("clear", "remove every breakpoint"),
    (
        "set on_error pause|fail [TEST]",
        "pause on errors or let them fail, for the rest of the run or one test",
    ),
    (
        "queue add|remove NODEID...",
        "run more tests in this session after the selected ones (pytest runner)",
    ),
    (
        "rerun failed",
        "queue the tests that failed so far (pytest runner)",
    ),
    ("help", "this list"),
];

fn steer_refusal(err: SteerError) -> Refusal {
    match err {
        SteerError::State(why) => refuse("state", why),
        SteerError::Unsupported(why) => refuse("not_supported", why),
        SteerError::Ended => refuse("ended", "the session ended before it could answer"),
    }
}

pub(super) async fn answer(context: &Context, parsed: &Parsed) -> Result<Value, Refusal> {
    let hooks = &context.hooks;
    let steer = |command| async { context.steering.send(command).await.map_err(steer_refusal) };
    match parsed.verb.as_str() {
        "status" => {
            arity(parsed, 0, 0, "status")?;
            Ok(hooks.status())
        }
        "tests" => {
            arity(parsed, 0, 0, "tests")?;
            Ok(hooks.with_live(|live| live.tests_json()))
        }
        "steps" => {
            arity(parsed, 1, 1, "steps TEST")?;
            let test = find_test(hooks, &parsed.args[0])?;
            let ran = hooks.with_live(|live| live.steps_run(&parsed.args[0]));
            Ok(
                json!({"test": parsed.args[0], "phases": test.get("phases"), "ran": ran.unwrap_or_default()}),
            )
        }
        "events" => {
            hooks.flush_events();
            let (events, next) = read_events(&hooks.context().dir, parsed.offset, EVENTS_PAGE);
            let more = events.len() == EVENTS_PAGE;
            Ok(json!({"events": events, "next_offset": next, "more": more}))
        }
        "help" => Ok(json!(VERBS
            .iter()
            .map(|(usage, what)| json!({"verb": usage, "help": what}))
            .collect::<Vec<_>>())),
        "pause" => {
            arity(parsed, 0, 0, "pause")?;
            Ok(json!({"message": steer(SteerCommand::Pause).await?}))
        }
        action if steer::RESUME_ACTIONS.contains(&action) || action == "resume" => {
            arity(parsed, 0, 0, action)?;
            let action = if action == "resume" {
                "continue"
            } else {
                action
            };
            let message = steer(SteerCommand::Resume(action.into())).await?;
            Ok(json!({"message": message, "action": action}))
        }
        "break" => {
            arity(parsed, 2, 3, "break TEST STEP [PHASE]")?;
            let (test, step) = (&parsed.args[0], &parsed.args[1]);
            let step: u64 = step.parse().map_err(|_| {
                refuse("bad_args", format!("usage: break TEST STEP [PHASE]; STEP is a step number (0-based), not {step:?}"))
            })?;
            let phase = parsed.args.get(2).cloned();
            let report = find_test(hooks, test)?;
            check_step(&report, test, step, phase.as_deref())?;
            let item = json!({"test": test, "phase": phase, "step": step});
            let message = steer(SteerCommand::AddBreakpoint(item.clone())).await?;
            Ok(json!({"message": message, "breakpoint": item}))
        }
        "clear" => {
            arity(parsed, 0, 0, "clear")?;
            Ok(json!({"message": steer(SteerCommand::SetBreakpoints(Vec::new())).await?}))
        }
        "set" => {
            let words: Vec<&str> = parsed.args.iter().map(String::as_str).collect();
            let command = steer::parse_on_error(&words).map_err(|why| refuse("bad_args", why))?;
            let SteerCommand::OnError { mode, test } = &command else {
                unreachable!("parse_on_error makes OnError");
            };
            if let Some(test) = test {
                find_test(hooks, test)?;
            }
            let (mode, test) = (mode.clone(), test.clone());
            let message = steer(command).await?;
            hooks.note_on_error(test.as_deref(), &mode);
            Ok(json!({"message": message, "on_error": mode, "test": test}))
        }
        "queue" => {
            let usage = "usage: queue add|remove NODEID...";
            let (op, nodeids) = match parsed.args.split_first() {
                Some((op, ids)) if (op == "add" || op == "remove") && !ids.is_empty() => {
                    (op.clone(), ids.to_vec())
                }
                _ => return Err(refuse("bad_args", usage)),
            };
            if op == "add" {
                for id in &nodeids {
                    find_test(hooks, id)?;
                }
            }
            queue(context, op, nodeids).await
        }
        "rerun" => {
            if parsed.args != ["failed"] {
                return Err(refuse("bad_args", "usage: rerun failed"));
            }
            let failed = hooks.with_live(|live| live.failed_tests());
            if failed.is_empty() && hooks.with_live(|live| live.queue_ready()) {
                return Ok(json!({"message": "no test has failed", "queued": []}));
            }
            queue(context, "add".into(), failed).await
        }
        other => Err(refuse(
            "unknown_verb",
            format!("unknown verb {other:?}; \"help\" lists them"),
        )),
    }
}

/// Sends a queue change once the run's pytest plugin said it takes queued tests.
async fn queue(context: &Context, op: String, nodeids: Vec<String>) -> Result<Value, Refusal> {
    if !context.hooks.with_live(|live| live.queue_ready()) {
        return Err(refuse("not_supported", NOT_SUPPORTED_QUEUE));
    }
    let command = SteerCommand::Queue {
        op: op.clone(),
        nodeids: nodeids.clone(),
    };
    let message = context
        .steering
        .send(command)
        .await
        .map_err(steer_refusal)?;
    // On the record: tools following events.jsonl see what was queued, and when.
    let event =
        json!({"event": "queue", "op": op, "nodeids": nodeids, "time": crate::status::now()});
    kernel::session::SessionHooks::on_event(context.hooks.as_ref(), event);
    context.hooks.flush_events();
    Ok(json!({"message": message, "queued": nodeids}))
}

/// The instrumenter's entry for node id `test` (`path::Class::name[param]`).
fn find_test(hooks: &RunHooks, test: &str) -> Result<Value, Refusal> {
    let ctx = hooks.context();
    let Some((file, rest)) = test.split_once("::") else {
        return Err(refuse(
            "unknown_test",
            format!("{test:?} is not a test id (path/to/test_file.py::test_name)"),
        ));
    };
    let path = ctx.rootdir.join(file);
    if !path.is_file() {
        return Err(refuse(
            "unknown_test",
            format!("unknown test {test}: no file {file}"),
        ));
    }
    let report = instrumenter::instrument_file(&path, &ctx.options);
    let base = rest.split('[').next().unwrap_or(rest);
    let found = report
        .tests
        .iter()
        .find(|t| t.id.split_once("::").map(|(_, r)| r) == Some(base));
    match found {
        Some(t) => Ok(serde_json::to_value(t).unwrap_or(Value::Null)),
        None => {
            let ids: Vec<String> = report
                .tests
                .iter()
                .filter_map(|t| t.id.split_once("::").map(|(_, r)| format!("{file}::{r}")))
                .collect();
            let close = instrumenter::closest(test, &ids);
            Err(refuse(
                "unknown_test",
                format!(
                    "unknown test {test}{}",
                    if close.is_empty() {
                        String::new()
                    } else {
                        format!("; closest: {}", close.join(", "))
                    }
                ),
            ))
        }
    }
}

fn check_step(report: &Value, test: &str, step: u64, phase: Option<&str>) -> Result<(), Refusal> {
    let phases = report
        .get("phases")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let counts: Vec<(String, u64)> = phases
        .iter()
        .filter(|p| phase.is_none_or(|want| p.get("name").and_then(Value::as_str) == Some(want)))
        .map(|p| {
            (
                p.get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                p.get("steps")
                    .and_then(Value::as_array)
                    .map_or(0, |s| s.len() as u64),
            )
        })
        .collect();
    if counts.is_empty() {
        let names: Vec<&str> = phases
            .iter()
            .filter_map(|p| p.get("name").and_then(Value::as_str))
            .collect();
        return Err(refuse(
            "bad_args",
            format!(
                "{test} has no phase {:?}; its phases: {}",
                phase.unwrap_or(""),
                names.join(", ")
            ),
        ));
    }
    if counts.iter().any(|(_, n)| step < *n) {
        return Ok(());
    }
    let shown: Vec<String> = counts.iter().map(|(p, n)| format!("{p}: {n}")).collect();
    Err(refuse(
        "bad_args",
        format!(
            "{test} has no step {step} (steps are numbered from 0; {})",
            shown.join(", ")
        ),
    ))
}
