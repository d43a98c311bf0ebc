//! Bounds on what a peer can make the kernel hold: message size and the
//! iopub queue of each subscriber (libzmq's `ZMQ_MAXMSGSIZE` and `ZMQ_SNDHWM`).

/// Largest multipart message accepted by default (256 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 256 << 20;
/// iopub messages queued per subscriber by default, as libzmq's high-water mark.
pub const DEFAULT_IOPUB_HWM: usize = 1000;

/// The limits the sockets are created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// Bytes; a peer sending more is disconnected (other peers are served on).
    pub max_message_size: usize,
    /// Messages queued per iopub subscriber (and per shell, control and stdin
    /// client); beyond it a slow client misses messages instead of growing memory.
    pub iopub_hwm: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        WireLimits {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            iopub_hwm: DEFAULT_IOPUB_HWM,
        }
    }
}

impl WireLimits {
    /// The defaults, overridden by `STEPKERNEL_MAX_MESSAGE_SIZE` (bytes) and
    /// `STEPKERNEL_IOPUB_HWM` (messages); an unreadable value is reported and ignored.
    pub fn from_env() -> WireLimits {
        let mut limits = WireLimits::default();
        if let Some(n) = read_env("STEPKERNEL_MAX_MESSAGE_SIZE") {
            limits.max_message_size = n;
        }
        if let Some(n) = read_env("STEPKERNEL_IOPUB_HWM") {
            limits.iopub_hwm = n;
        }
        limits
    }

    /// Socket options with these limits.
    pub fn socket_options(&self) -> zeromq::SocketOptions {
        let mut options = zeromq::SocketOptions::default();
        options
            .max_message_size(self.max_message_size)
            .send_high_water_mark(self.iopub_hwm);
        options
    }
}

fn read_env(name: &str) -> Option<usize> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse::<usize>() {
        Ok(n) if n > 0 => Some(n),
        _ => {
            eprintln!("[stepkernel] ignoring {name}={value:?}: expected a positive whole number");
            None
        }
    }
}
