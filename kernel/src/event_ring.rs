//! A shared-memory ring the worker writes progress events into.
//!
//! A stepped test sends two events per step; as socket messages they were a
//! large part of a fast test's cost (a system call and a wake-up of the
//! kernel each). Instead the worker appends each event's JSON line to this
//! ring — a memory copy — and the kernel drains it on a short timer and
//! before every channel message, so events keep their order relative to
//! everything else the worker says and a long step's `step_start` is seen
//! while the step runs (batching in the worker could not promise that).
//!
//! Layout (native-endian `u64`s, then the data):
//! - byte 0: `write_pos`, total bytes ever appended (written by the worker);
//! - byte 8: `read_pos`, total bytes ever consumed (written by the kernel);
//! - byte 16: the step flag: non-zero asks running tests to call the engine
//!   at their next step boundary ([`EventRing::raise_step_flag`]; the worker
//!   sets and clears it too, `stepkernel_worker/stepping/runtime.py`);
//! - byte 17: set before a client's interrupt sends SIGINT, so an async
//!   test's cancellation is known to be that interrupt (and pauses);
//! - byte [`DATA_OFFSET`]..: the data, `capacity` bytes used as a ring.
//!
//! The worker writes a whole line, then publishes it by advancing
//! `write_pos`; the kernel reads lines up to `write_pos`, then advances
//! `read_pos`. When a line does not fit, the worker sends it over the
//! channel instead: the kernel drains the ring before handling any channel
//! message, so the order still holds. The Python side is
//! `stepkernel_worker/channel.py` (`EventRing`).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Where the data starts (a cache line after the two positions).
pub const DATA_OFFSET: usize = 64;
/// Default size of the mapping: room for about 4000 step events.
pub const DEFAULT_SIZE: usize = 1 << 20;

/// The kernel's side of the ring: owns the mapping and the file behind it.
pub struct EventRing {
    fd: OwnedFd,
    base: *mut u8,
    size: usize,
}

// SAFETY: the mapping is plain shared memory; all access goes through
// `&mut self` (reads of data) or atomics (positions).
unsafe impl Send for EventRing {}

impl EventRing {
    /// Creates an anonymous shared file of `size` bytes and maps it.
    pub fn create(size: usize) -> std::io::Result<EventRing> {
        assert!(size > DATA_OFFSET * 2, "ring too small");
        let fd = anonymous_file()?;
        // SAFETY: fd is an open file we own.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: mapping a file we own with its full size; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EventRing {
            fd,
            base: base.cast(),
            size,
        })
    }

    /// The file descriptor the worker maps (inherited across exec).
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// The size of the mapping (the worker maps the same).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Asks the worker's running test to look at its next step boundary
    /// (after a `pause_request` or `breakpoints` message was sent).
    pub fn raise_step_flag(&self) {
        self.header_byte(16).store(1, Ordering::Release);
    }

    /// Marks the next SIGINT as a client's interrupt.
    pub fn raise_interrupt_flag(&self) {
        self.header_byte(17).store(1, Ordering::Release);
    }

    fn header_byte(&self, offset: usize) -> &AtomicU8 {
        assert!(offset < DATA_OFFSET);
        // SAFETY: the offset lies in the mapped header, below DATA_OFFSET.
        unsafe { &*(self.base.add(offset) as *const AtomicU8) }
    }

    fn capacity(&self) -> u64 {
        (self.size - DATA_OFFSET) as u64
    }

    fn position(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: offsets 0 and 8 are 8-aligned (the mapping is page-aligned)
        // and inside the mapping, which lives as long as `self`.
        unsafe { &*(self.base.add(offset) as *const AtomicU64) }
    }

    /// Takes every complete line the worker has published (without newlines).
    pub fn drain(&mut self) -> Vec<Vec<u8>> {
        let write = self.position(0).load(Ordering::Acquire);
        let read = self.position(8).load(Ordering::Relaxed);
        let capacity = self.capacity();
        if write <= read || write - read > capacity {
            // Nothing new, or a corrupted position: never read out of bounds.
            if write.saturating_sub(read) > capacity {
                self.position(8).store(write, Ordering::Release);
            }
            return Vec::new();
        }
        let length = (write - read) as usize;
        let start = (read % capacity) as usize;
        let mut bytes = Vec::with_capacity(length);
        // SAFETY: both ranges are inside the data area.
        unsafe {
            let data = self.base.add(DATA_OFFSET);
            let first = length.min(capacity as usize - start);
            bytes.extend_from_slice(std::slice::from_raw_parts(data.add(start), first));
            bytes.extend_from_slice(std::slice::from_raw_parts(data, length - first));
        }
        self.position(8).store(write, Ordering::Release);
        bytes
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    }
}

impl Drop for EventRing {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `create` mapped.
        unsafe {
            libc::munmap(self.base.cast(), self.size);
        }
    }
}

#[cfg(target_os = "linux")]
fn anonymous_file() -> std::io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name; the fd is owned right after.
    let fd = unsafe { libc::memfd_create(c"stepkernel-events".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned this open descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn anonymous_file() -> std::io::Result<OwnedFd> {
    // Elsewhere events simply travel over the channel.
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "no memfd_create",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Appends like the worker does (data, then `write_pos`).
    fn append(ring: &EventRing, line: &[u8]) -> bool {
        let write = ring.position(0).load(Ordering::Relaxed);
        let read = ring.position(8).load(Ordering::Acquire);
        let capacity = ring.capacity();
        if write + line.len() as u64 - read > capacity {
            return false;
        }
        for (i, byte) in line.iter().enumerate() {
            let at = ((write + i as u64) % capacity) as usize;
            // SAFETY: inside the data area.
            unsafe { *ring.base.add(DATA_OFFSET + at) = *byte };
        }
        ring.position(0)
            .store(write + line.len() as u64, Ordering::Release);
        true
    }

    #[test]
    fn lines_come_back_in_order_across_the_wrap() {
        let mut ring = EventRing::create(DATA_OFFSET + 256).unwrap();
        let mut seen = Vec::new();
        for i in 0..100 {
            let line = format!("{{\"n\":{i}}}\n");
            assert!(append(&ring, line.as_bytes()));
            if i % 7 == 0 {
                seen.extend(ring.drain());
            }
        }
        seen.extend(ring.drain());
        let expected: Vec<Vec<u8>> = (0..100)
            .map(|i| format!("{{\"n\":{i}}}").into_bytes())
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_full_ring_refuses_until_drained() {
        let mut ring = EventRing::create(DATA_OFFSET + 128).unwrap();
        let line = [b'x'; 63];
        let mut line = line.to_vec();
        line.push(b'\n');
        assert!(append(&ring, &line));
        assert!(append(&ring, &line));
        assert!(!append(&ring, &line), "128 bytes hold two 64-byte lines");
        assert_eq!(ring.drain().len(), 2);
        assert!(append(&ring, &line));
    }

    #[test]
    fn a_corrupt_write_position_reads_nothing() {
        let mut ring = EventRing::create(DATA_OFFSET + 128).unwrap();
        ring.position(0).store(1 << 40, Ordering::Release);
        assert!(ring.drain().is_empty());
        assert_eq!(ring.position(8).load(Ordering::Acquire), 1 << 40);
    }
}
