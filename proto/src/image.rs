//! CRIU image container format (images v1.1), over `std::io` only.
//!
//! Layout of an image file:
//!
//! * a header: [`IMG_COMMON_MAGIC`] (or [`IMG_SERVICE_MAGIC`] for service
//!   files) then the per-type magic, both `u32` little-endian. `inventory.img`
//!   has only [`magic::INVENTORY`]; raw files (`pages-*.img`, `ifaddr-*`, …)
//!   have no header at all. See [`Header`] and [`image_kind`].
//! * entries, until EOF: a `u32` little-endian length, then that many bytes of
//!   protobuf.
//! * some entries are followed by raw payload bytes (pipes-data, sk-queues,
//!   tcp-stream, ipcns-shm, …); the entry says how many.

use std::fmt;
use std::io::{self, Read, Write};
use std::marker::PhantomData;

use prost::Message;

/// Every per-type magic of CRIU's `criu/include/magic.h`, plus the two head
/// magics. Names follow CRIU (`CORE_MAGIC` is [`magic::CORE`]); a few aliases
/// spell the file names instead (`MEMFD`, `MOUNTPOINTS`, …).
pub mod magic {
    /// First word of every v1.1 image except inventory, service and raw files.
    pub const IMG_COMMON_MAGIC: u32 = 0x54564319;
    /// First word of service files (`stats-dump`, `stats-restore`, `irmap-cache`).
    pub const IMG_SERVICE_MAGIC: u32 = 0x55105940;
    /// CRIU's marker for files without any header.
    pub const RAW_IMAGE_MAGIC: u32 = 0;

    pub const INVENTORY: u32 = 0x58313116;
    pub const PSTREE: u32 = 0x50273030;
    pub const FDINFO: u32 = 0x56213732;
    pub const PAGEMAP: u32 = 0x56084025;
    pub const SHMEM_PAGEMAP: u32 = PAGEMAP;
    pub const CORE: u32 = 0x55053847;
    pub const IDS: u32 = 0x54432030;
    pub const VMAS: u32 = 0x54123737;
    pub const PIPES: u32 = 0x56513555;
    pub const PIPES_DATA: u32 = 0x56453709;
    pub const FIFO: u32 = 0x58364939;
    pub const FIFO_DATA: u32 = 0x59333054;
    pub const SIGACT: u32 = 0x55344201;
    pub const UNIXSK: u32 = 0x54373943;
    pub const INETSK: u32 = 0x56443851;
    pub const PACKETSK: u32 = 0x60454618;
    pub const ITIMERS: u32 = 0x57464056;
    pub const POSIX_TIMERS: u32 = 0x52603957;
    pub const SK_QUEUES: u32 = 0x56264026;
    pub const UTSNS: u32 = 0x54473203;
    pub const CREDS: u32 = 0x54023547;
    pub const IPC_VAR: u32 = 0x53115007;
    pub const IPCNS_SHM: u32 = 0x46283044;
    pub const IPCNS_MSG: u32 = 0x55453737;
    pub const IPCNS_SEM: u32 = 0x59573019;
    pub const REG_FILES: u32 = 0x50363636;
    pub const EXT_FILES: u32 = 0x59255641;
    pub const FS: u32 = 0x51403912;
    pub const MM: u32 = 0x57492820;
    pub const REMAP_FPATH: u32 = 0x59133954;
    pub const GHOST_FILE: u32 = 0x52583605;
    pub const TCP_STREAM: u32 = 0x51465506;
    pub const EVENTFD_FILE: u32 = 0x44523722;
    pub const EVENTPOLL_FILE: u32 = 0x45023858;
    pub const EVENTPOLL_TFD: u32 = 0x44433746;
    pub const SIGNALFD: u32 = 0x57323820;
    pub const INOTIFY_FILE: u32 = 0x48424431;
    pub const INOTIFY_WD: u32 = 0x54562009;
    pub const MNTS: u32 = 0x55563928;
    pub const NETDEV: u32 = 0x57373951;
    pub const NETNS: u32 = 0x55933752;
    pub const TTY_FILES: u32 = 0x59433025;
    pub const TTY_INFO: u32 = 0x59453036;
    pub const TTY_DATA: u32 = 0x59413026;
    pub const FILE_LOCKS: u32 = 0x54323616;
    pub const RLIMIT: u32 = 0x57113925;
    pub const FANOTIFY_FILE: u32 = 0x55096122;
    pub const FANOTIFY_MARK: u32 = 0x56506035;
    /// `signal-s-<pid>.img` (shared pending signals).
    pub const SIGNAL: u32 = 0x59255647;
    /// `signal-p-<tid>.img` (per-thread pending signals); same value.
    pub const PSIGNAL: u32 = SIGNAL;
    pub const NETLINK_SK: u32 = 0x58005614;
    pub const NS_FILES: u32 = 0x61394011;
    pub const TUNFILE: u32 = 0x57143751;
    pub const CGROUP: u32 = 0x59383330;
    pub const TIMERFD: u32 = 0x50493712;
    pub const CPUINFO: u32 = 0x61404013;
    pub const USERNS: u32 = 0x55474906;
    pub const SECCOMP: u32 = 0x64413049;
    pub const BINFMT_MISC: u32 = 0x67343323;
    /// `autofs-<dev>.img`: a normal common-magic image in CRIU's source.
    pub const AUTOFS: u32 = 0x49353943;
    pub const FILES: u32 = 0x56303138;
    /// `memfd.img` (memfd inodes).
    pub const MEMFD_INODE: u32 = 0x48453499;
    pub const TIMENS: u32 = 0x43114433;
    pub const PIDNS: u32 = 0x61157326;
    pub const BPFMAP_FILE: u32 = 0x57506142;
    pub const BPFMAP_DATA: u32 = 0x64324033;
    pub const APPARMOR: u32 = 0x59423047;
    pub const PIDFD: u32 = 0x54435556;
    /// `stats-dump` / `stats-restore` (service header).
    pub const STATS: u32 = 0x57093306;
    /// `irmap-cache` (service header).
    pub const IRMAP_CACHE: u32 = 0x57004059;

    // Aliases spelled after the file names.
    pub const MEMFD: u32 = MEMFD_INODE;
    pub const MOUNTPOINTS: u32 = MNTS;
    pub const SIGACTS: u32 = SIGACT;
    pub const EVENTFD: u32 = EVENTFD_FILE;
    pub const EVENTPOLL: u32 = EVENTPOLL_FILE;
    pub const INOTIFY: u32 = INOTIFY_FILE;
    pub const FANOTIFY: u32 = FANOTIFY_FILE;
    pub const NETLINKSK: u32 = NETLINK_SK;
    pub const TTY: u32 = TTY_FILES;
    pub const FILELOCKS: u32 = FILE_LOCKS;
    pub const IPCNS_VAR: u32 = IPC_VAR;
}

pub use magic::{IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC};

/// `inventory_entry.img_version` for images v1.1 (CRIU's `CRTOOLS_IMAGES_V1_1`).
pub const IMAGES_V1_1: u32 = 2;

/// Up-front buffer reservation for entries and payloads; beyond it buffers
/// grow as bytes actually arrive.
const PREALLOC: usize = 64 << 10;

/// Default [`ImageReader::set_max_entry`] limit: 16 MiB.
pub const DEFAULT_MAX_ENTRY: usize = 16 << 20;

/// How an image file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Header {
    /// [`IMG_COMMON_MAGIC`], then this type magic.
    Common(u32),
    /// [`IMG_SERVICE_MAGIC`], then this type magic.
    Service(u32),
    /// Only [`magic::INVENTORY`].
    Inventory,
    /// No header.
    Raw,
}

impl Header {
    /// Header size in bytes (8, 8, 4 or 0).
    pub const fn len(self) -> usize {
        match self {
            Header::Common(_) | Header::Service(_) => 8,
            Header::Inventory => 4,
            Header::Raw => 0,
        }
    }

    /// True for [`Header::Raw`].
    pub const fn is_empty(self) -> bool {
        matches!(self, Header::Raw)
    }

    /// The per-type magic (`None` for raw files).
    pub const fn type_magic(self) -> Option<u32> {
        match self {
            Header::Common(m) | Header::Service(m) => Some(m),
            Header::Inventory => Some(magic::INVENTORY),
            Header::Raw => None,
        }
    }

    /// The header bytes, in `buf[..self.len()]`.
    pub fn encode(self) -> ([u8; 8], usize) {
        let mut buf = [0u8; 8];
        match self {
            Header::Common(m) | Header::Service(m) => {
                let head = if matches!(self, Header::Common(_)) {
                    IMG_COMMON_MAGIC
                } else {
                    IMG_SERVICE_MAGIC
                };
                buf[..4].copy_from_slice(&head.to_le_bytes());
                buf[4..].copy_from_slice(&m.to_le_bytes());
            }
            Header::Inventory => buf[..4].copy_from_slice(&magic::INVENTORY.to_le_bytes()),
            Header::Raw => {}
        }
        (buf, self.len())
    }

    /// Guess the header from the first bytes of a file, as crit does. Returns
    /// `None` when they start with no known head magic (raw file, or garbage).
    pub fn sniff(bytes: &[u8]) -> Option<Header> {
        let word = |i: usize| -> Option<u32> {
            let b = bytes.get(i..i + 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        };
        match word(0)? {
            IMG_COMMON_MAGIC => word(4).map(Header::Common),
            IMG_SERVICE_MAGIC => word(4).map(Header::Service),
            magic::INVENTORY => Some(Header::Inventory),
            _ => None,
        }
    }
}

impl fmt::Display for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Header::Common(m) => write!(f, "common {m:#010x}"),
            Header::Service(m) => write!(f, "service {m:#010x}"),
            Header::Inventory => write!(f, "inventory"),
            Header::Raw => write!(f, "raw"),
        }
    }
}

/// One kind of image file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageDesc {
    /// CRIU's file name pattern without `.img`: `%u` decimal, `%x` hex, `%s`
    /// any non-empty text. E.g. `core-%u`, `tcp-stream-%x`, `stats-%s`.
    pub pattern: &'static str,
    pub header: Header,
    /// CRIU name of the entry message (`core_entry`); empty for raw files.
    /// `pagemap-*` starts with one `pagemap_head`; `ghost-file-*` may continue
    /// with `ghost_chunk_entry`s; `ipcns-msg-*` interleaves `ipc_msg`s.
    pub entry: &'static str,
    /// Raw bytes follow (some) entries.
    pub payload: bool,
}

const fn d(pattern: &'static str, header: Header, entry: &'static str) -> ImageDesc {
    ImageDesc {
        pattern,
        header,
        entry,
        payload: false,
    }
}

const fn dp(pattern: &'static str, header: Header, entry: &'static str) -> ImageDesc {
    ImageDesc {
        pattern,
        header,
        entry,
        payload: true,
    }
}

const fn raw(pattern: &'static str) -> ImageDesc {
    ImageDesc {
        pattern,
        header: Header::Raw,
        entry: "",
        payload: true,
    }
}

use Header::{Common as C, Service as S};

/// Every image file CRIU writes (criu/image-desc.c), with its header.
pub static IMAGE_DESCS: &[ImageDesc] = &[
    d("inventory", Header::Inventory, "inventory_entry"),
    d("pstree", C(magic::PSTREE), "pstree_entry"),
    d("core-%u", C(magic::CORE), "core_entry"),
    d("ids-%u", C(magic::IDS), "task_kobj_ids_entry"),
    d("mm-%u", C(magic::MM), "mm_entry"),
    d("vmas-%u", C(magic::VMAS), "vma_entry"),
    d("pagemap-%u", C(magic::PAGEMAP), "pagemap_entry"),
    d("pagemap-shmem-%u", C(magic::SHMEM_PAGEMAP), "pagemap_entry"),
    raw("pages-%u"),
    d("fdinfo-%u", C(magic::FDINFO), "fdinfo_entry"),
    d("files", C(magic::FILES), "file_entry"),
    d("reg-files", C(magic::REG_FILES), "reg_file_entry"),
    d("ext-files", C(magic::EXT_FILES), "ext_file_entry"),
    d("ns-files", C(magic::NS_FILES), "ns_file_entry"),
    d("fs-%u", C(magic::FS), "fs_entry"),
    d("pipes", C(magic::PIPES), "pipe_entry"),
    dp("pipes-data", C(magic::PIPES_DATA), "pipe_data_entry"),
    d("fifo", C(magic::FIFO), "fifo_entry"),
    dp("fifo-data", C(magic::FIFO_DATA), "pipe_data_entry"),
    d("unixsk", C(magic::UNIXSK), "unix_sk_entry"),
    d("inetsk", C(magic::INETSK), "inet_sk_entry"),
    d("packetsk", C(magic::PACKETSK), "packet_sock_entry"),
    d("netlinksk", C(magic::NETLINK_SK), "netlink_sk_entry"),
    dp("sk-queues", C(magic::SK_QUEUES), "sk_packet_entry"),
    dp("tcp-stream-%x", C(magic::TCP_STREAM), "tcp_stream_entry"),
    d("eventfd", C(magic::EVENTFD_FILE), "eventfd_file_entry"),
    d(
        "eventpoll",
        C(magic::EVENTPOLL_FILE),
        "eventpoll_file_entry",
    ),
    d(
        "eventpoll-tfd",
        C(magic::EVENTPOLL_TFD),
        "eventpoll_tfd_entry",
    ),
    d("signalfd", C(magic::SIGNALFD), "signalfd_entry"),
    d("inotify", C(magic::INOTIFY_FILE), "inotify_file_entry"),
    d("inotify-wd", C(magic::INOTIFY_WD), "inotify_wd_entry"),
    d("fanotify", C(magic::FANOTIFY_FILE), "fanotify_file_entry"),
    d(
        "fanotify-mark",
        C(magic::FANOTIFY_MARK),
        "fanotify_mark_entry",
    ),
    d("timerfd", C(magic::TIMERFD), "timerfd_entry"),
    d("memfd", C(magic::MEMFD_INODE), "memfd_inode_entry"),
    d("pidfd", C(magic::PIDFD), "pidfd_entry"),
    d("bpfmap-file", C(magic::BPFMAP_FILE), "bpfmap_file_entry"),
    dp("bpfmap-data", C(magic::BPFMAP_DATA), "bpfmap_data_entry"),
    d("tunfile", C(magic::TUNFILE), "tunfile_entry"),
    d("sigacts-%u", C(magic::SIGACT), "sa_entry"),
    d("signal-s-%u", C(magic::SIGNAL), "siginfo_entry"),
    d("signal-p-%u", C(magic::PSIGNAL), "siginfo_entry"),
    d("itimers-%u", C(magic::ITIMERS), "itimer_entry"),
    d(
        "posix-timers-%u",
        C(magic::POSIX_TIMERS),
        "posix_timer_entry",
    ),
    d("creds-%u", C(magic::CREDS), "creds_entry"),
    d("rlimit-%u", C(magic::RLIMIT), "rlimit_entry"),
    d("utsns-%u", C(magic::UTSNS), "utsns_entry"),
    d("ipcns-var-%u", C(magic::IPC_VAR), "ipc_var_entry"),
    dp("ipcns-shm-%u", C(magic::IPCNS_SHM), "ipc_shm_entry"),
    dp("ipcns-msg-%u", C(magic::IPCNS_MSG), "ipc_msg_entry"),
    dp("ipcns-sem-%u", C(magic::IPCNS_SEM), "ipc_sem_entry"),
    d("mountpoints-%u", C(magic::MNTS), "mnt_entry"),
    d("netdev-%u", C(magic::NETDEV), "net_device_entry"),
    d("netns-%u", C(magic::NETNS), "netns_entry"),
    raw("ifaddr-%u"),
    raw("route-%u"),
    raw("route6-%u"),
    raw("rule-%u"),
    raw("iptables-%u"),
    raw("ip6tables-%u"),
    raw("nftables-%u"),
    raw("netns-ct-%u"),
    raw("netns-exp-%u"),
    raw("tmpfs-%u.tar.gz"),
    raw("tmpfs-dev-%u.tar.gz"),
    d("autofs-%u", C(magic::AUTOFS), "autofs_entry"),
    d("userns-%u", C(magic::USERNS), "userns_entry"),
    d("timens-%u", C(magic::TIMENS), "timens_entry"),
    d("pidns-%u", C(magic::PIDNS), "pidns_entry"),
    d("tty", C(magic::TTY_FILES), "tty_file_entry"),
    d("tty-info", C(magic::TTY_INFO), "tty_info_entry"),
    d("tty-data", C(magic::TTY_DATA), "tty_data_entry"),
    d("filelocks", C(magic::FILE_LOCKS), "file_lock_entry"),
    d(
        "remap-fpath",
        C(magic::REMAP_FPATH),
        "remap_file_path_entry",
    ),
    dp("ghost-file-%x", C(magic::GHOST_FILE), "ghost_file_entry"),
    d("cgroup", C(magic::CGROUP), "cgroup_entry"),
    d("cpuinfo", C(magic::CPUINFO), "cpuinfo_entry"),
    d("seccomp", C(magic::SECCOMP), "seccomp_entry"),
    d("binfmt-misc", C(magic::BINFMT_MISC), "binfmt_misc_entry"),
    d("binfmt-misc-%u", C(magic::BINFMT_MISC), "binfmt_misc_entry"),
    d("apparmor", C(magic::APPARMOR), "apparmor_entry"),
    d("stats-%s", S(magic::STATS), "stats_entry"),
    d("irmap-cache", S(magic::IRMAP_CACHE), "irmap_cache_entry"),
];

/// Looks up a file name (a path is fine; `.img` optional) in [`IMAGE_DESCS`].
pub fn image_desc(name: &str) -> Option<&'static ImageDesc> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let stem = base.strip_suffix(".img").unwrap_or(base);
    IMAGE_DESCS
        .iter()
        .find(|desc| pattern_matches(desc.pattern, stem))
}

/// The header of a file name and the CRIU name of its entry message (empty
/// for raw files): `image_kind("core-7.img") == Some((Header::Common(magic::CORE), "core_entry"))`.
pub fn image_kind(name: &str) -> Option<(Header, &'static str)> {
    image_desc(name).map(|desc| (desc.header, desc.entry))
}

fn pattern_matches(pattern: &str, name: &str) -> bool {
    let Some(pos) = pattern.find('%') else {
        return pattern == name;
    };
    let (prefix, rest) = pattern.split_at(pos);
    let conv = rest.as_bytes().get(1).copied();
    let suffix = &rest[2..];
    let Some(mid) = name
        .strip_prefix(prefix)
        .and_then(|n| n.strip_suffix(suffix))
    else {
        return false;
    };
    !mid.is_empty()
        && match conv {
            Some(b'u') => mid.bytes().all(|b| b.is_ascii_digit()),
            Some(b'x') => mid.bytes().all(|b| b.is_ascii_hexdigit()),
            _ => true,
        }
}

/// Errors of [`ImageReader`] (and the in-memory helpers). Messages start with
/// the image file name; offsets are byte offsets from the start of the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    #[error("{name}: i/o error at offset {offset}: {source}")]
    Io {
        name: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// A head or type magic differs (this also covers a file of another
    /// header kind, e.g. a service file opened as a common one).
    #[error("{name}: bad magic {found:#010x} (expected {expected:#010x})")]
    BadMagic {
        name: String,
        offset: u64,
        found: u32,
        expected: u32,
    },
    /// EOF inside the header (`what` = "header"), an entry's length or body
    /// ("entry"; `offset` is where the entry starts) or a payload ("payload").
    #[error("{name}: truncated {what} at offset {offset} (need {need} bytes, have {have})")]
    Truncated {
        name: String,
        what: &'static str,
        offset: u64,
        need: u64,
        have: u64,
    },
    /// An entry length above the reader's limit (checked before allocating).
    #[error("{name}: entry of {len} bytes at offset {offset} exceeds limit {limit}")]
    Oversized {
        name: String,
        offset: u64,
        len: u64,
        limit: u64,
    },
    #[error("{name}: protobuf decode failed at offset {offset}: {source}")]
    Decode {
        name: String,
        offset: u64,
        #[source]
        source: prost::DecodeError,
    },
    /// [`decode_one`] found no entry at all.
    #[error("{name}: no entry")]
    Empty { name: String },
}

impl ImageError {
    /// The image file name the error is about.
    pub fn name(&self) -> &str {
        match self {
            ImageError::Io { name, .. }
            | ImageError::BadMagic { name, .. }
            | ImageError::Truncated { name, .. }
            | ImageError::Oversized { name, .. }
            | ImageError::Decode { name, .. }
            | ImageError::Empty { name } => name,
        }
    }

    /// Byte offset the error refers to, if any.
    pub fn offset(&self) -> Option<u64> {
        match self {
            ImageError::Io { offset, .. }
            | ImageError::BadMagic { offset, .. }
            | ImageError::Truncated { offset, .. }
            | ImageError::Oversized { offset, .. }
            | ImageError::Decode { offset, .. } => Some(*offset),
            ImageError::Empty { .. } => None,
        }
    }
}

/// Writes an image: the header on creation, then entries and payloads.
///
/// Each entry goes out in a single `write_all` (length and body together,
/// from a reused buffer). Wrap `W` in a `BufWriter` for many small entries.
/// Errors are plain `io::Error`s: the caller knows the file name.
pub struct ImageWriter<W: Write> {
    inner: W,
    offset: u64,
    buf: Vec<u8>,
}

impl<W: Write> ImageWriter<W> {
    /// Writes `header` to `w`.
    pub fn new(w: W, header: Header) -> io::Result<Self> {
        let mut this = ImageWriter {
            inner: w,
            offset: 0,
            buf: Vec::new(),
        };
        let (bytes, len) = header.encode();
        this.write_bytes(&bytes[..len])?;
        Ok(this)
    }

    /// Writes one length-prefixed entry.
    pub fn write_entry<M: Message>(&mut self, msg: &M) -> io::Result<()> {
        let len = msg.encoded_len();
        let len32 = entry_len(len)?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.reserve(4 + len);
        buf.extend_from_slice(&len32.to_le_bytes());
        let res = match msg.encode(&mut buf) {
            Ok(()) => self.write_bytes(&buf),
            Err(e) => Err(io::Error::other(e)),
        };
        self.buf = buf;
        res
    }

    /// Writes one length-prefixed entry whose protobuf bytes are already encoded.
    pub fn write_raw_entry(&mut self, body: &[u8]) -> io::Result<()> {
        let len32 = entry_len(body.len())?;
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&len32.to_le_bytes());
        buf.extend_from_slice(body);
        let res = self.write_bytes(&buf);
        self.buf = buf;
        res
    }

    /// Writes raw bytes (the payload following an entry, or a raw file's data).
    pub fn write_payload(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_bytes(data)
    }

    /// Bytes written so far, header included.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// Direct access; bytes written through it are not counted in [`Self::offset`].
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Flushes and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.flush()?;
        Ok(self.inner)
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }
}

fn entry_len(len: usize) -> io::Result<u32> {
    u32::try_from(len).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("image entry of {len} bytes does not fit the u32 length prefix"),
        )
    })
}

impl<W: Write> fmt::Debug for ImageWriter<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageWriter")
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// Reads an image: validates the header on open, then yields entries and
/// payloads. Never panics on malformed input; buffers grow with the bytes
/// actually present, and entry lengths above the limit are refused outright.
pub struct ImageReader<R: Read> {
    inner: R,
    name: String,
    header: Header,
    offset: u64,
    max_entry: usize,
    buf: Vec<u8>,
}

impl<R: Read> ImageReader<R> {
    /// Reads and checks the header of `r`. `name` (the file name) prefixes
    /// every error message.
    pub fn open(r: R, expected: Header, name: impl Into<String>) -> Result<Self, ImageError> {
        let mut this = ImageReader {
            inner: r,
            name: name.into(),
            header: expected,
            offset: 0,
            max_entry: DEFAULT_MAX_ENTRY,
            buf: Vec::new(),
        };
        match expected {
            Header::Common(m) => {
                this.expect_magic(IMG_COMMON_MAGIC)?;
                this.expect_magic(m)?;
            }
            Header::Service(m) => {
                this.expect_magic(IMG_SERVICE_MAGIC)?;
                this.expect_magic(m)?;
            }
            Header::Inventory => this.expect_magic(magic::INVENTORY)?,
            Header::Raw => {}
        }
        Ok(this)
    }

    /// Largest entry accepted by [`Self::read_entry`] (default [`DEFAULT_MAX_ENTRY`]).
    pub fn set_max_entry(&mut self, max: usize) {
        self.max_entry = max;
    }

    pub fn max_entry(&self) -> usize {
        self.max_entry
    }

    /// Byte offset of the next read, header included.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn header(&self) -> Header {
        self.header
    }

    /// Reads the next entry; `Ok(None)` at a clean EOF (between entries).
    pub fn read_entry<M: Message + Default>(&mut self) -> Result<Option<M>, ImageError> {
        let Some(start) = self.next_body()? else {
            return Ok(None);
        };
        match M::decode(self.buf.as_slice()) {
            Ok(m) => Ok(Some(m)),
            Err(source) => Err(ImageError::Decode {
                name: self.name.clone(),
                offset: start,
                source,
            }),
        }
    }

    /// Reads the next entry's protobuf bytes without decoding them.
    pub fn read_raw_entry(&mut self) -> Result<Option<&[u8]>, ImageError> {
        Ok(self.next_body()?.map(|_| self.buf.as_slice()))
    }

    /// Reads `len` payload bytes. Memory grows with the bytes actually read,
    /// so a bogus length in a corrupt image cannot force a huge allocation.
    pub fn read_payload(&mut self, len: usize) -> Result<Vec<u8>, ImageError> {
        let start = self.offset;
        let mut out = Vec::with_capacity(len.min(PREALLOC));
        let res = (&mut self.inner).take(len as u64).read_to_end(&mut out);
        self.offset += out.len() as u64;
        if let Err(e) = res {
            return Err(self.io_err(e));
        }
        if out.len() < len {
            return Err(self.truncated("payload", start, len as u64, out.len() as u64));
        }
        Ok(out)
    }

    /// Fills `buf` with payload bytes.
    pub fn read_payload_into(&mut self, buf: &mut [u8]) -> Result<(), ImageError> {
        let start = self.offset;
        let have = self.fill(buf)?;
        if have < buf.len() {
            return Err(self.truncated("payload", start, buf.len() as u64, have as u64));
        }
        Ok(())
    }

    /// Skips `len` payload bytes.
    pub fn skip_payload(&mut self, len: u64) -> Result<(), ImageError> {
        let start = self.offset;
        let res = io::copy(&mut (&mut self.inner).take(len), &mut io::sink());
        match res {
            Ok(n) => {
                self.offset += n;
                if n < len {
                    return Err(self.truncated("payload", start, len, n));
                }
                Ok(())
            }
            Err(e) => Err(self.io_err(e)),
        }
    }

    /// Iterates over the remaining entries as `M`; stops after the first error.
    pub fn entries<M: Message + Default>(&mut self) -> Entries<'_, R, M> {
        Entries {
            reader: self,
            done: false,
            _msg: PhantomData,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Direct access; bytes read through it are not counted in [`Self::offset`].
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads one length-prefixed body into `self.buf`; returns the entry's
    /// starting offset, or `None` at clean EOF.
    fn next_body(&mut self) -> Result<Option<u64>, ImageError> {
        let start = self.offset;
        let mut len_bytes = [0u8; 4];
        let have = self.fill(&mut len_bytes)?;
        if have == 0 {
            return Ok(None);
        }
        if have < 4 {
            return Err(self.truncated("entry", start, 4, have as u64));
        }
        let len = u32::from_le_bytes(len_bytes);
        if len as usize > self.max_entry {
            return Err(ImageError::Oversized {
                name: self.name.clone(),
                offset: start,
                len: u64::from(len),
                limit: self.max_entry as u64,
            });
        }
        // Grow with the bytes actually present: a corrupt length below the
        // limit must not cost a large allocation up front.
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.reserve((len as usize).min(PREALLOC));
        let res = (&mut self.inner).take(u64::from(len)).read_to_end(&mut buf);
        self.offset += buf.len() as u64;
        let have = buf.len();
        self.buf = buf;
        if let Err(e) = res {
            return Err(self.io_err(e));
        }
        if have < len as usize {
            return Err(self.truncated("entry", start, u64::from(len), have as u64));
        }
        Ok(Some(start))
    }

    fn expect_magic(&mut self, expected: u32) -> Result<(), ImageError> {
        let start = self.offset;
        let mut word = [0u8; 4];
        let have = self.fill(&mut word)?;
        if have < 4 {
            return Err(self.truncated("header", start, 4, have as u64));
        }
        let found = u32::from_le_bytes(word);
        if found != expected {
            return Err(ImageError::BadMagic {
                name: self.name.clone(),
                offset: start,
                found,
                expected,
            });
        }
        Ok(())
    }

    /// Reads until `buf` is full or EOF; returns the count read.
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize, ImageError> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n = (n + k).min(buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.offset += n as u64;
                    return Err(self.io_err(e));
                }
            }
        }
        self.offset += n as u64;
        Ok(n)
    }

    fn truncated(&self, what: &'static str, offset: u64, need: u64, have: u64) -> ImageError {
        ImageError::Truncated {
            name: self.name.clone(),
            what,
            offset,
            need,
            have,
        }
    }

    fn io_err(&self, source: io::Error) -> ImageError {
        ImageError::Io {
            name: self.name.clone(),
            offset: self.offset,
            source,
        }
    }
}

impl<R: Read> fmt::Debug for ImageReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageReader")
            .field("name", &self.name)
            .field("header", &self.header)
            .field("offset", &self.offset)
            .field("max_entry", &self.max_entry)
            .finish_non_exhaustive()
    }
}

/// Iterator returned by [`ImageReader::entries`].
pub struct Entries<'a, R: Read, M> {
    reader: &'a mut ImageReader<R>,
    done: bool,
    _msg: PhantomData<fn() -> M>,
}

impl<R: Read, M: Message + Default> Iterator for Entries<'_, R, M> {
    type Item = Result<M, ImageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.reader.read_entry::<M>().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// Decodes the first entry of an in-memory image (test and tooling helper).
pub fn decode_one<M: Message + Default>(
    bytes: &[u8],
    header: Header,
    name: impl Into<String>,
) -> Result<M, ImageError> {
    let mut r = ImageReader::open(bytes, header, name)?;
    match r.read_entry()? {
        Some(m) => Ok(m),
        None => Err(ImageError::Empty { name: r.name }),
    }
}

/// Decodes every entry of an in-memory image whose entries are all `M`.
pub fn decode_all<M: Message + Default>(
    bytes: &[u8],
    header: Header,
    name: impl Into<String>,
) -> Result<Vec<M>, ImageError> {
    let mut r = ImageReader::open(bytes, header, name)?;
    r.entries().collect()
}

/// Encodes `header` followed by `entries` into a new buffer.
pub fn encode_image<M: Message>(header: Header, entries: &[M]) -> io::Result<Vec<u8>> {
    let mut w = ImageWriter::new(Vec::new(), header)?;
    for e in entries {
        w.write_entry(e)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert_eq!(
            image_kind("core-123.img"),
            Some((Header::Common(magic::CORE), "core_entry"))
        );
        assert_eq!(
            image_kind("/x/y/pagemap-shmem-5.img"),
            Some((Header::Common(magic::PAGEMAP), "pagemap_entry"))
        );
        assert_eq!(image_kind("pages-1.img"), Some((Header::Raw, "")));
        assert_eq!(
            image_kind("stats-dump"),
            Some((Header::Service(magic::STATS), "stats_entry"))
        );
        assert_eq!(
            image_kind("stats-restore"),
            Some((Header::Service(magic::STATS), "stats_entry"))
        );
        assert_eq!(
            image_kind("inventory.img"),
            Some((Header::Inventory, "inventory_entry"))
        );
        assert_eq!(
            image_kind("tcp-stream-1a2b.img").map(|k| k.0),
            Some(Header::Common(magic::TCP_STREAM))
        );
        assert_eq!(image_kind("netns-ct-3.img").map(|k| k.0), Some(Header::Raw));
        assert_eq!(
            image_kind("netns-3.img").map(|k| k.0),
            Some(Header::Common(magic::NETNS))
        );
        assert_eq!(
            image_kind("tmpfs-dev-42.tar.gz.img").map(|k| k.0),
            Some(Header::Raw)
        );
        assert_eq!(
            image_kind("tmpfs-dev-42.tar.gz").map(|k| k.0),
            Some(Header::Raw)
        );
        assert_eq!(
            image_kind("signal-p-9.img").map(|k| k.0),
            Some(Header::Common(magic::PSIGNAL))
        );
        assert_eq!(image_kind("core-.img"), None);
        assert_eq!(image_kind("core-12x.img"), None);
        assert_eq!(image_kind("descriptors.json"), None);
        assert_eq!(image_kind("dump.log"), None);
    }

    #[test]
    fn patterns_are_unambiguous() {
        // No two descriptors may claim the same sample name.
        for desc in IMAGE_DESCS {
            let sample = desc
                .pattern
                .replace("%u", "12")
                .replace("%x", "1f")
                .replace("%s", "dump");
            let hits: Vec<_> = IMAGE_DESCS
                .iter()
                .filter(|d| pattern_matches(d.pattern, &sample))
                .map(|d| d.pattern)
                .collect();
            assert_eq!(hits, vec![desc.pattern], "{sample}");
            assert_eq!(image_desc(&format!("{sample}.img")), Some(desc));
        }
    }

    #[test]
    fn header_sniff_and_encode() {
        for h in [
            Header::Common(magic::CORE),
            Header::Service(magic::STATS),
            Header::Inventory,
        ] {
            let (b, n) = h.encode();
            assert_eq!(n, h.len());
            assert_eq!(Header::sniff(&b[..n]), Some(h));
        }
        assert_eq!(Header::Raw.len(), 0);
        assert_eq!(Header::sniff(&[1, 2, 3, 4, 5, 6, 7, 8]), None);
        assert_eq!(Header::sniff(&IMG_COMMON_MAGIC.to_le_bytes()), None);
    }
}
