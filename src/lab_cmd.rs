//! `stepkernel lab [SESSION]`: JupyterLab beside a session, with its kernel listed.
//!
//! JupyterLab is the user's own (found beside the session's Python, then on
//! PATH); it is started with external kernels allowed from the directory the
//! session copied its connection file into, a random token, bound to
//! 127.0.0.1 (unless `--ip`), without opening a browser.

use anyhow::{bail, Context};
use clap::Args;
use session::attach;
use session::session_dir::{self, SessionMeta};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Arguments of `stepkernel lab`.
#[derive(Args)]
pub struct LabArgs {
    /// Session id (or prefix); default: the latest live one.
    pub session: Option<String>,
    /// The Python environment whose JupyterLab to use (default: the session's).
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// Port (default: a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Address to listen on; 0.0.0.0 only inside a container whose port is published on loopback.
    #[arg(long, default_value = "127.0.0.1")]
    pub ip: String,
    /// Print Jupyter's data, runtime and external kernels directories as stepkernel finds them, then exit.
    #[arg(long, hide = true)]
    pub print_dirs: bool,
    /// Extra arguments for jupyter lab.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

/// The oldest jupyter_server that lists external kernels.
const MIN_SERVER: (u64, u64, u64) = (2, 7, 3);

/// How long JupyterLab may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The session to serve: the one named, else the latest live one (None: no live session).
fn choose_session(id: Option<&str>) -> anyhow::Result<Option<(PathBuf, SessionMeta)>> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let root = session_dir::sessions_root(&cwd);
    session_dir::remove_dead_copies(&session_dir::list(&root));
    let live = |m: &SessionMeta| m.attachable();
    match id {
        Some(id) => {
            let (dir, meta) = session::discovery::find(&root, id).map_err(anyhow::Error::msg)?;
            if !live(&meta) {
                bail!(
                    "session {} is not running ({})",
                    meta.id,
                    meta.shown_state()
                );
            }
            Ok(Some((dir, meta)))
        }
        None => Ok(session::discovery::preferred(&root, live)),
    }
}

/// The external kernels directory a session copied its connection file into.
fn external_dir_of(meta: Option<&SessionMeta>) -> PathBuf {
    let runtime = attach::jupyter_runtime_dir();
    meta.and_then(|m| {
        // Copies are written runtime dir first, then the external dir.
        m.connection_copies
            .iter()
            .rev()
            .map(|c| Path::new(c).parent().map(Path::to_path_buf))
            .find(|p| p.as_deref() != Some(runtime.as_path()))
            .flatten()
    })
    .unwrap_or_else(|| runtime.join("external_kernels"))
}

/// `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| is_executable(p))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The directory holding an interpreter (a bare name is looked up on PATH); not canonicalized, so a venv stays a venv.
fn bin_dir_of(python: &Path) -> Option<PathBuf> {
    let path = if python.components().count() == 1 {
        on_path(&python.to_string_lossy())?
    } else {
        python.to_path_buf()
    };
    path.parent().map(Path::to_path_buf)
}

/// How to start JupyterLab, and the interpreter it runs on.
struct Lab {
    program: PathBuf,
    args: Vec<String>,
    python: PathBuf,
}

/// The interpreter named by a script's `#!` line (pip writes one into `jupyter-lab`).
fn shebang_python(script: &Path) -> Option<PathBuf> {
    let mut head = [0u8; 512];
    let n = std::fs::File::open(script).ok()?.read(&mut head).ok()?;
    let first = head[..n].split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?.trim();
    let program = line.split_whitespace().next()?;
    (Path::new(program).is_absolute() && !program.ends_with("/env")).then(|| PathBuf::from(program))
}

/// Finds JupyterLab: beside each candidate interpreter, then on PATH.
fn find_lab(pythons: &[PathBuf]) -> Option<Lab> {
    let dirs: Vec<PathBuf> = pythons.iter().filter_map(|p| bin_dir_of(p)).collect();
    let script = dirs
        .iter()
        .map(|d| d.join("jupyter-lab"))
        .find(|p| is_executable(p))
        .or_else(|| on_path("jupyter-lab"));
    if let Some(script) = script {
        let python = shebang_python(&script)
            .or_else(|| {
                script
                    .parent()
                    .map(|d| d.join("python"))
                    .filter(|p| is_executable(p))
            })
            .unwrap_or_else(|| PathBuf::from("python3"));
        return Some(Lab {
            program: script,
            args: Vec::new(),
            python,
        });
    }
    // Installed as a module without its script on PATH (pip --user, some distributions).
    pythons
        .iter()
        .find(|p| {
            std::process::Command::new(p)
                .args(["-c", "import jupyterlab"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .map(|p| Lab {
            program: p.clone(),
            args: vec!["-m".into(), "jupyterlab".into()],
            python: p.clone(),
        })
}

/// `jupyter_server.__version__` of an interpreter, as (major, minor, patch).
fn server_version(python: &Path) -> Option<(u64, u64, u64)> {
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import jupyter_server; print(jupyter_server.__version__)",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    parse_version(String::from_utf8_lossy(&out.stdout).trim())
}

fn parse_version(text: &str) -> Option<(u64, u64, u64)> {
    let mut parts = text.split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u64>()
    });
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    let patch = parts.next().and_then(Result::ok).unwrap_or(0);
    Some((major, minor, patch))
}

/// 256 random bits as hex, for the server's token.
fn random_token() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for a token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether this process runs as root (`/proc/self` belongs to the effective uid).
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The address to reach a server listening on `ip` from this machine.
fn local_host(ip: &str) -> String {
    match ip {
        "0.0.0.0" | "" => "127.0.0.1".into(),
        "::" => "[::1]".into(),
        ip if ip.contains(':') => format!("[{ip}]"),
        ip => ip.into(),
    }
}

/// A port nobody listens on right now.
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn print_dirs() -> anyhow::Result<ExitCode> {
    let dirs = serde_json::json!({
        "data_dir": attach::jupyter_data_dir(),
        "runtime_dir": attach::jupyter_runtime_dir(),
        "external_dir": attach::default_external_dir(),
    });
    println!("{}", serde_json::to_string_pretty(&dirs)?);
    Ok(ExitCode::SUCCESS)
}

/// Runs JupyterLab until it stops.
pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    if args.print_dirs {
        return print_dirs();
    }
    let session = choose_session(args.session.as_deref())?;
    let meta = session.as_ref().map(|(_, m)| m);
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let root = meta.map_or(cwd.clone(), |m| PathBuf::from(&m.rootdir));
    let mut pythons = Vec::new();
    pythons.extend(args.python.clone());
    pythons.extend(meta.and_then(|m| m.python.clone()).map(PathBuf::from));
    pythons.extend(crate::python::resolve(None, &root).ok());
    let Some(lab) = find_lab(&pythons) else {
        let python = pythons.first().cloned().unwrap_or_else(|| "python3".into());
        eprintln!(
            "stepkernel: JupyterLab is not installed (looked beside {} and on PATH).\n\
             Install it into the environment your tests use, then run this again:\n    \
             {} -m pip install 'jupyterlab>=4' 'jupyter_server>={}.{}.{}'",
            python.display(),
            python.display(),
            MIN_SERVER.0,
            MIN_SERVER.1,
            MIN_SERVER.2,
        );
        return Ok(ExitCode::from(1));
    };
    match server_version(&lab.python) {
        Some(version) if version < MIN_SERVER => {
            eprintln!(
                "stepkernel: jupyter_server {}.{}.{} cannot attach to external kernels; upgrade it:\n    \
                 {} -m pip install 'jupyter_server>={}.{}.{}'",
                version.0,
                version.1,
                version.2,
                lab.python.display(),
                MIN_SERVER.0,
                MIN_SERVER.1,
                MIN_SERVER.2,
            );
            return Ok(ExitCode::from(1));
        }
        _ => {}
    }
    let external = external_dir_of(meta);
    let port = match args.port {
        Some(port) => port,
        None => free_port()?,
    };
    let token = random_token()?;
    let mut command = tokio::process::Command::new(&lab.program);
    command
        .args(&lab.args)
        .arg("--no-browser")
        .arg(format!("--ServerApp.ip={}", args.ip))
        .arg(format!("--ServerApp.port={port}"))
        .arg("--ServerApp.port_retries=0")
        // One Ctrl-C stops it (no "Shutdown this Jupyter server?" prompt).
        .arg("--ServerApp.answer_yes=True")
        .arg("--ServerApp.allow_external_kernels=True")
        .arg(format!(
            "--ServerApp.external_connection_dir={}",
            external.display()
        ))
        .arg(format!("--ServerApp.root_dir={}", root.display()))
        // Containers often run as root, which Jupyter refuses unless told.
        .args(running_as_root().then_some("--allow-root"))
        .args(&args.extra)
        // In the environment, not on the command line where `ps` shows it.
        .env("JUPYTER_TOKEN", &token)
        .current_dir(&root);
    let host = local_host(&args.ip);
    if !matches!(args.ip.as_str(), "127.0.0.1" | "localhost" | "::1") {
        eprintln!(
            "stepkernel: WARNING: JupyterLab listens on {} over plain HTTP (token-protected); \
             publish its port on loopback only or reach it through an SSH tunnel",
            args.ip
        );
    }
    let url = format!("http://{host}:{port}/lab?token={token}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let code = runtime.block_on(serve(command, (host, port), &url, meta, &external, &lab))?;
    Ok(ExitCode::from(code))
}

/// Starts the server, prints its URL once it listens, and waits for it to end.
async fn serve(
    mut command: tokio::process::Command,
    (host, port): (String, u16),
    url: &str,
    meta: Option<&SessionMeta>,
    external: &Path,
    lab: &Lab,
) -> anyhow::Result<u8> {
    use tokio::signal::unix::{signal, SignalKind};
    // Handling SIGINT keeps Ctrl-C from killing us first: the server, in the
    // same process group, gets it too and stops in its own way.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run {}", lab.program.display()))?;
    let pid = child.id().map_or(0, |p| p as i32);
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("JupyterLab exited before it listened on port {port} ({status})");
        }
        if tokio::net::TcpStream::connect(format!("{host}:{port}"))
            .await
            .is_ok()
        {
            break;
        }
        if started.elapsed() > START_TIMEOUT {
            kernel::worker::signal(pid, SIGTERM);
            bail!("JupyterLab did not listen on port {port} within {START_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match meta {
        Some(m) => println!(
            "stepkernel: JupyterLab for session {} ({}):",
            m.id,
            m.paused_at.as_deref().unwrap_or(&m.state)
        ),
        None => println!(
            "stepkernel: no live session yet; sessions started later with the same Jupyter runtime dir appear in JupyterLab too"
        ),
    }
    println!("    {url}");
    println!(
        "open a notebook, then Kernel > Change Kernel… > the running `stepkernel` kernel \
         (external kernels from {}); Ctrl-C stops JupyterLab, not the session",
        external.display()
    );
    // Ctrl-C or SIGTERM: ask the server to stop (SIGTERM stops it without a
    // prompt); a server that hangs on its way out (seen with a leftover
    // worker thread) is killed after a grace period.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let grace = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            status = child.wait() => {
                let status = status?;
                if deadline.is_some() {
                    return Ok(0);
                }
                return Ok(status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)));
            }
            _ = interrupt.recv() => stop(pid, &mut deadline),
            _ = terminate.recv() => stop(pid, &mut deadline),
            _ = grace => {
                eprintln!("stepkernel: JupyterLab did not stop within {STOP_GRACE:?}; killing it");
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Ok(0);
            }
        }
    }
}

/// How long JupyterLab may take to stop once asked.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Asks the server to stop, once; starts the grace period.
fn stop(pid: i32, deadline: &mut Option<tokio::time::Instant>) {
    if deadline.is_none() {
        kernel::worker::signal(pid, SIGTERM);
        *deadline = Some(tokio::time::Instant::now() + STOP_GRACE);
    }
}

/// SIGTERM's number on Linux (the binary does not link libc directly).
const SIGTERM: i32 = 15;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_compare() {
        assert_eq!(parse_version("2.21.1"), Some((2, 21, 1)));
        assert_eq!(parse_version("2.7.3rc1"), Some((2, 7, 3)));
        assert_eq!(parse_version("3"), Some((3, 0, 0)));
        assert!(parse_version("2.7.2").unwrap() < MIN_SERVER);
        assert!(parse_version("2.10.0").unwrap() >= MIN_SERVER);
        assert_eq!(parse_version(""), None);
    }

    #[test]
    fn shebangs_name_the_interpreter() {
        let dir = tempfile_dir();
        let script = dir.join("jupyter-lab");
        std::fs::write(&script, "#!/opt/venv/bin/python3.11\nimport sys\n").unwrap();
        assert_eq!(
            shebang_python(&script),
            Some(PathBuf::from("/opt/venv/bin/python3.11"))
        );
        std::fs::write(&script, "#!/usr/bin/env python3\n").unwrap();
        assert_eq!(shebang_python(&script), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("stepkernel-lab-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
