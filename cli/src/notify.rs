//! systemd's readiness protocol (`sd_notify(3)`), written out so kvd needs
//! no libsystemd: one datagram of newline-separated `KEY=value` lines sent
//! to the socket named by `NOTIFY_SOCKET` (a path, or `@name` for a name in
//! the abstract namespace). kvd sends `READY=1` (with `MAINPID=`) when it
//! serves, `STATUS=<text>` as it starts and stops, `STOPPING=1` once a stop
//! begins and `WATCHDOG=1` while it is healthy.
//!
//! The environment is read once ([`Notifier::from_env`]). Without
//! `NOTIFY_SOCKET` every call does nothing. Notification is best effort: a
//! failed send is logged once (warn) and never stops kvd.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Longest a send may block (the manager's queue full): the supervisor and
/// the signal thread must go on even if systemd does not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// One assignment of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// `READY=1`: start-up is complete.
    Ready,
    /// `STATUS=<text>`: shown by `systemctl status`.
    Status(&'a str),
    /// `STOPPING=1`: a stop has begun.
    Stopping,
    /// `WATCHDOG=1`: the service is alive (see `WatchdogSec=`).
    Watchdog,
    /// `MAINPID=<pid>`: the service's main process.
    MainPid(u32),
}

/// The datagram for `messages`: one `KEY=value` line each. A line break in
/// a status text would start another assignment, so it becomes a space.
pub fn encode(messages: &[Message]) -> String {
    let mut out = String::new();
    for m in messages {
        match m {
            Message::Ready => out.push_str("READY=1"),
            Message::Status(text) => {
                out.push_str("STATUS=");
                out.extend(text.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }));
            }
            Message::Stopping => out.push_str("STOPPING=1"),
            Message::Watchdog => out.push_str("WATCHDOG=1"),
            Message::MainPid(pid) => out.push_str(&format!("MAINPID={pid}")),
        }
        out.push('\n');
    }
    out
}

/// Where `NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A socket file (an absolute path).
    Path(std::path::PathBuf),
    /// A name in Linux's abstract namespace (`@name`; the name without `@`).
    Abstract(Vec<u8>),
}

/// Parses `NOTIFY_SOCKET` as sd_notify does: `@name` is abstract, `/...` a
/// path. Anything else (a relative path, systemd's `vsock:` addresses) is
/// refused with the reason.
pub fn parse_target(value: &OsStr) -> Result<Target, String> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'@') if bytes.len() > 1 => Ok(Target::Abstract(bytes[1..].to_vec())),
        Some(b'/') => Ok(Target::Path(Path::new(value).to_path_buf())),
        _ => Err(format!("NOTIFY_SOCKET={value:?} is neither an absolute path nor an @abstract name")),
    }
}

/// The watchdog ping interval: half of `WATCHDOG_USEC`, if that is set, is
/// a positive number, and `WATCHDOG_PID` is unset or names `pid`.
pub fn watchdog_interval(usec: Option<&str>, watchdog_pid: Option<&str>, pid: u32) -> Option<Duration> {
    if let Some(p) = watchdog_pid {
        if p.trim().parse::<u32>().ok() != Some(pid) {
            return None;
        }
    }
    let usec = usec?.trim().parse::<u64>().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec) / 2)
}

/// The connection to the service manager; does nothing when kvd does not
/// run under one. Shared by reference between threads.
#[derive(Debug)]
pub struct Notifier {
    /// The socket and its address; `None` without `NOTIFY_SOCKET`.
    to: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    /// Whether a failure was logged (once is enough).
    warned: AtomicBool,
    /// Whether `STOPPING=1` was sent.
    stopping: AtomicBool,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` once.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty());
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(socket.as_deref(), usec.as_deref(), pid.as_deref())
    }

    /// A notifier for these values of `NOTIFY_SOCKET`, `WATCHDOG_USEC` and
    /// `WATCHDOG_PID`. A socket that cannot be used is logged and ignored.
    pub fn new(socket: Option<&OsStr>, watchdog_usec: Option<&str>, watchdog_pid: Option<&str>) -> Notifier {
        let to = socket.and_then(|s| match connect(s) {
            Ok(to) => Some(to),
            Err(e) => {
                tracing::warn!("cannot notify systemd: {e}");
                None
            }
        });
        let watchdog = to.as_ref().and_then(|_| watchdog_interval(watchdog_usec, watchdog_pid, std::process::id()));
        Notifier { to, watchdog, warned: AtomicBool::new(false), stopping: AtomicBool::new(false) }
    }

    /// A notifier that does nothing.
    pub fn disabled() -> Notifier {
        Notifier::new(None, None, None)
    }

    /// Whether a service manager listens.
    pub fn is_enabled(&self) -> bool {
        self.to.is_some()
    }

    /// How often to send `WATCHDOG=1`, if systemd wants it.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `messages` as one datagram (nothing without a manager).
    pub fn send(&self, messages: &[Message]) {
        let Some((socket, addr)) = &self.to else { return };
        if let Err(e) = socket.send_to_addr(encode(messages).as_bytes(), addr) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!("cannot notify systemd (further failures are not logged): {e}");
            }
        }
    }

    pub fn status(&self, text: &str) {
        self.send(&[Message::Status(text)]);
    }

    /// `READY=1` with a status and our PID.
    pub fn ready(&self, status: &str) {
        self.send(&[Message::Ready, Message::Status(status), Message::MainPid(std::process::id())]);
    }

    /// `STOPPING=1` with a status, the first time only (the signal thread
    /// and the main thread both report a stop; later calls do nothing).
    pub fn stopping(&self, status: &str) {
        if !self.stopping.swap(true, Ordering::SeqCst) {
            self.send(&[Message::Stopping, Message::Status(status)]);
        }
    }

    pub fn watchdog(&self) {
        self.send(&[Message::Watchdog]);
    }
}

/// An unbound datagram socket and the manager's address.
fn connect(value: &OsStr) -> Result<(UnixDatagram, SocketAddr), String> {
    let addr = match parse_target(value)? {
        Target::Path(p) => SocketAddr::from_pathname(&p),
        Target::Abstract(name) => SocketAddr::from_abstract_name(name),
    }
    .map_err(|e| format!("NOTIFY_SOCKET={value:?}: {e}"))?;
    let socket = UnixDatagram::unbound().map_err(|e| format!("notification socket: {e}"))?;
    socket.set_write_timeout(Some(SEND_TIMEOUT)).map_err(|e| format!("notification socket: {e}"))?;
    Ok((socket, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_newline_separated_assignments() {
        let text = encode(&[Message::Ready, Message::Status("serving\non 1 core"), Message::MainPid(42)]);
        assert_eq!(text, "READY=1\nSTATUS=serving on 1 core\nMAINPID=42\n");
        assert_eq!(encode(&[Message::Stopping, Message::Status("stopping")]), "STOPPING=1\nSTATUS=stopping\n");
        assert_eq!(encode(&[Message::Watchdog]), "WATCHDOG=1\n");
    }

    #[test]
    fn notify_socket_is_a_path_or_an_abstract_name() {
        assert_eq!(parse_target(OsStr::new("/run/systemd/notify")), Ok(Target::Path("/run/systemd/notify".into())));
        assert_eq!(parse_target(OsStr::new("@kvd/notify")), Ok(Target::Abstract(b"kvd/notify".to_vec())));
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert!(parse_target(OsStr::new(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_for_our_pid_only() {
        assert_eq!(watchdog_interval(Some("30000000"), None, 7), Some(Duration::from_secs(15)));
        assert_eq!(watchdog_interval(Some("200000"), Some("7"), 7), Some(Duration::from_millis(100)));
        assert_eq!(watchdog_interval(Some("200000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn without_a_socket_nothing_is_sent_and_nothing_fails() {
        let n = Notifier::disabled();
        assert!(!n.is_enabled());
        assert_eq!(n.watchdog_interval(), None);
        n.ready("serving");
        n.watchdog();
        n.stopping("stopping");
    }

    #[test]
    fn datagrams_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        receiver.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let n = Notifier::new(Some(path.as_os_str()), Some("2000000"), None);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        let mut buf = [0u8; 512];
        n.stopping("stopping: draining connections");
        n.stopping("stopping again");
        n.status("stopped");
        let got = |buf: &mut [u8]| {
            let len = receiver.recv(buf).unwrap();
            String::from_utf8(buf[..len].to_vec()).unwrap()
        };
        assert_eq!(got(&mut buf), "STOPPING=1\nSTATUS=stopping: draining connections\n");
        assert_eq!(got(&mut buf), "STATUS=stopped\n", "STOPPING=1 is sent once");

        let name = format!("kvd-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let abstract_receiver = UnixDatagram::bind_addr(&addr).unwrap();
        abstract_receiver.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Notifier::new(Some(OsStr::new(&format!("@{name}"))), None, None).watchdog();
        let len = abstract_receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1\n");
    }

    #[test]
    fn a_socket_nobody_listens_on_is_logged_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let n = Notifier::new(Some(dir.path().join("nobody").as_os_str()), None, None);
        assert!(n.is_enabled());
        n.status("starting");
        n.status("still starting");
        assert!(n.warned.load(Ordering::Relaxed));
    }
}
