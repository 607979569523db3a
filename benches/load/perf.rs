//! With `BENCH_PERF=1`: `perf` beside a phase — syscall counts of the
//! server (how often it sleeps in SQLite's busy handler, syncs, or waits on
//! a futex) and a system-wide CPU profile with call graphs, kept in the
//! work directory for `perf report -i FILE --sort comm,sym`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const EVENTS: [&str; 6] = [
    "task-clock",
    "syscalls:sys_enter_nanosleep",
    "syscalls:sys_enter_clock_nanosleep",
    "syscalls:sys_enter_fdatasync",
    "syscalls:sys_enter_fsync",
    "syscalls:sys_enter_futex",
];

pub struct Perf {
    stat: Child,
    record: Child,
    stat_out: PathBuf,
    record_out: PathBuf,
    secs: f64,
}

pub fn enabled() -> bool {
    std::env::var_os("BENCH_PERF").is_some()
}

/// Starts both for `secs` (they stop by themselves), if `BENCH_PERF` is set.
pub fn start(pid: u32, dir: &Path, name: &str, secs: Duration) -> Option<Perf> {
    if !enabled() {
        return None;
    }
    let secs = secs.as_secs_f64().max(1.0);
    let stat_out = dir.join(format!("perf-stat-{name}.txt"));
    let record_out = dir.join(format!("perf-{name}.data"));
    let stat = Command::new("perf")
        .args(["stat", "-x", ",", "-o"])
        .arg(&stat_out)
        .args([
            "-e",
            &EVENTS.join(","),
            "-p",
            &pid.to_string(),
            "--",
            "sleep",
        ])
        .arg(format!("{secs:.1}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let record = Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "-g",
            "-a",
            "-o",
        ])
        .arg(&record_out)
        .args(["--", "sleep"])
        .arg(format!("{secs:.1}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(Perf {
        stat,
        record,
        stat_out,
        record_out,
        secs,
    })
}

impl Perf {
    /// Waits for both; "nanosleep 1234/s, fdatasync 567/s, …; profile FILE".
    pub fn finish(mut self) -> String {
        let _ = self.stat.wait();
        let _ = self.record.wait();
        let text = std::fs::read_to_string(&self.stat_out).unwrap_or_default();
        let mut parts = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < 3 {
                continue;
            }
            let Ok(v) = f[0].parse::<f64>() else { continue };
            let name = f[2].trim_start_matches("syscalls:sys_enter_");
            if name == "task-clock" {
                parts.push(format!("server CPU {:.0}%", 100.0 * v / 1e3 / self.secs));
            } else {
                parts.push(format!("{name} {:.0}/s", v / self.secs));
            }
        }
        format!(
            "{}; profile {}",
            parts.join(", "),
            self.record_out.display()
        )
    }
}
