//! Parsing `%magic` lines typed into a client.

/// A magic command (see `%help`).
#[derive(Debug, Clone, PartialEq)]
pub enum Magic {
    /// `%where`: the paused test, phase, step and error.
    Where,
    /// `%steps`: the current test's steps with status.
    Steps,
    /// `%retry`, `%next`, `%continue`, `%skip`, `%fail`, `%abort`.
    Resume(&'static str),
    /// `%%edit [N]` (with the new source) or `%edit [N]` (show the source).
    Edit {
        /// The step (None: the current one).
        step: Option<usize>,
        /// The cell body for `%%edit`.
        source: Option<String>,
    },
    /// `%%edit NAME`: replace a function or method of the code under test
    /// (`Cart.subtotal`, or `path.py::Cart.subtotal`).
    EditFunction {
        /// What to replace.
        target: String,
        /// The new definition.
        source: String,
    },
    /// `%edit NAME`: show a function's source and offer `%%edit NAME` with it as the next cell.
    ShowFunction(String),
    /// `%break N [N...]`.
    Break(Vec<usize>),
    /// `%clear`: remove breakpoints.
    Clear,
    /// `%pause`: pause at the next step boundary.
    Pause,
    /// `%set on_error pause|fail [TEST]`.
    Set(String),
    /// `%status`: the session's state, test counts and where it is.
    Status,
    /// `%end`: end a finished session that stays up for its clients.
    End,
    /// `%diff`, `%patch ...`, `%apply`, `%tests PATH`, `%test NODEID`, `%locals`: handled by the session.
    Session {
        /// The magic's name.
        name: String,
        /// The rest of the line.
        args: String,
    },
    /// `%help [magic]` or `%magic?`.
    Help(Option<String>),
    /// An unknown magic.
    Unknown(String),
    /// A malformed magic.
    Invalid(String),
}

/// One line of help per magic, in the order `%help` prints them.
pub const HELP: &[(&str, &str)] = &[
    (
        "%where",
        "show the current test, phase, step, state and error",
    ),
    (
        "%steps",
        "list the current test's steps with status and timing",
    ),
    (
        "%retry",
        "run the current step again and stay paused after it",
    ),
    (
        "%next",
        "run the current step (or retry the failed one) and pause before the next",
    ),
    (
        "%continue",
        "run from the current step on until the next error, breakpoint or the end",
    ),
    (
        "%skip",
        "skip the failed step and go on (the test is then counted as forced)",
    ),
    (
        "%fail",
        "let the error stand: the test fails, tearDown runs, the run goes on",
    ),
    ("%abort", "stop the run after tearing down the current test"),
    (
        "%%edit [N] [--delete]",
        "replace the source of step N (default: current) with the cell's body; --delete removes it",
    ),
    (
        "%%edit NAME",
        "replace function or method NAME of the code under test (Cart.subtotal, path.py::func)",
    ),
    (
        "%edit [N]",
        "show step N's source and offer it as the next cell",
    ),
    (
        "%edit NAME",
        "show function NAME's source and offer it as the next cell",
    ),
    ("%break N [N ...]", "pause before step N of each test"),
    ("%clear", "remove all breakpoints"),
    ("%pause", "(while running) pause at the next step boundary"),
    (
        "%set on_error pause|fail [TEST]",
        "pause or fail on errors from now on (every test, or one)",
    ),
    (
        "%status",
        "the run: state, where, tests done, counts, failures so far",
    ),
    ("%diff", "show the session's edits as a unified diff"),
    (
        "%patch [FILE] [-m MESSAGE]",
        "write the edits as an mbox patch for git am",
    ),
    ("%apply", "write the edits into the working tree"),
    (
        "%report [test|step|plan|error]",
        "the results so far as a table by test, step name, test plan id or failure kind",
    ),
    ("%tests [PATH]", "list the tests of a file or directory"),
    (
        "%test NODEID",
        "load one test and pause before its first step",
    ),
    ("%locals", "show the paused test's variables"),
    (
        "%status",
        "the session's state (running, paused, finished), test counts, where",
    ),
    (
        "%end",
        "end a finished session (it stays up while a client is attached)",
    ),
    ("%help [MAGIC]", "this help; `%MAGIC?` works too"),
];

const SESSION_MAGICS: &[&str] = &[
    "diff", "patch", "apply", "tests", "test", "locals", "status", "queue", "rerun", "report",
];

/// Parses `code` as a magic; None when it is plain Python.
pub fn parse(code: &str) -> Option<Magic> {
    let trimmed = code.trim_start();
    let (first, rest) = match trimmed.split_once('\n') {
        Some((first, rest)) => (first.trim_end(), rest),
        None => (trimmed.trim_end(), ""),
    };
    if let Some(cell) = first.strip_prefix("%%") {
        let (name, args) = split_name(cell);
        if name == "edit" {
            let target = args.trim();
            if target.split_whitespace().any(|w| w == "--delete") {
                return Some(delete_step(target, rest));
            }
            if rest.trim().is_empty() {
                return Some(Magic::Invalid(empty_edit_message(target)));
            }
            let rest = &without_trailing_blank_lines(rest);
            if is_function_target(target) {
                return Some(Magic::EditFunction {
                    target: target.to_string(),
                    source: rest.to_string(),
                });
            }
            return Some(match parse_steps(args).as_deref() {
                Ok([]) => Magic::Edit {
                    step: None,
                    source: Some(rest.to_string()),
                },
                Ok([n]) => Magic::Edit {
                    step: Some(*n),
                    source: Some(rest.to_string()),
                },
                _ => Magic::Invalid(format!("%%edit takes one step number, got {args:?}")),
            });
        }
        return Some(Magic::Unknown(format!("%%{name}")));
    }
    let line = first.strip_prefix('%')?;
    if !rest.trim().is_empty() {
        // A line magic followed by code is Python with a stray %; leave it to Python's error.
        return None;
    }
    let (name, args) = split_name(line);
    if let Some(base) = name.strip_suffix('?') {
        return Some(Magic::Help(Some(base.to_string())));
    }
    Some(match name {
        "where" => Magic::Where,
        "steps" => Magic::Steps,
        "retry" => Magic::Resume("retry"),
        "next" => Magic::Resume("next"),
        "continue" | "cont" | "c" => Magic::Resume("continue"),
        "skip" => Magic::Resume("skip"),
        "fail" => Magic::Resume("fail"),
        "abort" => Magic::Resume("abort"),
        "pause" => Magic::Pause,
        "status" => Magic::Status,
        "end" => Magic::End,
        "clear" => Magic::Clear,
        "set" => Magic::Set(args.trim().to_string()),
        "help" => Magic::Help(
            Some(args.trim().trim_start_matches('%').to_string()).filter(|s| !s.is_empty()),
        ),
        "edit" if is_function_target(args.trim()) => Magic::ShowFunction(args.trim().to_string()),
        "edit" => match parse_steps(args).as_deref() {
            Ok([]) => Magic::Edit {
                step: None,
                source: None,
            },
            Ok([n]) => Magic::Edit {
                step: Some(*n),
                source: None,
            },
            _ => Magic::Invalid(format!("%edit takes one step number, got {args:?}")),
        },
        "break" => match parse_steps(args) {
            Ok(steps) if !steps.is_empty() => Magic::Break(steps),
            _ => {
                Magic::Invalid("usage: %break N [N ...] (step numbers as %steps shows them)".into())
            }
        },
        other if SESSION_MAGICS.contains(&other) => Magic::Session {
            name: other.to_string(),
            args: args.trim().to_string(),
        },
        other => Magic::Unknown(format!("%{other}")),
    })
}

/// A `%%edit`/`%edit` argument naming a function (`Cart.subtotal`, `path.py::f`), not a step number.
fn is_function_target(target: &str) -> bool {
    !target.is_empty() && target.parse::<usize>().is_err() && !target.contains(char::is_whitespace)
}

/// Why a `%%edit` without a body is refused: an empty body would delete the step.
fn empty_edit_message(target: &str) -> String {
    let shown = if target.is_empty() {
        String::new()
    } else {
        format!(" {target}")
    };
    let show = if is_function_target(target) {
        format!("%edit {target} shows the function's source")
    } else {
        format!("%edit{shown} shows the step's source")
    };
    format!(
        "%%edit{shown} needs the new source on the lines below it (the cell's body is empty);          {show} to start from. To delete a step, say so: %%edit N --delete (or `pass` as the body)."
    )
}

/// `%%edit [N] --delete`: the explicit way to remove a step (an empty body says so).
fn delete_step(args: &str, body: &str) -> Magic {
    if !body.trim().is_empty() {
        return Magic::Invalid(
            "%%edit --delete removes the step: leave the cell's body empty (or drop --delete)"
                .into(),
        );
    }
    let rest: Vec<&str> = args
        .split_whitespace()
        .filter(|w| *w != "--delete")
        .collect();
    match parse_steps(&rest.join(" ")).as_deref() {
        Ok([]) => Magic::Edit {
            step: None,
            source: Some(String::new()),
        },
        Ok([n]) => Magic::Edit {
            step: Some(*n),
            source: Some(String::new()),
        },
        _ => Magic::Invalid(format!(
            "%%edit --delete takes one step number (functions cannot be deleted), got {:?}",
            rest.join(" ")
        )),
    }
}

/// The cell body without the blank lines that end a cell typed in a console.
fn without_trailing_blank_lines(body: &str) -> String {
    let mut lines: Vec<&str> = body.lines().collect();
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    let mut out = lines.join("\n");
    if body.ends_with('\n') || body.len() > out.len() {
        out.push('\n');
    }
    out
}

fn split_name(line: &str) -> (&str, &str) {
    let line = line.trim();
    match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, ""),
    }
}

fn parse_steps(args: &str) -> Result<Vec<usize>, std::num::ParseIntError> {
    args.split_whitespace().map(str::parse).collect()
}

/// `is_complete_request` for a magic cell, as IPython answers it: a line magic
/// is complete; a `%%` cell is incomplete (indent hint: its last line's
/// indentation) until a blank line ends it. None for code that is not a magic.
///
/// Answered by the kernel itself, so a console typing `%where` while the
/// worker runs tests gets its answer at once (a late one makes jupyter_console
/// stop asking, and multi-line cells then end at the first Enter).
pub fn is_complete(code: &str) -> Option<(&'static str, String)> {
    let trimmed = code.trim_start();
    if trimmed.starts_with("%%") {
        let lines: Vec<&str> = code.split('\n').collect();
        let last = lines.last().copied().unwrap_or("");
        if lines.len() > 1 && last.trim().is_empty() {
            return Some(("complete", String::new()));
        }
        let indent: String = last
            .chars()
            .take_while(|c| c.is_whitespace())
            .map(|c| {
                if c == '\t' {
                    "    ".to_string()
                } else {
                    c.to_string()
                }
            })
            .collect();
        return Some(("incomplete", indent));
    }
    if trimmed.starts_with('%') && !code.trim().contains('\n') {
        return Some(("complete", String::new()));
    }
    None
}

/// The help text for one magic or all.
pub fn help(which: Option<&str>) -> String {
    let wanted = which.map(|w| w.trim_start_matches('%'));
    let lines: Vec<String> = HELP
        .iter()
        .filter(|(usage, _)| match wanted {
            None => true,
            Some(w) => usage
                .trim_start_matches('%')
                .split_whitespace()
                .next()
                .is_some_and(|n| n == w),
        })
        .map(|(usage, text)| format!("  {usage:<28} {text}"))
        .collect();
    if lines.is_empty() {
        return format!("No magic %{} — %help lists them all.", wanted.unwrap_or(""));
    }
    let mut out = String::new();
    if which.is_none() {
        out.push_str(
            "stepkernel magics (anything else runs as Python in the paused test's namespace):\n",
        );
    }
    out.push_str(&lines.join("\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_python_is_not_a_magic() {
        assert_eq!(parse("x = 1"), None);
        assert_eq!(parse("x % 2"), None);
        assert_eq!(parse("%where\nx = 1"), None);
    }

    #[test]
    fn line_magics() {
        assert_eq!(parse("  %where  "), Some(Magic::Where));
        assert_eq!(parse("%continue"), Some(Magic::Resume("continue")));
        assert_eq!(parse("%break 2 5"), Some(Magic::Break(vec![2, 5])));
        assert!(matches!(parse("%break x"), Some(Magic::Invalid(_))));
        assert_eq!(
            parse("%patch out.patch -m 'Fix it'"),
            Some(Magic::Session {
                name: "patch".into(),
                args: "out.patch -m 'Fix it'".into()
            })
        );
        assert_eq!(parse("%retry?"), Some(Magic::Help(Some("retry".into()))));
        assert_eq!(parse("%status"), Some(Magic::Status));
        assert_eq!(parse("%end"), Some(Magic::End));
        assert_eq!(
            parse("%frobnicate"),
            Some(Magic::Unknown("%frobnicate".into()))
        );
    }

    #[test]
    fn edit_cell_magic_keeps_body() {
        assert_eq!(
            parse("%%edit 3\nx = 1\nassert x\n"),
            Some(Magic::Edit {
                step: Some(3),
                source: Some("x = 1\nassert x\n".into())
            })
        );
        assert_eq!(
            parse("%%edit\ny = 2"),
            Some(Magic::Edit {
                step: None,
                source: Some("y = 2".into())
            })
        );
        assert_eq!(
            parse("%%edit Cart.total\ndef total(self):\n    return 1\n"),
            Some(Magic::EditFunction {
                target: "Cart.total".into(),
                source: "def total(self):\n    return 1\n".into()
            })
        );
        assert_eq!(
            parse("%edit 1"),
            Some(Magic::Edit {
                step: Some(1),
                source: None
            })
        );
    }

    #[test]
    fn an_empty_edit_body_is_refused_not_a_deletion() {
        for cell in [
            "%%edit",
            "%%edit\n",
            "%%edit 2\n   \n\t\n",
            "%%edit Cart.total\n\n",
        ] {
            match parse(cell) {
                Some(Magic::Invalid(why)) => {
                    assert!(
                        why.contains("body is empty") && why.contains("pass"),
                        "{why}"
                    )
                }
                other => panic!("{cell:?}: {other:?}"),
            }
        }
        assert_eq!(
            parse("%%edit 2 --delete"),
            Some(Magic::Edit {
                step: Some(2),
                source: Some(String::new())
            })
        );
        assert!(matches!(
            parse("%%edit 2 --delete\nx = 1"),
            Some(Magic::Invalid(_))
        ));
        assert!(matches!(
            parse("%%edit Cart.total --delete"),
            Some(Magic::Invalid(_))
        ));
        // The blank lines that end a console cell are not part of the body.
        assert_eq!(
            parse("%%edit 1\nx = 1\n    \n"),
            Some(Magic::Edit {
                step: Some(1),
                source: Some("x = 1\n".into())
            })
        );
    }

    #[test]
    fn cell_magics_complete_on_a_blank_line() {
        let status = is_complete;
        assert_eq!(
            status("%%edit Cart.subtotal"),
            Some(("incomplete", String::new()))
        );
        assert_eq!(
            status("%%edit 2\nif x:\n    y = 1"),
            Some(("incomplete", "    ".into()))
        );
        assert_eq!(
            status("%%edit 2\nx = 1\n"),
            Some(("complete", String::new()))
        );
        assert_eq!(
            status("%%edit 2\nx = 1\n  "),
            Some(("complete", String::new()))
        );
        assert_eq!(status("%where"), Some(("complete", String::new())));
        assert_eq!(status("x = 1"), None);
    }

    #[test]
    fn edit_name_shows_a_function() {
        assert_eq!(
            parse("%edit base.Version.next_minor"),
            Some(Magic::ShowFunction("base.Version.next_minor".into()))
        );
        assert!(help(None).contains("%%edit NAME") && help(None).contains("%edit NAME"));
    }

    #[test]
    fn help_names_every_magic() {
        let all = help(None);
        for (usage, _) in HELP {
            assert!(all.contains(usage), "{usage}");
        }
        assert!(help(Some("retry")).contains("run the current step again"));
        assert!(help(Some("nope")).starts_with("No magic"));
    }
}
