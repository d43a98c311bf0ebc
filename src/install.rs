//! `stepkernel install`: write the `stepkernel` kernelspec where Jupyter finds it.

use anyhow::{bail, Context};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const KERNEL_JSON: &str = include_str!("../kernelspec/kernel.json");
const LOGO_32: &[u8] = include_bytes!("../kernelspec/logo-32x32.png");
const LOGO_64: &[u8] = include_bytes!("../kernelspec/logo-64x64.png");

/// Arguments of `stepkernel install`.
#[derive(Args)]
pub struct InstallArgs {
    /// Install for the current user (the default).
    #[arg(long, conflicts_with_all = ["sys_prefix", "prefix"])]
    pub user: bool,
    /// Install into the active virtualenv or conda env (`$VIRTUAL_ENV`/`$CONDA_PREFIX`).
    #[arg(long, conflicts_with = "prefix")]
    pub sys_prefix: bool,
    /// Install under PREFIX/share/jupyter/kernels.
    #[arg(long, value_name = "PREFIX")]
    pub prefix: Option<PathBuf>,
    /// Kernelspec name.
    #[arg(long, default_value = "stepkernel")]
    pub name: String,
    /// The interpreter the kernel runs code in, recorded as an absolute path
    /// (default: the one `stepkernel run` would choose here, shims resolved);
    /// `auto` records none, so each kernel start chooses.
    #[arg(long, value_name = "PATH|auto")]
    pub python: Option<PathBuf>,
}

/// Jupyter's per-user data dir, by jupyter_core's rules (shared with `stepkernel run`).
fn user_data_dir() -> anyhow::Result<PathBuf> {
    Ok(session::attach::jupyter_data_dir())
}

/// The kernels directory the flags select.
fn kernels_dir(args: &InstallArgs) -> anyhow::Result<PathBuf> {
    if let Some(prefix) = &args.prefix {
        return Ok(prefix.join("share/jupyter/kernels"));
    }
    if args.sys_prefix {
        let prefix = std::env::var_os("VIRTUAL_ENV")
            .or_else(|| std::env::var_os("CONDA_PREFIX"))
            .filter(|p| !p.is_empty());
        let Some(prefix) = prefix else {
            bail!("--sys-prefix needs an active virtualenv ($VIRTUAL_ENV) or conda env ($CONDA_PREFIX); use --prefix DIR instead");
        };
        return Ok(PathBuf::from(prefix).join("share/jupyter/kernels"));
    }
    Ok(user_data_dir()?.join("kernels"))
}

/// Writes kernel.json and logos into `dir`.
pub fn write_kernelspec(dir: &Path, python: Option<&Path>) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the stepkernel binary")?;
    let mut spec: serde_json::Value = serde_json::from_str(KERNEL_JSON).expect("valid template");
    spec["argv"][0] = serde_json::Value::String(exe.display().to_string());
    if let Some(python) = python {
        let argv = spec["argv"].as_array_mut().expect("argv array");
        argv.push("--python".into());
        argv.push(python.display().to_string().into());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let text = serde_json::to_string_pretty(&spec).expect("JSON serializes");
    std::fs::write(dir.join("kernel.json"), text + "\n")
        .with_context(|| format!("cannot write {}", dir.join("kernel.json").display()))?;
    std::fs::write(dir.join("logo-32x32.png"), LOGO_32)?;
    std::fs::write(dir.join("logo-64x64.png"), LOGO_64)?;
    Ok(())
}

/// Runs the install subcommand.
pub fn run(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let dir = kernels_dir(&args)?.join(&args.name);
    // As `python -m ipykernel install` does: the kernel runs the interpreter chosen now.
    let python = match args.python.as_deref() {
        Some(auto) if auto == Path::new("auto") => None,
        given => {
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            Some(crate::python::resolve(given, &cwd)?)
        }
    };
    write_kernelspec(&dir, python.as_deref())?;
    println!("Installed kernelspec {} in {}", args.name, dir.display());
    match &python {
        Some(python) => println!("The kernel runs {}", python.display()),
        None => println!("The kernel chooses its interpreter when it starts (--python auto)"),
    }
    Ok(ExitCode::SUCCESS)
}
