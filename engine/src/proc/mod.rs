//! Pure parsers of `/proc` files. No I/O beyond the `read_*` helpers; every
//! parser takes the file's text (or bytes, for binary files) so it can be
//! unit-tested without root.
//!
//! Conventions:
//! - `parse_*(text)` is pure; `read_*(pid)` / `read_*_tid(pid, tid)` read
//!   the real file and call the parser. Readers replace invalid UTF-8 with
//!   U+FFFD (see [`MapsEntry::path`] for what that means for paths).
//! - Errors are [`ProcError`]; parse errors name the file kind and the
//!   1-based line, e.g. `maps: bad line 3: "…" (bad perms)`.
//! - Pids and tids are `i32` (`pid_t`).

mod error;
mod util;

pub mod auxv;
pub mod cgroup;
pub mod children;
pub mod fdinfo;
pub mod limits;
pub mod maps;
pub mod misc;
pub mod mountinfo;
pub mod ns;
pub mod smaps;
pub mod stat;
pub mod status;
pub mod timers;

pub use error::ProcError;
pub use util::{kernel_dev_split, map_halves};

pub use auxv::{auxv_get, criu_saved_auxv, parse_auxv, read_auxv, AT_NULL, CRIU_AUXV_WORDS};
pub use cgroup::{find_cgroup_v2, parse_cgroup, read_cgroup, CgroupEntry};
pub use children::{parse_children, read_children, read_process_children, read_tids};
pub use fdinfo::{
    parse_fdinfo, parse_locks, read_fd_link, read_fd_numbers, read_fdinfo, read_locks, EpollTarget,
    EventfdInfo, FanotifyInfo, FanotifyMark, FanotifyTarget, FdDir, Fdinfo, FdinfoKind, FileHandle,
    FileLock, InotifyWatch, LockClass, LockMode, LockType, PidfdInfo, TimerfdInfo,
};
pub use limits::{parse_limits, read_limits, Limits, RLIMIT_NAMES, RLIM_INFINITY, RLIM_NLIMITS};
pub use maps::{parse_maps, parse_maps_line, read_maps, MapsEntry, Perms, VmaKind};
pub use misc::{
    parse_cmdline, parse_comm, parse_id_map, parse_loginuid, parse_oom_score_adj,
    parse_personality, parse_pid_max, parse_setgroups, read_cmdline, read_comm, read_comm_tid,
    read_gid_map, read_loginuid, read_oom_score_adj, read_personality, read_pid_max,
    read_setgroups, read_uid_map, IdMapEntry, Setgroups,
};
pub use mountinfo::{
    find_cgroup2_mount, parse_mountinfo, read_mountinfo, MountInfo, MountOptional,
};
pub use ns::{parse_ns_link, read_all_ns, read_ns, NsKind, NsLink, NS_LINKS};
pub use smaps::{parse_smaps, read_smaps, SmapsEntry, VmFlags};
pub use stat::{parse_stat, read_stat, read_stat_tid, Stat, PF_KTHREAD};
pub use status::{parse_status, read_status, read_status_tid, Status};
pub use timers::{parse_timers, read_timers, PosixTimer, TimerNotify};
