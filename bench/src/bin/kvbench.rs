//! `kvbench`: closed- or open-loop load against kvd (native protocol or
//! HTTP), Redis and other RESP servers, memcached or etcd, with HDR latency
//! histograms; `kvbench plot` draws `.hgrm` files as percentile spectra and
//! `kvbench floor` probes the machine's floor. See `kvbench --help`.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use kv_bench::driver::{self, Protocol};
use kv_bench::run::{self, Config, End, Progress, Rate};
use kv_bench::schedule::{Arrival, OPS_PER_SEC_MIN};
use kv_bench::workload::{KeyDist, Mix, Ttl, Workload};
use kv_bench::{affinity, floor, plot, stats};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "kvbench",
    version,
    about = "Load generator with latency histograms for kvd, Redis, memcached and etcd",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Server address, or several separated by commas (connections are
    /// spread over them).
    #[arg(long, default_value = "127.0.0.1:7379")]
    target: String,
    /// any: send to the target; leader: send each request to its shard's
    /// leader (kvd clusters, native protocol; the topology is read at start).
    #[arg(long, default_value = "any")]
    route: String,
    /// native (kvd), http (kvd's HTTP API), resp (Redis and compatible
    /// servers), memcached (text protocol) or etcd (v3 JSON gateway).
    #[arg(long, default_value = "native")]
    protocol: String,
    /// Connections in total.
    #[arg(short = 'c', long, default_value_t = 50)]
    connections: usize,
    /// Requests sent per connection before waiting for the answers
    /// (closed loop only).
    #[arg(short = 'P', long, default_value_t = 1)]
    pipeline: usize,
    /// Open loop: offer this many requests per second in total, spread
    /// over the connections, whether or not earlier ones were answered;
    /// latency runs from each request's intended send time.
    #[arg(long, value_name = "OPS_PER_SEC")]
    rate: Option<f64>,
    /// Open loop: gaps between requests, poisson (exponential, the
    /// default) or uniform (equal).
    #[arg(long, default_value = "poisson")]
    arrival: String,
    /// CPUs for all of kvbench's threads (one load thread per CPU), e.g.
    /// `1` or `2-3`.
    #[arg(long, default_value = "0")]
    cores: String,
    /// Measured seconds.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many measured requests (answered or failed), in
    /// total over the connections, instead of after --duration. With
    /// --rate the run lasts about N / rate seconds.
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    requests: Option<u64>,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// set | get | mix:<read share>, e.g. mix:0.9.
    #[arg(short = 'w', long, default_value = "set")]
    workload: String,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// uniform | zipf:<s> | seq.
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// Value size in bytes: N or MIN-MAX.
    #[arg(long, default_value = "256")]
    value_bytes: String,
    /// Value bytes: text (repeated letters, compressible) or random (incompressible).
    #[arg(long, default_value = "text", value_parser = ["text", "random"])]
    values: String,
    /// Share of SETs, 0 to 1, that carry an expiry of --ttl seconds (the
    /// choice is seeded; not with etcd, whose expiries need leases).
    #[arg(long, value_name = "F", default_value_t = 0.0)]
    ttl_share: f64,
    /// Time to live of the SETs --ttl-share picks, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    ttl: u64,
    /// Write every key once before the run, so reads hit.
    #[arg(long)]
    preload: bool,
    /// Seed of the workload generators (printed; random if not given).
    #[arg(long)]
    seed: Option<u64>,
    /// Server process id: report its CPU seconds per million operations.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Name of this run in the reports.
    #[arg(long, default_value = "run")]
    label: String,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write HdrHistogram percentile distributions (<label>-<op>.hgrm) here.
    #[arg(long)]
    hgrm_dir: Option<PathBuf>,
    /// Write this run's percentile spectrum (one line per operation) as SVG.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Draw .hgrm files (from --hgrm-dir) as percentile spectra in one SVG.
    Plot {
        /// The .hgrm files, one line each (labelled with the file name).
        #[arg(required = true)]
        hgrm: Vec<PathBuf>,
        #[arg(short = 'o', long, value_name = "FILE.svg")]
        output: PathBuf,
        #[arg(long, default_value = "latency by percentile")]
        title: String,
    },
    /// The machine's floor: loopback TCP round trip, 4 KiB write + fdatasync.
    Floor {
        /// Directory for the fdatasync probe (the file system under test).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Loopback round trips measured.
        #[arg(long, default_value_t = 20_000)]
        rtt_iterations: usize,
        /// Writes (each with fdatasync) measured per case.
        #[arg(long, default_value_t = 1000)]
        fsync_iterations: usize,
        /// CPUs for the probe: `A,B` puts the client on A and the echo
        /// thread on B (a cross-CPU round trip, as between kvbench and a
        /// server); one CPU runs both there. Default: not pinned.
        #[arg(long)]
        cores: Option<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    // Like other Unix tools: a closed pipe (`| head`) ends the process
    // quietly instead of a panic on the next print.
    // SAFETY: restoring a signal's default disposition at startup.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Plot { hgrm, output, title }) => plot_files(&hgrm, &output, &title),
        Some(Command::Floor { dir, rtt_iterations, fsync_iterations, cores, json }) => {
            floor_main(&dir, rtt_iterations, fsync_iterations, cores.as_deref(), json)
        }
        None => real_main(cli),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kvbench: {e}");
            ExitCode::from(2)
        }
    }
}

fn value_range(s: &str) -> Result<(usize, usize), String> {
    let err = || format!("value-bytes {s:?} is not N or MIN-MAX");
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (a.parse().map_err(|_| err())?, b.parse().map_err(|_| err())?);
            if a > b {
                return Err(err());
            }
            Ok((a, b))
        }
        None => {
            let n = s.parse().map_err(|_| err())?;
            Ok((n, n))
        }
    }
}

fn plot_files(files: &[PathBuf], output: &std::path::Path, title: &str) -> Result<ExitCode, String> {
    let series = files.iter().map(|f| plot::read_hgrm(f)).collect::<Result<Vec<_>, _>>()?;
    plot::write_svg(output, &series, title)?;
    eprintln!("kvbench: wrote {} ({} series)", output.display(), series.len());
    Ok(ExitCode::SUCCESS)
}

fn floor_main(
    dir: &std::path::Path,
    rtt: usize,
    fsync: usize,
    cores: Option<&str>,
    json: bool,
) -> Result<ExitCode, String> {
    if rtt == 0 || fsync == 0 {
        return Err("iterations must be positive".into());
    }
    let cpus = match cores {
        None => None,
        Some(list) => {
            // In the order given: client first.
            let bad = || format!("floor --cores takes one or two CPUs, not {list:?}");
            let one = |part: &str| match affinity::parse_cpus(part)?.as_slice() {
                [cpu] => Ok(*cpu),
                _ => Err(bad()),
            };
            let cpus = list.split(',').map(one).collect::<Result<Vec<usize>, String>>()?;
            match cpus.as_slice() {
                [one] => Some(floor::Cpus { client: *one, server: *one }),
                [a, b] => Some(floor::Cpus { client: *a, server: *b }),
                _ => return Err(bad()),
            }
        }
    };
    let probes =
        floor::probe_all(rtt, fsync, dir, cpus).map_err(|e| format!("floor probe in {}: {e}", dir.display()))?;
    if json {
        println!("{}", floor::to_json(&probes, dir));
    } else {
        print!("{}", floor::summary(&probes, dir));
    }
    Ok(ExitCode::SUCCESS)
}

/// The open-loop rate, checked: enough per connection to send at all.
fn rate(cli: &Cli) -> Result<Option<Rate>, String> {
    let Some(ops_per_sec) = cli.rate else { return Ok(None) };
    let arrival = Arrival::parse(&cli.arrival)?;
    if !(ops_per_sec.is_finite() && ops_per_sec / cli.connections as f64 >= OPS_PER_SEC_MIN) {
        return Err(format!("rate {ops_per_sec} is below {OPS_PER_SEC_MIN} ops/s per connection"));
    }
    if cli.pipeline != 1 {
        return Err("--pipeline is for the closed loop: with --rate, requests go out when scheduled".into());
    }
    Ok(Some(Rate { ops_per_sec, arrival }))
}

fn real_main(cli: Cli) -> Result<ExitCode, String> {
    let cpus = affinity::parse_cpus(&cli.cores)?;
    // Before any other thread starts, so that all of them inherit the set.
    affinity::pin_current_thread(&cpus)?;
    let targets = cli
        .target
        .split(',')
        .map(|t| {
            t.to_socket_addrs()
                .map_err(|e| format!("target {t}: {e}"))?
                .next()
                .ok_or_else(|| format!("target {t} resolves to nothing"))
        })
        .collect::<Result<Vec<SocketAddr>, String>>()?;
    let topology = match cli.route.as_str() {
        "any" => None,
        "leader" if cli.protocol == "native" => {
            let seeds: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
            let cc = kv_net::cluster_client::ClusterClient::connect(&seeds, Duration::from_secs(10))
                .map_err(|e| format!("reading the topology: {e}"))?;
            Some(cc.topology().clone())
        }
        other => return Err(format!("route {other:?} is not any, or leader (native protocol only)")),
    };
    let (value_bytes_min, value_bytes_max) = value_range(&cli.value_bytes)?;
    if cli.keys == 0 || cli.connections == 0 || cli.pipeline == 0 || cli.duration <= 0.0 || cli.warmup < 0.0 {
        return Err("keys, connections, pipeline and duration must be positive".into());
    }
    let end = match cli.requests {
        Some(0) => return Err("--requests must be positive".into()),
        Some(n) => End::Requests(n),
        None => End::After(Duration::from_secs_f64(cli.duration)),
    };
    let seed = cli.seed.unwrap_or_else(rand::random);
    let protocol = Protocol::parse(&cli.protocol)?;
    let ttl = Ttl::new(cli.ttl_share, cli.ttl)?;
    driver::check_ttl(protocol, ttl)?;
    let workload = Workload {
        mix: Mix::parse(&cli.workload)?,
        keys: cli.keys,
        dist: KeyDist::parse(&cli.dist)?,
        value_bytes_min,
        value_bytes_max,
        key_prefix: "kvbench:".into(),
        ttl,
        random_values: cli.values == "random",
    };
    let config = Config {
        targets,
        topology,
        protocol,
        connections: cli.connections,
        pipeline: cli.pipeline,
        cpus,
        end,
        warmup: Duration::from_secs_f64(cli.warmup),
        workload,
        seed,
        rate: rate(&cli)?,
    };
    let load = match config.rate {
        None => format!("closed loop P={}", cli.pipeline),
        Some(r) => format!("open loop {} ops/s {}", r.ops_per_sec, cli.arrival),
    };
    let expiry = if ttl.share > 0.0 { format!(" ttl-share={} ttl={}s", ttl.share, ttl.seconds) } else { String::new() };
    eprintln!(
        "kvbench {}: {} {} c={} {load} {}{expiry} keys={} dist={} value={}B seed={seed}",
        cli.label, cli.protocol, cli.target, cli.connections, cli.workload, cli.keys, cli.dist, cli.value_bytes
    );
    if cli.preload {
        run::preload(&config)?;
    }
    let progress = Arc::new(Progress::default());
    let cpu_before = cli.server_pid.map(run::process_cpu_seconds).transpose()?;
    let (own_before, machine_before, wall_before) =
        (run::process_cpu_seconds(std::process::id())?, run::machine_busy_cpu_seconds()?, Instant::now());
    // How long the run should take, if known: a bound for the printer.
    let expected = match (config.end, config.rate) {
        (End::After(d), _) => Some(d),
        (End::Requests(n), Some(r)) => Some(Duration::from_secs_f64(n as f64 / r.ops_per_sec)),
        (End::Requests(_), None) => None,
    };
    let printer = spawn_progress(progress.clone(), expected.map(|e| config.warmup + e));
    let outcome = run::run(&config, progress.clone())?;
    let cpu_after = cli.server_pid.map(run::process_cpu_seconds).transpose()?;
    let own_cpu_s = run::process_cpu_seconds(std::process::id())? - own_before;
    let machine_cpu_s = run::machine_busy_cpu_seconds()? - machine_before;
    let wall_s = wall_before.elapsed().as_secs_f64();
    let server_cpu_s = cpu_before.zip(cpu_after).map(|(b, a)| a - b);
    // CPUs' worth of work done by neither kvbench nor the server during the
    // run: other processes sharing the machine (noise in the results).
    let other_cpus = server_cpu_s.map(|server| ((machine_cpu_s - own_cpu_s - server) / wall_s).max(0.0));
    printer.store(true, Ordering::Relaxed);
    let seconds = outcome.measured.as_secs_f64().max(1e-9);
    let s = &outcome.stats;
    let server_cpu_s_per_mop = cpu_before.zip(cpu_after).map(|(b, a)| (a - b) / (s.ops().max(1) as f64 / 1e6));
    if let Some(dir) = &cli.hgrm_dir {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (name, op) in s.named() {
            if !op.latency_ns.is_empty() {
                let path = dir.join(format!("{}-{}.hgrm", cli.label, name.to_lowercase()));
                std::fs::write(&path, stats::hgrm(&op.latency_ns)).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
    }
    if let Some(path) = &cli.plot {
        let series = s
            .named()
            .iter()
            .filter(|(_, op)| !op.latency_ns.is_empty())
            .map(|(name, op)| plot::parse_hgrm(&format!("{} {name}", cli.label), &stats::hgrm(&op.latency_ns)))
            .collect::<Result<Vec<_>, _>>()?;
        if series.is_empty() {
            eprintln!("kvbench: no latency recorded, no plot written");
        } else {
            plot::write_svg(path, &series, &format!("kvbench {}: {load}", cli.label))?;
        }
    }
    if cli.json {
        let extra = json!({
            "label": cli.label, "target": cli.target, "protocol": cli.protocol, "connections": cli.connections,
            "pipeline": cli.pipeline, "workload": cli.workload, "keys": cli.keys, "dist": cli.dist,
            "value_bytes": cli.value_bytes, "values": cli.values, "ttl_share": ttl.share, "ttl_s": ttl.seconds, "seed": seed,
            "server_cpu_s_per_mop": server_cpu_s_per_mop,
            "server_cpu_s": server_cpu_s, "client_cpu_s": own_cpu_s, "machine_busy_cpu_s": machine_cpu_s,
            "wall_s": wall_s, "other_cpus": other_cpus,
            "rate": cli.rate, "arrival": cli.rate.map(|_| &cli.arrival),
            "duration_s": cli.requests.is_none().then_some(cli.duration), "requests": cli.requests,
        });
        println!("{}", stats::to_json(s, seconds, extra));
    } else {
        eprint!("\r{:60}\r", "");
        print!("{}", stats::summary(s, seconds));
        if let Some(n) = cli.requests {
            println!("{n} measured requests in {seconds:.3} s");
        }
        if let Some(cpu) = server_cpu_s_per_mop {
            println!("server CPU: {cpu:.3} s per million ops");
        }
        if let Some(r) = config.rate {
            println!(
                "open loop: offered {:.0} ops/s ({}), scheduled {}, unanswered {}",
                r.ops_per_sec, cli.arrival, s.scheduled, s.unanswered
            );
        }
    }
    if let Some(e) = &s.first_error {
        eprintln!("kvbench: {} errors, {} unanswered, e.g.: {e}", s.errors(), s.unanswered);
    }
    Ok(if s.errors() > 0 || s.unanswered > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Prints ops/s once a second on stderr until the returned flag is set
/// (or, if the run's length is known, a while after it should have ended).
fn spawn_progress(progress: Arc<Progress>, total: Option<Duration>) -> Arc<std::sync::atomic::AtomicBool> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut last = 0;
        let overdue = |total: Duration| started.elapsed() >= total + Duration::from_secs(30);
        while !flag.load(Ordering::Relaxed) && !total.is_some_and(overdue) {
            std::thread::sleep(Duration::from_secs(1));
            let done = progress.done.load(Ordering::Relaxed);
            let phase = if progress.measuring.load(Ordering::Relaxed) { "measuring" } else { "warm-up" };
            eprint!(
                "\r{:5.1}s {phase:9} {:>10} ops/s  errors {}   ",
                started.elapsed().as_secs_f64(),
                done - last,
                progress.errors.load(Ordering::Relaxed)
            );
            let _ = std::io::stderr().flush();
            last = done;
        }
    });
    stop
}
