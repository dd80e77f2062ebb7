//! stats-dump / stats-restore (CRIU's stats.proto) and their human form.

use std::fmt;
use std::time::Duration;

use stasis_proto::criu::{DumpStatsEntry, RestoreStatsEntry, StatsEntry};
use stasis_proto::image::{magic, Header};

use crate::error::Result;
use crate::images::ImageDir;

pub const STATS_DUMP: &str = "stats-dump";
pub const STATS_RESTORE: &str = "stats-restore";

#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    pub freezing_time: Duration,
    pub frozen_time: Duration,
    pub memdump_time: Duration,
    pub memwrite_time: Duration,
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub shpages_scanned: u64,
    pub shpages_written: u64,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreStats {
    pub forking_time: Duration,
    pub restore_time: Duration,
    pub pages_restored: u64,
}

fn us(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

pub fn write_dump(dir: &ImageDir, s: &DumpStats) -> Result<()> {
    let e = StatsEntry {
        dump: Some(DumpStatsEntry {
            freezing_time: us(s.freezing_time),
            frozen_time: us(s.frozen_time),
            memdump_time: us(s.memdump_time),
            memwrite_time: us(s.memwrite_time),
            pages_scanned: s.pages_scanned,
            pages_skipped_parent: 0,
            pages_written: s.pages_written,
            irmap_resolve: None,
            pages_lazy: 0,
            page_pipes: None,
            page_pipe_bufs: None,
            shpages_scanned: Some(s.shpages_scanned),
            shpages_skipped_parent: Some(0),
            shpages_written: Some(s.shpages_written),
        }),
        restore: None,
    };
    dir.write_one(STATS_DUMP, Header::Service(magic::STATS), &e)
}

pub fn write_restore(dir: &ImageDir, s: &RestoreStats) -> Result<()> {
    let e = StatsEntry {
        dump: None,
        restore: Some(RestoreStatsEntry {
            pages_compared: 0,
            pages_skipped_cow: 0,
            forking_time: us(s.forking_time),
            restore_time: us(s.restore_time),
            pages_restored: Some(s.pages_restored),
        }),
    };
    dir.write_one(STATS_RESTORE, Header::Service(magic::STATS), &e)
}

impl fmt::Display for DumpStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Displaying dump stats:")?;
        writeln!(f, "Freezing time: {} us", us(self.freezing_time))?;
        writeln!(f, "Frozen time: {} us", us(self.frozen_time))?;
        writeln!(f, "Memory dump time: {} us", us(self.memdump_time))?;
        writeln!(f, "Memory write time: {} us", us(self.memwrite_time))?;
        writeln!(f, "Memory pages scanned: {0} ({0:#x})", self.pages_scanned)?;
        writeln!(f, "Memory pages skipped from parent: 0 (0x0)")?;
        writeln!(f, "Memory pages written: {0} ({0:#x})", self.pages_written)?;
        writeln!(f, "Lazy memory pages: 0 (0x0)")?;
        writeln!(
            f,
            "Shared memory pages scanned: {0} ({0:#x})",
            self.shpages_scanned
        )?;
        write!(
            f,
            "Shared memory pages written: {0} ({0:#x})",
            self.shpages_written
        )
    }
}

impl fmt::Display for RestoreStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Displaying restore stats:")?;
        writeln!(f, "Pages compared: 0 (0x0)")?;
        writeln!(f, "Pages skipped COW: 0 (0x0)")?;
        writeln!(f, "Pages restored: {0} ({0:#x})", self.pages_restored)?;
        writeln!(f, "Restore time: {} us", us(self.restore_time))?;
        write!(f, "Forking time: {} us", us(self.forking_time))
    }
}
