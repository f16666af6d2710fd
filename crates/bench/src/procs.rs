//! Procs: the server processes under test as the kernel sees them — their
//! process trees, CPU seconds (`/proc/<pid>/stat`) and PSS
//! (`/proc/<pid>/smaps_rollup`) — plus this process's open-file limit.
//!
//! Owns reading `/proc` and spawning/killing the children it is handed. It
//! must never signal a process it did not start (it only walks the trees of
//! its own children).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Raise the soft (and, as root, the hard) open-file limit to `want`;
/// returns the soft limit in force afterwards. Children inherit it.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let try_both = libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &try_both) != 0 {
            // Not allowed to raise the hard limit: take what it allows.
            let soft = libc::rlimit {
                rlim_cur: want.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
    }
    lim.rlim_cur
}

fn parent_map() -> HashMap<u32, Vec<u32>> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return children;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(st) = read_stat(pid) {
            children.entry(st.ppid).or_default().push(pid);
        }
    }
    children
}

/// `roots` and all their live descendants.
pub fn tree(roots: &[u32]) -> Vec<u32> {
    let children = parent_map();
    let mut out = Vec::new();
    let mut todo: Vec<u32> = roots.to_vec();
    // Bounded: a pid tree on one machine is finite; cap defensively.
    while let Some(p) = todo.pop() {
        if out.len() > 10_000 {
            break;
        }
        if out.contains(&p) {
            continue;
        }
        out.push(p);
        if let Some(c) = children.get(&p) {
            todo.extend(c);
        }
    }
    out
}

struct Stat {
    ppid: u32,
    ticks: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after
    // the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); ppid = field 4, utime = 14, stime = 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(Stat {
        ppid,
        ticks: utime + stime,
    })
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds (user + system) used so far by `pids`.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks: u64 = pids
        .iter()
        .filter_map(|&p| read_stat(p))
        .map(|s| s.ticks)
        .sum();
    ticks as f64 / clk_tck()
}

/// Proportional set size of `pids`, summed, in bytes.
pub fn pss_bytes(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .sum::<u64>()
        * 1024
}

/// A snapshot of one system's server processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// CPU seconds so far.
    pub cpu_s: f64,
    /// PSS, bytes.
    pub pss: u64,
}

/// Sample the trees under `roots`.
pub fn sample(roots: &[u32]) -> Sample {
    let pids = tree(roots);
    Sample {
        cpu_s: cpu_seconds(&pids),
        pss: pss_bytes(&pids),
    }
}

/// A child process started for the run; killed (its whole process group) on
/// drop so nothing outlives the bench.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Child,
}

impl Proc {
    /// Start `cmd` in its own process group, output to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &std::path::Path) -> anyhow::Result<Proc> {
        use std::os::unix::process::CommandExt;
        let out = std::fs::File::create(log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {name}: {e}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it already exited (and how).
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(st)) => Some(st.to_string()),
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        }
    }

    /// Terminate the process group: TERM, then KILL after a short wait.
    pub fn stop(&mut self) {
        let pgid = self.child.id() as i32;
        if self.child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: signals our own child's process group (pgid = its pid,
        // set by process_group(0) at spawn).
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above; KILL whatever of the group is left.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}
