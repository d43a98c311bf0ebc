//! `stepkernel demo`: the bundled example, copied into a fresh git repo and run.

use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The example project, embedded so the demo works from any directory.
const FILES: &[(&str, &str)] = &[
    (
        "shop/__init__.py",
        include_str!("../examples/shop/shop/__init__.py"),
    ),
    (
        "shop/cart.py",
        include_str!("../examples/shop/shop/cart.py"),
    ),
    (
        "tests/__init__.py",
        include_str!("../examples/shop/tests/__init__.py"),
    ),
    (
        "tests/conftest.py",
        include_str!("../examples/shop/tests/conftest.py"),
    ),
    (
        "tests/test_checkout.py",
        include_str!("../examples/shop/tests/test_checkout.py"),
    ),
    (
        "tests/test_cart_unittest.py",
        include_str!("../examples/shop/tests/test_cart_unittest.py"),
    ),
    // The notebooks run from the project's directory, where Jupyter starts their kernel.
    (
        "walkthrough.ipynb",
        include_str!("../examples/shop/walkthrough.ipynb"),
    ),
    (
        "progress.ipynb",
        include_str!("../examples/shop/progress.ipynb"),
    ),
];

/// The example's pytest.ini: only for an interpreter with pytest-asyncio (see the file).
const PYTEST_INI: &str = include_str!("../examples/shop/pytest.ini");

/// Whether `python` can import `module` (false when it cannot be run).
fn has_module(python: &Path, module: &str) -> bool {
    std::process::Command::new(python)
        .args([
            "-c",
            &format!("import importlib.util, sys; sys.exit(importlib.util.find_spec({module:?}) is None)"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Arguments of `stepkernel demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Where to copy the example (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Options for the run (as for `stepkernel run`).
    #[command(flatten)]
    pub run: crate::run_cmd::RunArgs,
}

fn git(dir: &Path, args: &[&str]) -> bool {
    std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "stepkernel demo")
        .env("GIT_AUTHOR_EMAIL", "demo@stepkernel.invalid")
        .env("GIT_COMMITTER_NAME", "stepkernel demo")
        .env("GIT_COMMITTER_EMAIL", "demo@stepkernel.invalid")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Copies the example into `dir` (with its pytest.ini when `pytest_ini`) and
/// commits it (when git is there).
pub fn materialize(dir: &Path, pytest_ini: bool) -> anyhow::Result<bool> {
    let ini = [("pytest.ini", PYTEST_INI)];
    let extra: &[(&str, &str)] = if pytest_ini { &ini } else { &[] };
    for (rel, text) in FILES.iter().chain(extra) {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("has parent"))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    std::fs::write(
        dir.join(".gitignore"),
        ".stepkernel/\n__pycache__/\n.ipynb_checkpoints/\nfix.patch\n",
    )?;
    Ok(git(dir, &["init", "-q"])
        && git(dir, &["add", "-A"])
        && git(dir, &["commit", "-qm", "The shop example"]))
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let python = crate::python::resolve(args.run.python.as_deref(), &cwd)?;
    let dir = match args.dir {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("stepkernel-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let committed = materialize(&dir, has_module(&python, "pytest_asyncio"))?;
    println!(
        "stepkernel demo: copied the shop example to {}{}",
        dir.display(),
        if committed { " (a git repo)" } else { "" }
    );
    println!(
        "stepkernel demo: one test fails because of a bug in shop/cart.py; the run pauses there."
    );
    std::env::set_current_dir(&dir)?;
    let mut run = args.run;
    run.python = Some(python);
    if run.targets.is_empty() {
        run.targets.push("tests".into());
    }
    crate::run_cmd::run(run)
}
