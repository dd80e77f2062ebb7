//! Stats as containerd's cgroup v2 `Metrics`, from the files the
//! container's cgroup has (without controllers only cpu.stat is there).

use std::collections::HashMap;
use std::path::Path;

use containerd_shim::protos::cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics, PidsStat};
use containerd_shim::protos::protobuf::MessageField;

fn read(dir: &Path, f: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(f)).ok()
}

/// A single number; "max" (no limit) reads as u64::MAX, as runc reports it.
fn num(dir: &Path, f: &str) -> Option<u64> {
    let s = read(dir, f)?;
    match s.trim() {
        "max" => Some(u64::MAX),
        v => v.parse().ok(),
    }
}

/// A flat keyed file (cpu.stat, memory.stat).
fn keyed(dir: &Path, f: &str) -> Option<HashMap<String, u64>> {
    let s = read(dir, f)?;
    Some(
        s.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(' ')?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect(),
    )
}

pub fn metrics(dir: &Path) -> Metrics {
    let mut m = Metrics::new();
    if let Some(cur) = num(dir, "pids.current") {
        m.pids = MessageField::some(PidsStat {
            current: cur,
            limit: num(dir, "pids.max").unwrap_or(0),
            ..Default::default()
        });
    }
    if let Some(c) = keyed(dir, "cpu.stat") {
        let g = |k: &str| c.get(k).copied().unwrap_or(0);
        m.cpu = MessageField::some(CPUStat {
            usage_usec: g("usage_usec"),
            user_usec: g("user_usec"),
            system_usec: g("system_usec"),
            nr_periods: g("nr_periods"),
            nr_throttled: g("nr_throttled"),
            throttled_usec: g("throttled_usec"),
            ..Default::default()
        });
    }
    if let Some(usage) = num(dir, "memory.current") {
        let s = keyed(dir, "memory.stat").unwrap_or_default();
        let g = |k: &str| s.get(k).copied().unwrap_or(0);
        m.memory = MessageField::some(MemoryStat {
            usage,
            usage_limit: num(dir, "memory.max").unwrap_or(0),
            swap_usage: num(dir, "memory.swap.current").unwrap_or(0),
            swap_limit: num(dir, "memory.swap.max").unwrap_or(0),
            anon: g("anon"),
            file: g("file"),
            kernel_stack: g("kernel_stack"),
            slab: g("slab"),
            sock: g("sock"),
            shmem: g("shmem"),
            file_mapped: g("file_mapped"),
            file_dirty: g("file_dirty"),
            file_writeback: g("file_writeback"),
            pgfault: g("pgfault"),
            pgmajfault: g("pgmajfault"),
            ..Default::default()
        });
    }
    m
}
