//! `stepkernel ctl` and `stepkernel status`: query and steer a session over
//! its control socket (a finished session answers from its files).

use crate::sessions_cmd::root;
use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};
use session::control::VERBS;
use session::control_client::{Client, ClientError};
use session::discovery::latest;
use session::session_dir::{self, SessionMeta};
use session::status;
use std::path::PathBuf;
use std::process::ExitCode;

/// The first words `ctl` takes as a verb (anything else first is a session).
const VERB_NAMES: &[&str] = &[
    "status", "tests", "steps", "events", "pause", "continue", "resume", "next", "retry", "skip",
    "fail", "abort", "break", "clear", "set", "queue", "rerun", "help",
];

/// Arguments of `stepkernel ctl`.
#[derive(Args)]
pub struct CtlArgs {
    /// [SESSION] VERB [ARGS...]: SESSION is an id, id prefix or directory
    /// (default: the latest live session); `ctl help` lists the verbs.
    #[arg(required = true, num_args = 1..)]
    pub words: Vec<String>,
    /// Print the session's JSON response.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `stepkernel status`.
#[derive(Args)]
pub struct StatusArgs {
    /// Session id, id prefix or directory (default: the latest live session, else the latest).
    pub session: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep printing as the run goes on, until it ends.
    #[arg(long)]
    pub follow: bool,
}

/// The session to talk to, saying which was chosen when none was named.
pub(crate) fn choose(
    session: Option<&str>,
    finished_ok: bool,
) -> anyhow::Result<(PathBuf, SessionMeta)> {
    let root = root()?;
    if let Some(id) = session {
        return session_dir::find(&root, Some(id)).map_err(anyhow::Error::msg);
    }
    let all = session_dir::list(&root);
    if let Some((dir, meta)) = latest(all.clone(), SessionMeta::attachable) {
        eprintln!("stepkernel: session {} (the latest live one)", meta.id);
        return Ok((dir, meta));
    }
    if finished_ok {
        if let Some((dir, meta)) = latest(all, |_| true) {
            eprintln!(
                "stepkernel: no live session; session {} is the latest ({})",
                meta.id,
                meta.shown_state()
            );
            return Ok((dir, meta));
        }
    }
    if let Some((_, meta)) = latest(session_dir::list(&root), |_| true) {
        anyhow::bail!(
            "no live stepkernel session in {}: the latest, {}, is {} — nothing to steer (`stepkernel status` shows how it ended)",
            root.display(),
            meta.id,
            meta.shown_state()
        );
    }
    anyhow::bail!(
        "no stepkernel session in {} (start one with `stepkernel run`)",
        root.display()
    )
}

/// `status` of a session without a socket, from its files.
fn status_from_files(dir: &std::path::Path) -> anyhow::Result<Value> {
    let (live, meta) = status::from_files(dir)
        .with_context(|| format!("{} has no readable session.json", dir.display()))?;
    Ok(live.to_json(&meta, dir, status::now()))
}

/// What a session without a socket answers (`status`, `tests`, `events`).
fn answer_from_files(dir: &std::path::Path, verb: &str, args: &[String]) -> Option<Value> {
    let result = match verb {
        "status" => status_from_files(dir).ok()?,
        "tests" => status::from_files(dir)?.0.tests_json(),
        "events" => {
            let offset = args.first().and_then(|a| a.parse().ok()).unwrap_or(0);
            let (events, next) = session::control::read_events(dir, offset, usize::MAX);
            json!({"events": events, "next_offset": next, "more": false})
        }
        _ => return None,
    };
    Some(
        json!({"v": session::control::PROTOCOL_VERSION, "ok": true, "verb": verb, "result": result, "from_files": true}),
    )
}

fn exit_for(response: &Value) -> ExitCode {
    if response.get("ok") == Some(&json!(true)) {
        return ExitCode::SUCCESS;
    }
    match response["error"]["code"].as_str().unwrap_or("") {
        "bad_args" | "bad_request" | "unknown_verb" | "unknown_test" | "bad_json" => {
            ExitCode::from(2)
        }
        _ => ExitCode::from(1),
    }
}

fn print_text(verb: &str, response: &Value) {
    if response.get("ok") != Some(&json!(true)) {
        eprintln!(
            "stepkernel: {verb}: {}",
            response["error"]["message"].as_str().unwrap_or("failed")
        );
        return;
    }
    let result = &response["result"];
    match verb {
        "status" => println!("{}", status::render(result)),
        "tests" => {
            for test in result["tests"].as_array().into_iter().flatten() {
                println!(
                    "{:<10} {}",
                    test["status"].as_str().unwrap_or("?"),
                    test["id"].as_str().unwrap_or("?")
                );
            }
            if result["complete"] != json!(true) {
                println!("(tests seen so far; the run does not report its whole selection)");
            }
        }
        "steps" => {
            let ran = result["ran"].as_array().cloned().unwrap_or_default();
            for phase in result["phases"].as_array().into_iter().flatten() {
                let name = phase["name"].as_str().unwrap_or("");
                for step in phase["steps"].as_array().into_iter().flatten() {
                    let status = ran
                        .iter()
                        .rev()
                        .find(|r| r["phase"] == phase["name"] && r["index"] == step["index"])
                        .and_then(|r| r["status"].as_str())
                        .unwrap_or("-");
                    println!(
                        "{name:<20} {:>3}  {:<8} line {:<5} {}",
                        step["index"],
                        status,
                        step["start_line"],
                        step["name"].as_str().unwrap_or("")
                    );
                }
            }
        }
        "events" => {
            for event in result["events"].as_array().into_iter().flatten() {
                println!("{event}");
            }
        }
        "help" => {
            for verb in result.as_array().into_iter().flatten() {
                println!(
                    "  {:<48} {}",
                    verb["verb"].as_str().unwrap_or(""),
                    verb["help"].as_str().unwrap_or("")
                );
            }
        }
        _ => println!(
            "{}",
            result["message"]
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| result.to_string())
        ),
    }
}

/// `stepkernel ctl [SESSION] VERB ARGS... [--json]`.
pub fn ctl(args: CtlArgs) -> anyhow::Result<ExitCode> {
    let mut words = args.words;
    let session = if VERB_NAMES.contains(&words[0].as_str()) {
        None
    } else {
        Some(words.remove(0))
    };
    let Some(verb) = words.first().cloned() else {
        anyhow::bail!("usage: stepkernel ctl [SESSION] VERB [ARGS...] (`stepkernel ctl help` lists the verbs)");
    };
    let rest = words[1..].to_vec();
    if verb == "help" && session.is_none() {
        let list: Vec<Value> = VERBS
            .iter()
            .map(|(v, h)| json!({"verb": v, "help": h}))
            .collect();
        let response = json!({"ok": true, "result": list});
        if args.json {
            println!("{response}");
        } else {
            print_text("help", &response);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let reads_files = matches!(verb.as_str(), "status" | "tests" | "events");
    let (dir, meta) = choose(session.as_deref(), reads_files)?;
    if verb == "events" && rest.iter().any(|a| a == "follow" || a == "--follow") {
        return follow_events(&dir, &rest, args.json);
    }
    let response = match Client::connect(&dir) {
        Ok(mut client) => client.request(&verb, &rest)?,
        Err(err @ (ClientError::NotListening { .. } | ClientError::Stale { .. })) => {
            match answer_from_files(&dir, &verb, &rest) {
                Some(response) => response,
                None => anyhow::bail!(
                    "{err}; {verb} needs a running session ({} is {})",
                    meta.id,
                    meta.shown_state()
                ),
            }
        }
        Err(err) => return Err(err.into()),
    };
    if args.json {
        println!("{response}");
    } else {
        print_text(&verb, &response);
    }
    Ok(exit_for(&response))
}

fn follow_events(dir: &std::path::Path, rest: &[String], _json: bool) -> anyhow::Result<ExitCode> {
    let offset = rest.iter().find_map(|a| a.parse().ok()).unwrap_or(0);
    let mut client = Client::connect(dir)?;
    let end = client.follow(offset, |line| {
        println!("{}", line["event"]);
        true
    })?;
    match end {
        Some(end) if end.get("ok") == Some(&json!(false)) => {
            eprintln!(
                "stepkernel: events: {}",
                end["error"]["message"].as_str().unwrap_or("failed")
            );
            Ok(ExitCode::from(1))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `stepkernel status [SESSION] [--json] [--follow]`.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (dir, _) = choose(args.session.as_deref(), true)?;
    let print = |status: &Value| {
        if args.json {
            println!("{status}");
        } else {
            println!("{}", status::render(status));
        }
    };
    let live = |dir: &std::path::Path| -> anyhow::Result<Option<Value>> {
        match Client::connect(dir) {
            Ok(mut client) => {
                let response = client.request("status", &[])?;
                Ok(Some(response["result"].clone()))
            }
            Err(ClientError::NotListening { .. } | ClientError::Stale { .. }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    };
    match live(&dir)? {
        None => {
            print(&status_from_files(&dir)?);
            return Ok(ExitCode::SUCCESS);
        }
        Some(status) => print(&status),
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let mut follower = Client::connect(&dir)?;
    let mut asker = Client::connect(&dir)?;
    let (_, next) = session::control::read_events(&dir, 0, usize::MAX);
    let result = follower.follow(next, |line| {
        let kind = line["event"]["event"].as_str().unwrap_or("");
        if matches!(kind, "test_finish" | "pause" | "resume" | "summary") {
            if let Ok(response) = asker.request("status", &[]) {
                print(&response["result"]);
            }
        }
        true
    });
    match result {
        Ok(_) | Err(ClientError::Ended) => {}
        Err(err) => return Err(err.into()),
    }
    // The end: what the files say once the run has finished.
    std::thread::sleep(std::time::Duration::from_millis(100));
    print(&status_from_files(&dir)?);
    Ok(ExitCode::SUCCESS)
}
