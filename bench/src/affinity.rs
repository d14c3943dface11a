//! Keeping kvbench off the server's CPUs: `--cores` is parsed here and the
//! calling thread pinned to that set with `sched_setaffinity`. kvbench pins
//! its main thread first, so every thread it starts afterwards (the
//! progress printer, the floor probe's echo thread) inherits the set; the
//! load threads then narrow themselves to one CPU each (glommio's
//! `Placement::Fixed`).

/// Highest CPU number accepted: `cpu_set_t` holds 1024.
pub const CPU_MAX: usize = 1023;

/// Parses a CPU list such as `0`, `2-3` or `0,2-3`.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let err = || format!("cores: {part:?} is not a CPU or range");
        let num = |t: &str| t.trim().parse::<usize>().ok().filter(|c| *c <= CPU_MAX).ok_or_else(err);
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b {
                    return Err(err());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(num(part)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

/// The CPUs the calling thread may run on.
pub fn current() -> Result<Vec<usize>, String> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel writes at
    // most size_of::<cpu_set_t>() bytes into it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(format!("sched_getaffinity: {}", std::io::Error::last_os_error()));
        }
        Ok((0..=CPU_MAX).filter(|c| libc::CPU_ISSET(*c, &set)).collect())
    }
}

/// Pins the calling thread (and the threads it starts later) to `cpus`,
/// which must all be CPUs this thread may use now.
pub fn pin_current_thread(cpus: &[usize]) -> Result<(), String> {
    assert!(!cpus.is_empty(), "pinning to no CPU");
    let allowed = current()?;
    if let Some(c) = cpus.iter().find(|c| !allowed.contains(c)) {
        return Err(format!("cores: CPU {c} is not available (available: {allowed:?})"));
    }
    // SAFETY: as in `current`; CPU_SET is only given numbers <= CPU_MAX.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!("sched_setaffinity: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_and_ranges() {
        assert_eq!(parse_cpus("0"), Ok(vec![0]));
        assert_eq!(parse_cpus("3,0-1,1"), Ok(vec![0, 1, 3]));
        for bad in ["", "a", "2-1", "1-", "5000"] {
            assert!(parse_cpus(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pinning_applies_to_the_thread_and_its_children() {
        // On a thread of its own, so the test harness's threads stay as
        // they are.
        std::thread::spawn(|| {
            let allowed = current().unwrap();
            let first = allowed[0];
            pin_current_thread(&[first]).unwrap();
            assert_eq!(current().unwrap(), vec![first]);
            let child = std::thread::spawn(current).join().unwrap().unwrap();
            assert_eq!(child, vec![first], "a thread started after pinning inherits the set");
            let missing = (0..=CPU_MAX).find(|c| !allowed.contains(c)).unwrap();
            assert!(pin_current_thread(&[missing]).is_err());
        })
        .join()
        .unwrap();
    }
}
