//! An SSH tunnel to a kernel on another host's loopback (a remote xdist
//! worker's), for `stepkernel console --worker gwN`.
//!
//! Like jupyter_client's `--ssh`: each of the kernel's five ports is
//! forwarded from a free port here, by OpenSSH (`ssh -f ... HOST sleep 60`:
//! it goes to the background once logged in, and ends once the remote
//! `sleep` is over and the client's connections are closed). Unlike it,
//! one ssh forwards all five ports, and it runs straight from this terminal
//! rather than as the session leader of a pseudo-terminal of its own
//! (pexpect's), whose exit hangs up the terminal and kills the backgrounded
//! child before it has left the terminal's process group (see
//! `session::attach::jupyter_ssh_line`).

use anyhow::{bail, Context};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The ports of a connection file, in the order jupyter_client tunnels them.
const PORTS: [&str; 5] = [
    "shell_port",
    "iopub_port",
    "stdin_port",
    "hb_port",
    "control_port",
];

/// Free ports on this machine's loopback (held together, so they differ).
fn free_ports(count: usize) -> std::io::Result<Vec<u16>> {
    let held: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    held.iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Tunnels the kernel of `connection` (its ports on `host`'s loopback) to
/// ports here; returns the connection file for them, written beside it.
pub fn tunnel(connection: &Path, host: &str) -> anyhow::Result<PathBuf> {
    let text = std::fs::read(connection)
        .with_context(|| format!("cannot read {}", connection.display()))?;
    let mut info: Value = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a connection file", connection.display()))?;
    let remote_ip = info
        .get("ip")
        .and_then(Value::as_str)
        .unwrap_or("127.0.0.1")
        .to_string();
    if info
        .get("transport")
        .and_then(Value::as_str)
        .unwrap_or("tcp")
        != "tcp"
    {
        bail!("only a kernel on TCP ports can be reached through an SSH tunnel");
    }
    let locals = free_ports(PORTS.len()).context("no free ports on this machine's loopback")?;
    let mut ssh = std::process::Command::new("ssh");
    // Backgrounded only once every forward listens; a port taken meanwhile is an error.
    ssh.args(["-f", "-o", "ExitOnForwardFailure=yes"]);
    for (key, local) in PORTS.iter().zip(&locals) {
        let remote = info
            .get(*key)
            .and_then(Value::as_u64)
            .with_context(|| format!("{} has no {key}", connection.display()))?;
        ssh.arg("-L")
            .arg(format!("127.0.0.1:{local}:{remote_ip}:{remote}"));
        info[*key] = Value::from(*local);
    }
    ssh.args(["--", host, "sleep", "60"]);
    let status = ssh
        .status()
        .context("cannot run ssh (OpenSSH's client) for the tunnel")?;
    if !status.success() {
        bail!("ssh {host} could not open the tunnel to the kernel's ports ({status})");
    }
    info["ip"] = Value::from("127.0.0.1");
    let out = connection.with_file_name("connection-ssh.json");
    let bytes = serde_json::to_vec_pretty(&info).expect("serializes");
    kernel::private_files::write_atomic(&out, &bytes, false)
        .with_context(|| format!("cannot write {}", out.display()))?;
    Ok(out)
}
