//! Starting and stopping real kvd processes, and running kvctl.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous: a loaded CI machine may be slow to start a process.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
pub const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a log line about something that already happened may take to
/// be read from the process.
pub const LOG_LINE_TIMEOUT: Duration = Duration::from_secs(30);

pub fn kvd_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvd")
}

pub fn kvctl_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kvctl")
}

/// A running kvd. Dropping it kills the process (by PID) and reaps it.
pub struct Kvd {
    child: Child,
    pub addr: SocketAddr,
    /// Where it serves RESP and HTTP.
    pub resp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// Set once the log reader reached the end of kvd's stderr.
    log_done: Arc<AtomicBool>,
}

/// Builds a kvd command line: data dir, loopback with a kernel-picked port,
/// plus `extra` flags.
pub fn kvd_command(data_dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(kvd_bin());
    cmd.arg("--data-dir").arg(data_dir).args(["--log-level", "info"]);
    if !extra.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    // RESP and HTTP on the native address's IP, on ports the kernel picks.
    let ip = extra
        .iter()
        .position(|a| *a == "--listen")
        .and_then(|i| extra.get(i + 1))
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map_or("127.0.0.1".to_string(), |a| a.ip().to_string());
    for flag in ["--resp-listen", "--http-listen"] {
        if !extra.contains(&flag) {
            cmd.args([flag, &format!("{ip}:0")]);
        }
    }
    cmd.args(extra);
    cmd.env_remove("KVD_CONFIG").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

impl Kvd {
    /// Starts kvd on `data_dir` and waits for its ready line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Kvd {
        Kvd::start_command(kvd_command(data_dir, extra)).unwrap_or_else(|log| panic!("kvd did not start:\n{log}"))
    }

    /// Starts a prepared command; on failure returns the log it wrote.
    pub fn start_command(mut cmd: Command) -> Result<Kvd, String> {
        let mut child = cmd.spawn().expect("kvd binary runs");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let sink = log.clone();
        let log_done = Arc::new(AtomicBool::new(false));
        let done = log_done.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("kvd ready: ") {
                    let _ = ready_tx.send(ready_addrs(&line));
                }
                sink.lock().unwrap().push(line);
            }
            done.store(true, Ordering::SeqCst);
            let _ = ready_tx.send(None);
        });
        let text = |log: &Arc<Mutex<Vec<String>>>| log.lock().unwrap().join("\n");
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok(Some((addr, resp_addr, http_addr))) => Ok(Kvd { child, addr, resp_addr, http_addr, log, log_done }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(text(&log))
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits (bounded) until the log holds `needle`: the process writes its
    /// log asynchronously, so a line about something that just happened
    /// may not have been read yet. Whether it came.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + LOG_LINE_TIMEOUT;
        while !self.log().contains(needle) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling a child we started and have not reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill {sig}");
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit().unwrap_or_else(|| panic!("kvd did not stop within {STOP_TIMEOUT:?}:\n{}", self.log()))
    }

    /// Waits (bounded) for the exit after a signal the test already sent.
    pub fn stop_after_signal(mut self) -> std::process::ExitStatus {
        self.wait_exit().unwrap_or_else(|| panic!("kvd did not stop within {STOP_TIMEOUT:?}:\n{}", self.log()))
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) for the process to exit; its status, if it did.
    /// Once it did, `log` holds every line it wrote (the reader caught up).
    pub fn wait_exit(&mut self) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                while !self.log_done.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Kvd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs kvd to completion (for commands that exit by themselves) with a
/// bounded wait.
pub fn run_kvd(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(kvd_bin());
    cmd.args(args).env_remove("KVD_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    run_bounded(cmd, b"")
}

/// Runs kvctl against `endpoint` with `stdin` as its input.
pub fn kvctl(endpoint: &str, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(kvctl_bin());
    cmd.arg("--endpoints").arg(endpoint).args(args).env_remove("KVCTL_ENDPOINTS");
    run_bounded(cmd, stdin)
}

pub fn run_bounded(cmd: Command, stdin: &[u8]) -> Output {
    run_bounded_for(cmd, stdin, READY_TIMEOUT)
}

/// Runs `cmd` with `stdin` as its input; kills it (by PID) and panics if it
/// takes longer than `timeout`.
pub fn run_bounded_for(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Output {
    use std::io::Write;
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("binary runs");
    let mut input = child.stdin.take().expect("stdin piped");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("process output"),
        Err(_) => {
            // SAFETY: the PID is our child, not yet reaped (wait is pending).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("process {pid} ({cmd:?}) did not finish within {timeout:?}");
        }
    };
    feeder.join().unwrap();
    out
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A fresh temporary data directory.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("kvd-it-").tempdir().expect("temp dir")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Seed for randomised tests: `KVD_TEST_SEED` or random, printed so a
/// failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("KVD_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    println!("{test}: seed {seed} (rerun with KVD_TEST_SEED={seed})");
    seed
}

/// The native, RESP and HTTP addresses of a "kvd ready" line.
fn ready_addrs(line: &str) -> Option<(SocketAddr, SocketAddr, SocketAddr)> {
    let after = |label: &str| line.split(label).nth(1)?.split(',').next()?.trim().parse::<SocketAddr>().ok();
    Some((after("native protocol on ")?, after("RESP on ")?, after("HTTP on ")?))
}
