//! Percentiles over a run, and CPU time from /proc.

use std::fs;

/// Median, p99 and max of one set of samples, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentiles; `None` for no samples.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| {
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[i - 1]
    };
    Some(Summary {
        n: v.len(),
        median: rank(0.50),
        p99: rank(0.99),
        max: v[v.len() - 1],
    })
}

/// Clock ticks used by the whole machine, by the server, by this process,
/// by PostgreSQL's processes and by kernel threads (fsync's journal
/// commits show there); the rest is some other load on the machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    total: u64,
    idle: u64,
    server: u64,
    harness: u64,
    postgres: u64,
    kernel: u64,
}

/// `(comm, ppid, utime + stime)` of one process.
fn proc_stat(pid: &str) -> Option<(String, u64, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses.
    let open = stat.find('(')?;
    let (comm, rest) = stat[open + 1..].rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    // After the name: state, ppid, …, utime and stime are the 12th and 13th.
    Some((comm.to_string(), get(1), get(11) + get(12)))
}

impl Cpu {
    pub fn sample(server_pid: u32) -> Cpu {
        let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
        let line = stat.lines().next().unwrap_or_default();
        let nums: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|s| s.parse().ok())
            .collect();
        let mut cpu = Cpu {
            total: nums.iter().take(8).sum(),
            idle: nums.get(3).copied().unwrap_or(0) + nums.get(4).copied().unwrap_or(0),
            ..Cpu::default()
        };
        let me = std::process::id();
        let Ok(dir) = fs::read_dir("/proc") else {
            return cpu;
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Some((comm, ppid, ticks)) = proc_stat(&pid.to_string()) else {
                continue;
            };
            if pid == server_pid {
                cpu.server += ticks;
            } else if pid == me {
                cpu.harness += ticks;
            } else if comm == "postgres" {
                cpu.postgres += ticks;
            } else if ppid == 2 || pid == 2 {
                cpu.kernel += ticks;
            }
        }
        cpu
    }

    fn cores() -> f64 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64
    }

    /// Share of one core (100%) taken by processes that are none of ours,
    /// PostgreSQL's or the kernel's: a build or test run beside the bench.
    pub fn foreign(&self, before: &Cpu) -> f64 {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let busy = self
            .total
            .saturating_sub(before.total)
            .saturating_sub(self.idle.saturating_sub(before.idle));
        let ours = self.server.saturating_sub(before.server)
            + self.harness.saturating_sub(before.harness)
            + self.postgres.saturating_sub(before.postgres)
            + self.kernel.saturating_sub(before.kernel);
        100.0 * Cpu::cores() * busy.saturating_sub(ours) as f64 / total
    }

    /// "server 140%, harness 30%, postgres 25%, kernel 5%, foreign 0%,
    /// idle 0%": shares between two samples, 100% = one core.
    pub fn since(&self, before: &Cpu) -> String {
        let total = self.total.saturating_sub(before.total).max(1) as f64;
        let pct = |a: u64, b: u64| 100.0 * Cpu::cores() * a.saturating_sub(b) as f64 / total;
        format!(
            "server {:.0}%, harness {:.0}%, postgres {:.0}%, kernel {:.0}%, foreign {:.0}%, idle {:.0}%",
            pct(self.server, before.server),
            pct(self.harness, before.harness),
            pct(self.postgres, before.postgres),
            pct(self.kernel, before.kernel),
            self.foreign(before),
            pct(self.idle, before.idle),
        )
    }
}

/// Waits (up to `max`) until no other load takes more than a quarter of a
/// core, so a build beside the bench does not end up in its numbers.
pub async fn wait_quiet(server_pid: u32, max: std::time::Duration) -> f64 {
    let deadline = std::time::Instant::now() + max;
    loop {
        let a = Cpu::sample(server_pid);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let foreign = Cpu::sample(server_pid).foreign(&a);
        if foreign < 25.0 || std::time::Instant::now() >= deadline {
            return foreign;
        }
        eprintln!("  (waiting: other processes use {foreign:.0}% of a core)");
    }
}

/// A `/proc/PID/status` field in kB (`VmRSS`, `VmHWM`).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
