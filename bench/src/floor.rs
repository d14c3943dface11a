//! The machine's floor, printed beside benchmark results so that a latency
//! can be read against what the hardware allows: the round trip of one
//! byte over a loopback TCP connection (to an echo thread), and one 4 KiB
//! write followed by `fdatasync`, appended to a new file and overwriting a
//! preallocated one (a WAL segment's two cases). Plain blocking std IO:
//! this measures the machine, not an IO framework.
//!
//! Every loop is bounded by its iteration count; the scratch file is
//! removed afterwards, also on error.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::json;

/// Bytes written before each fdatasync.
pub const WRITE_BYTES: usize = 4096;
/// Round trips (or writes) run before measuring, as a share of the
/// measured ones: connection set-up, page cache and allocation settle.
pub const WARMUP_DIVISOR: usize = 10;

/// Percentiles of one probe, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub name: &'static str,
    pub iterations: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Probe {
    fn from_histogram(name: &'static str, h: &Histogram<u64>) -> Probe {
        let us = |ns: u64| ns as f64 / 1e3;
        Probe {
            name,
            iterations: h.len(),
            p50_us: us(h.value_at_quantile(0.5)),
            p99_us: us(h.value_at_quantile(0.99)),
            max_us: us(h.max()),
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// CPUs for the probe: the client (and the write probe) on one, the echo
/// thread on the other; the same CPU for both measures a round trip without
/// a cross-CPU wake-up, which is much cheaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpus {
    pub client: usize,
    pub server: usize,
}

fn pin(cpu: Option<usize>) -> io::Result<()> {
    match cpu {
        Some(c) => crate::affinity::pin_current_thread(&[c]).map_err(io::Error::other),
        None => Ok(()),
    }
}

/// Round trips of one byte to an echo thread over loopback TCP.
pub fn loopback_rtt(iterations: usize, cpus: Option<Cpus>) -> io::Result<Probe> {
    assert!(iterations > 0);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let rounds = iterations + iterations / WARMUP_DIVISOR;
    // Started before the client pins itself, so it may still move to
    // another CPU (a thread inherits its creator's set).
    let echo = std::thread::spawn(move || -> io::Result<()> {
        pin(cpus.map(|c| c.server))?;
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut b = [0u8; 1];
        for _ in 0..rounds {
            s.read_exact(&mut b)?;
            s.write_all(&b)?;
        }
        Ok(())
    });
    let client = || -> io::Result<Histogram<u64>> {
        pin(cpus.map(|c| c.client))?;
        let mut client = TcpStream::connect(addr)?;
        client.set_nodelay(true)?;
        let mut h = histogram();
        let mut b = [7u8; 1];
        for i in 0..rounds {
            let t = Instant::now();
            client.write_all(&b)?;
            client.read_exact(&mut b)?;
            if i >= rounds - iterations {
                h.saturating_record(t.elapsed().as_nanos() as u64);
            }
        }
        Ok(h)
    };
    let measured = client();
    // The echo thread's error (a CPU it cannot use) explains the client's.
    echo.join().expect("echo thread does not panic")?;
    Ok(Probe::from_histogram("tcp_loopback_rtt_1B", &measured?))
}

/// A scratch file removed on drop.
struct Scratch(PathBuf, File);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// 4 KiB writes, each followed by fdatasync, in a scratch file in `dir`:
/// appended (the file grows, so its size is synced too) or, with
/// `preallocated`, overwriting blocks already written and synced.
pub fn write_fdatasync(dir: &Path, iterations: usize, preallocated: bool) -> io::Result<Probe> {
    assert!(iterations > 0);
    let path = dir.join(format!("kvbench-floor-{}-{preallocated}.tmp", std::process::id()));
    let file = OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    let scratch = Scratch(path, file);
    let rounds = iterations + iterations / WARMUP_DIVISOR;
    let block = vec![0xA5u8; WRITE_BYTES];
    if preallocated {
        for i in 0..rounds {
            scratch.1.write_all_at(&block, (i * WRITE_BYTES) as u64)?;
        }
        scratch.1.sync_all()?;
    }
    let mut h = histogram();
    for i in 0..rounds {
        let t = Instant::now();
        scratch.1.write_all_at(&block, (i * WRITE_BYTES) as u64)?;
        scratch.1.sync_data()?;
        if i >= rounds - iterations {
            h.saturating_record(t.elapsed().as_nanos() as u64);
        }
    }
    let name = if preallocated { "write4k_fdatasync_prealloc" } else { "write4k_fdatasync_append" };
    Ok(Probe::from_histogram(name, &h))
}

/// All probes: loopback with `rtt_iterations`, both write cases with
/// `fsync_iterations` in `dir`. With `cpus`, the calling thread stays
/// pinned to the client CPU afterwards.
pub fn probe_all(
    rtt_iterations: usize,
    fsync_iterations: usize,
    dir: &Path,
    cpus: Option<Cpus>,
) -> io::Result<Vec<Probe>> {
    Ok(vec![
        loopback_rtt(rtt_iterations, cpus)?,
        write_fdatasync(dir, fsync_iterations, false)?,
        write_fdatasync(dir, fsync_iterations, true)?,
    ])
}

pub fn summary(probes: &[Probe], dir: &Path) -> String {
    let mut out = format!("floor (fdatasync in {}):\n", dir.display());
    for p in probes {
        out += &format!(
            "  {:28} n={:<6} p50_us={:<9.1} p99_us={:<9.1} max_us={:.1}\n",
            p.name, p.iterations, p.p50_us, p.p99_us, p.max_us
        );
    }
    out
}

pub fn to_json(probes: &[Probe], dir: &Path) -> serde_json::Value {
    let probes: Vec<_> = probes
        .iter()
        .map(
            |p| json!({"probe": p.name, "n": p.iterations, "p50_us": p.p50_us, "p99_us": p.p99_us, "max_us": p.max_us}),
        )
        .collect();
    json!({ "dir": dir.display().to_string(), "probes": probes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_measure_the_iterations_asked_and_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let probes = probe_all(200, 20, dir.path(), None).unwrap();
        let names: Vec<_> = probes.iter().map(|p| p.name).collect();
        assert_eq!(names, ["tcp_loopback_rtt_1B", "write4k_fdatasync_append", "write4k_fdatasync_prealloc"]);
        assert_eq!(probes.iter().map(|p| p.iterations).collect::<Vec<_>>(), [200, 20, 20]);
        for p in &probes {
            assert!(p.p50_us > 0.0 && p.p50_us <= p.p99_us && p.p99_us <= p.max_us, "{p:?}");
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "scratch files removed");
        let text = summary(&probes, dir.path());
        assert_eq!(text.lines().count(), 4, "{text}");
        assert_eq!(to_json(&probes, dir.path())["probes"][2]["n"], 20);
    }

    #[test]
    fn pinned_round_trips() {
        // On a thread of its own: the probe pins the calling thread.
        std::thread::spawn(|| {
            let cpu = crate::affinity::current().unwrap()[0];
            let p = loopback_rtt(100, Some(Cpus { client: cpu, server: cpu })).unwrap();
            assert_eq!(p.iterations, 100);
            assert_eq!(crate::affinity::current().unwrap(), [cpu]);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_fdatasync(&dir.path().join("nope"), 1, false).is_err());
    }
}
