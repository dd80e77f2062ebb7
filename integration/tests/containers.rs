//! Mount namespaces and cgroups: trees with mount tables of their own,
//! dumped by the host pid of their namespace's init and restored with their
//! mounts rebuilt, verified from inside (the workload reads through its
//! mounts and reports what it sees) and from /proc/PID/mountinfo.
//!
//! - `unshare_mounts_tmpfs_bind`: `unshare --pid --fork --mount-proc
//!   --mount`; a tmpfs with files, a read-only nosuid bind of a directory
//!   in it, a shared tmpfs and a peer bind of it; restored with `--root /`.
//! - `container_pivot_root_frozen_cgroup`: a busybox rootfs entered with
//!   pivot_root (`ct-init`) in new mount/pid/uts/ipc namespaces, in a cgroup
//!   the test creates under the cgroup2 mount; frozen during the dump
//!   (`--freeze-cgroup`), restored with `--root` into a fresh copy of the
//!   rootfs and `--manage-cgroups=full` into the re-created cgroup; its
//!   counter must go on and its mounts be there.
//!
//! - `slave_of_outer_mount`, `slave_of_external_mount`: a slave of a peer
//!   group outside the tree (a shared mount of the test's) is a slave of
//!   it again after restore, or of the `--external` mount given instead.
//!
//! Root only (skipped otherwise); run with `--test-threads=1`. Mounts,
//! cgroups and processes are cleaned up whatever happens.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stasis_integration::harness::{
    process_exists, read_pidfile, reap_zombie_children, wait_gone, Env,
};

/// A launcher (`unshare`) and the init it forked; dropping it kills both.
struct Tree {
    /// The session of the whole tree (the launcher called setsid).
    sid: i32,
    launcher: Option<Child>,
    init: i32,
    restored: i32,
}

impl Tree {
    fn start(cmd: &mut Command, log: &Path) -> Tree {
        cmd.stdin(Stdio::null())
            .stdout(fs::File::create(log).unwrap())
            .stderr(fs::File::create(log.with_extension("err")).unwrap());
        // SAFETY: setsid is async-signal-safe and touches no shared memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().expect("run the launcher");
        let upid = child.id() as i32;
        let mut t = Tree {
            sid: upid,
            launcher: Some(child),
            init: 0,
            restored: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while t.init == 0 {
            // The launcher may be `sh -c '... exec unshare'`: same pid.
            let kids = fs::read_to_string(format!("/proc/{upid}/task/{upid}/children"))
                .unwrap_or_default();
            t.init = kids
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            assert!(
                Instant::now() < deadline,
                "launcher {upid} forked no init: {}",
                fs::read_to_string(log.with_extension("err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        t
    }

    /// A plain process (no launcher): it is the tree's root itself.
    fn start_plain(cmd: &mut Command, log: &Path) -> Tree {
        cmd.stdin(Stdio::null())
            .stderr(fs::File::create(log).unwrap());
        // SAFETY: setsid is async-signal-safe and touches no shared memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().expect("run the workload");
        Tree {
            sid: child.id() as i32,
            init: child.id() as i32,
            launcher: Some(child),
            restored: 0,
        }
    }

    /// After a killing dump the launcher exits on its own.
    fn wait_launcher(&mut self) {
        if let Some(mut c) = self.launcher.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            // Err: already reaped (we are a subreaper that reaps zombies).
            while matches!(c.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("launcher did not exit after the dump");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        wait_gone(&[self.init], Duration::from_secs(10)).unwrap();
        // Every process of the tree (its session) gone and reaped: the
        // restore needs their pids.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            reap_zombie_children(&[]);
            if !in_session(self.sid) || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        for p in [self.init, self.restored] {
            if p > 0 && process_exists(p) {
                // SAFETY: kill takes plain integers; the process is ours.
                unsafe { libc::kill(p, libc::SIGKILL) };
                let _ = wait_gone(&[p], Duration::from_secs(5));
            }
        }
        if let Some(mut c) = self.launcher.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        reap_zombie_children(&[]);
    }
}

/// Whether any process is in session `sid`.
fn in_session(sid: i32) -> bool {
    let Ok(rd) = fs::read_dir("/proc") else {
        return false;
    };
    rd.filter_map(|d| d.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .any(|p| {
            fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|st| {
                    let rest = &st[st.rfind(')')? + 2..];
                    rest.split(' ').nth(3)?.parse::<i32>().ok()
                })
                == Some(sid)
        })
}

/// The workload's report: `N field...` in `file`, rewritten every tick.
fn read_tick(file: &Path) -> Option<(u64, Vec<String>)> {
    let s = fs::read_to_string(file).ok()?;
    // Rewritten in place: a line counts once it is whole.
    if !s.ends_with('\n') {
        return None;
    }
    let mut it = s.split_whitespace().map(str::to_owned);
    let n = it.next()?.parse().ok()?;
    Some((n, it.collect()))
}

/// Wait until the counter in `file` exceeds `above`; returns the report.
fn wait_tick(file: &Path, above: u64, why: &str) -> (u64, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some((n, f)) = read_tick(file) {
            if n > above {
                return (n, f);
            }
        }
        assert!(
            Instant::now() < deadline,
            "{why}: counter in {} did not pass {above} (now {:?})",
            file.display(),
            read_tick(file)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Mounts of `pid`'s namespace as (mountpoint, fstype, mount options,
/// optional fields, root).
fn mounts_of(pid: i32) -> Vec<(String, String, String, String, String)> {
    let s = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    s.lines()
        .map(|l| {
            let (a, b) = l.split_once(" - ").unwrap();
            let f: Vec<&str> = a.split(' ').collect();
            let fs_type = b.split(' ').next().unwrap().to_string();
            (
                f[4].to_string(),
                fs_type,
                f[5].to_string(),
                f[6..].join(" "),
                f[3].to_string(),
            )
        })
        .collect()
}

fn find<'a>(
    m: &'a [(String, String, String, String, String)],
    at: &str,
) -> &'a (String, String, String, String, String) {
    m.iter()
        .rev()
        .find(|e| e.0 == at)
        .unwrap_or_else(|| panic!("no mount at {at} in {m:#?}"))
}

// bash, no forks in the loop (builtins only; `read -t` on a FIFO nobody
// writes is the sleep): a tree that holds still in shape.
const LOOP_SH: &str = r#"exec 3<> "$1/fifo"
i=0
while :; do
  i=$((i+1))
  read f < "$1/t/f"; read g < "$1/b/g"
  if { : > "$1/b/x"; } 2>/dev/null; then w=rw; else w=ro; fi
  echo "$i $f $g $w" > "$1/tick"
  read -t 0.1 -u 3 x
done
"#;

#[test]
fn unshare_mounts_tmpfs_bind() {
    let Some(env) = Env::setup("unshare_mounts_tmpfs_bind") else {
        return;
    };
    let d = env.dir("w");
    for s in ["t", "b", "s", "s2"] {
        fs::create_dir_all(d.join(s)).unwrap();
    }
    fs::write(d.join("loop.sh"), LOOP_SH).unwrap();
    nix::unistd::mkfifo(
        &d.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let setup = r#"set -e
mount -t tmpfs -o size=2m,mode=755 stasis-t "$0/t"
echo data > "$0/t/f"; mkdir "$0/t/d"; echo sub > "$0/t/d/g"
mount --bind "$0/t/d" "$0/b"
mount -o remount,bind,ro,nosuid "$0/b"
mount -t tmpfs -o size=1m stasis-s "$0/s"
mount --make-shared "$0/s"
mount --bind "$0/s" "$0/s2"
exec bash "$0/loop.sh" "$0""#;
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        setup,
    ])
    .arg(&d);
    let mut t = Tree::start(&mut cmd, &env.path("launcher.log"));
    let tick = d.join("tick");
    let (_, f) = wait_tick(&tick, 2, "before dump");
    assert_eq!(f, ["data", "sub", "ro"], "workload's view before dump");

    let img = env.dir("images");
    env.dump(t.init, &img, &[]).expect_success("dump");
    t.wait_launcher();
    assert!(
        fs::read_dir(&img)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("tmpfs-dev-")),
        "no tmpfs tarball in the images"
    );
    let (last, _) = read_tick(&tick).unwrap();

    let pidfile = env.path("restore.pid");
    env.restore(&img, &pidfile, &["--root", "/"])
        .expect_success("restore --root /");
    t.restored = read_pidfile(&pidfile).unwrap();
    let (_, f) = wait_tick(&tick, last + 2, "after restore");
    assert_eq!(f, ["data", "sub", "ro"], "workload's view after restore");

    let m = mounts_of(t.restored);
    let ds = d.to_str().unwrap();
    let tm = find(&m, &format!("{ds}/t"));
    assert_eq!(tm.1, "tmpfs");
    let b = find(&m, &format!("{ds}/b"));
    assert_eq!((b.1.as_str(), b.4.as_str()), ("tmpfs", "/d"), "bind of t/d");
    assert!(b.2.starts_with("ro,") && b.2.contains("nosuid"), "{b:?}");
    let s = find(&m, &format!("{ds}/s"));
    let s2 = find(&m, &format!("{ds}/s2"));
    assert!(s.3.contains("shared:"), "s not shared: {s:?}");
    assert_eq!(s.3, s2.3, "s and s2 are not peers");
    assert_eq!(find(&m, "/proc").1, "proc");
}

// bash, builtins only: reports what it sees below ext/sub.
const SLAVE_SH: &str = r#"exec 3<> "$1/fifo"
i=0
while :; do
  i=$((i+1)); f=none
  if [ -e "$1/ext/sub/f" ]; then read f < "$1/ext/sub/f"; fi
  echo "$i $f" > "$1/tick"
  read -t 0.1 -u 3 x
done
"#;

/// This test's shared id of the topmost mount at `at`, from our mountinfo.
fn shared_id_here(at: &str) -> String {
    let m = mounts_of(std::process::id() as i32);
    let e = find(&m, at);
    e.3.split(' ')
        .find_map(|o| o.strip_prefix("shared:"))
        .unwrap_or_else(|| panic!("{at} is not shared here: {e:?}"))
        .to_string()
}

fn sh(cmd: &str, arg: &Path) {
    let st = Command::new("sh")
        .args(["-c", cmd, "sh"])
        .arg(arg)
        .status()
        .unwrap();
    assert!(st.success(), "{cmd} {}: {st:?}", arg.display());
}

/// A mount that is a slave of a peer group outside the tree's mount
/// namespace (`unshare --propagation slave` of a shared mount of ours) is
/// a slave of that group again after restore (`--root /`): our mountinfo's
/// group is its master, and a mount we make below it afterwards shows
/// inside the restored tree.
#[test]
fn slave_of_outer_mount() {
    slave_of_outer("slave_of_outer_mount", false);
}

/// The same mount marked `--external mnt[PATH]:KEY` at dump and given as
/// another shared mount of ours at restore: it is a slave of that one's
/// group.
#[test]
fn slave_of_external_mount() {
    slave_of_outer("slave_of_external_mount", true);
}

fn slave_of_outer(name: &str, external: bool) {
    let Some(env) = Env::setup(name) else {
        return;
    };
    let d = env.dir("w");
    let ext = d.join("ext");
    let _m = stasis_integration::harness::Mount::tmpfs(&ext, "size=1m", false).unwrap();
    sh(r#"mount --make-shared "$1""#, &ext);
    fs::create_dir(ext.join("sub")).unwrap();
    let group = shared_id_here(ext.to_str().unwrap());
    // What the restored mount is bound from: the same mount, or the one
    // given with --external.
    let src = if external {
        d.join("ext2")
    } else {
        ext.clone()
    };
    let _m2 = external.then(|| {
        let m = stasis_integration::harness::Mount::tmpfs(&src, "size=1m", false).unwrap();
        sh(r#"mount --make-shared "$1""#, &src);
        fs::create_dir(src.join("sub")).unwrap();
        m
    });
    let src_group = shared_id_here(src.to_str().unwrap());
    fs::write(d.join("loop.sh"), SLAVE_SH).unwrap();
    nix::unistd::mkfifo(
        &d.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        "--mount",
        "--propagation",
        "slave",
        "bash",
    ])
    .arg(d.join("loop.sh"))
    .arg(&d);
    let mut t = Tree::start(&mut cmd, &env.path("launcher.log"));
    let tick = d.join("tick");
    let (_, f) = wait_tick(&tick, 2, "before dump");
    assert_eq!(f, ["none"]);
    let inside = find(&mounts_of(t.init), ext.to_str().unwrap()).3.clone();
    assert!(
        inside.contains(&format!("master:{group}")),
        "not a slave before dump: {inside}"
    );

    let img = env.dir("images");
    let dump_ext = format!("mnt[{}]:slave-ext", ext.display());
    let rst_ext = format!("mnt[slave-ext]:{}", src.display());
    let (dump_args, rst_args): (Vec<&str>, Vec<&str>) = if external {
        (
            vec!["--external", &dump_ext],
            vec!["--root", "/", "--external", &rst_ext],
        )
    } else {
        (vec![], vec!["--root", "/"])
    };
    env.dump(t.init, &img, &dump_args).expect_success("dump");
    t.wait_launcher();
    let (last, _) = read_tick(&tick).unwrap();
    let pidfile = env.path("restore.pid");
    env.restore(&img, &pidfile, &rst_args)
        .expect_success("restore");
    t.restored = read_pidfile(&pidfile).unwrap();
    let (last, f) = wait_tick(&tick, last + 2, "after restore");
    assert_eq!(f, ["none"]);
    let after = find(&mounts_of(t.restored), ext.to_str().unwrap())
        .3
        .clone();
    assert!(
        after.contains(&format!("master:{src_group}")),
        "not a slave of {src_group} after restore: {after}"
    );
    // Propagation from us into the restored tree works again.
    let _sub =
        stasis_integration::harness::Mount::tmpfs(&src.join("sub"), "size=1m", false).unwrap();
    fs::write(src.join("sub/f"), "prop\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, f) = wait_tick(&tick, last, "after mounting below");
        if f == ["prop"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mount made below {} never showed inside: {f:?}",
            src.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn busybox_rootfs(dir: &Path) {
    for d in ["bin", "dev", "proc", "tmp", "etc", "ro"] {
        fs::create_dir_all(dir.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", dir.join("bin/busybox")).expect("copy /bin/busybox (busybox-static)");
    for a in ["sh", "sleep", "mv", "touch", "cat"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    fs::write(dir.join("etc/motd"), "hello from etc\n").unwrap();
}

/// A cgroup this test creates (and removes, killing what is left in it).
struct Cgroup(PathBuf);

impl Cgroup {
    fn create(name: &str) -> Cgroup {
        let mi = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mnt = mi
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .and_then(|l| l.split(' ').nth(4))
            .expect("no cgroup2 mount")
            .to_string();
        let p = PathBuf::from(mnt).join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir(&p);
        fs::create_dir(&p).unwrap();
        Cgroup(p)
    }

    fn kill_all(&self) {
        if !self.0.exists() {
            return;
        }
        let _ = fs::write(self.0.join("cgroup.freeze"), "0");
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while fs::read_to_string(self.0.join("cgroup.procs"))
            .map(|s| !s.trim().is_empty())
            .unwrap_or(false)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        reap_zombie_children(&[]);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        let _ = fs::remove_dir(&self.0);
    }
}

const CT_SH: &str = r#"i=0
while :; do
  i=$((i+1))
  read h < /proc/sys/kernel/hostname
  read t < /tmp/hello; read s < /tmp/sub/deep; read e < /ro/motd
  if touch /ro/x 2>/dev/null; then w=rw; else w=ro; fi
  echo "$i $h $t $s $w $$" > /tick.new; mv /tick.new /tick
  sleep 0.1
done
"#;

#[test]
fn container_pivot_root_frozen_cgroup() {
    container("container_pivot_root_frozen_cgroup", false);
}

/// The same with `-R`: the frozen container runs on after the dump (its
/// cgroup thawed), is then killed, and its image restored.
#[test]
fn container_pivot_root_leave_running() {
    container("container_pivot_root_leave_running", true);
}

fn container(name: &str, leave_running: bool) {
    let Some(env) = Env::setup(name) else {
        return;
    };
    if !Path::new("/bin/busybox").exists() {
        panic!("/bin/busybox missing: install busybox-static (hack/setup.sh)");
    }
    let rootfs = env.dir("rootfs");
    busybox_rootfs(&rootfs);
    fs::write(rootfs.join("ct.sh"), CT_SH).unwrap();
    let cg = Cgroup::create("stasis-ct");
    fs::write(cg.0.join("cgroup.max.descendants"), "5").unwrap();
    let launch = format!(
        "echo $$ > {}/cgroup.procs && exec unshare --mount --pid --fork --uts --ipc \
         --propagation private {} {} ct-test /bin/sh /ct.sh",
        cg.0.display(),
        env!("CARGO_BIN_EXE_ct-init"),
        rootfs.display()
    );
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &launch]);
    let mut t = Tree::start(&mut cmd, &env.path("launcher.log"));
    let (_, f) = wait_tick(&rootfs.join("tick"), 2, "before dump");
    assert_eq!(
        &f[..5],
        ["ct-test", "tmpfs-data", "deep-data", "ro", "1"].map(String::from),
        "container's view before dump"
    );

    let img = env.dir("images");
    let cgs = cg.0.to_str().unwrap();
    // A dump failing after the freeze: the error names the mount, the
    // cgroup is thawed and the container runs on.
    env.dump(
        t.init,
        &env.dir("bad-images"),
        &["--freeze-cgroup", cgs, "--external", "mnt[/nowhere]:x"],
    )
    .expect_clear_failure("dump with a bad --external", &["/nowhere"]);
    let ev = fs::read_to_string(cg.0.join("cgroup.events")).unwrap();
    assert!(
        ev.contains("frozen 0"),
        "cgroup left frozen by a failed dump: {ev}"
    );
    let (n0, _) = read_tick(&rootfs.join("tick")).unwrap();
    wait_tick(&rootfs.join("tick"), n0 + 1, "after a failed dump");

    let mut args = vec![
        "--freeze-cgroup",
        cgs,
        "--external",
        "mnt[/dev/null]:devnull",
    ];
    if leave_running {
        args.push("-R");
    }
    let (before, _) = read_tick(&rootfs.join("tick")).unwrap();
    env.dump(t.init, &img, &args)
        .expect_success("dump --freeze-cgroup");
    let ev = fs::read_to_string(cg.0.join("cgroup.events")).unwrap();
    assert!(ev.contains("frozen 0"), "cgroup left frozen: {ev}");
    if leave_running {
        let (n, _) = read_tick(&rootfs.join("tick")).unwrap();
        wait_tick(&rootfs.join("tick"), n + 1, "original after dump -R");
        cg.kill_all();
    }
    t.wait_launcher();
    let last = if leave_running {
        // The copy holds the original's later ticks: the restored counter
        // resumes from the dump, after `before`.
        let _ = fs::remove_file(rootfs.join("tick"));
        before
    } else {
        read_tick(&rootfs.join("tick")).unwrap().0
    };

    // A fresh copy of the rootfs, and the cgroup gone: restore re-creates it.
    let rootfs2 = env.path("rootfs2");
    let st = Command::new("cp")
        .args(["-a"])
        .arg(&rootfs)
        .arg(&rootfs2)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a rootfs");
    cg.kill_all();
    let pidfile = env.path("restore.pid");
    let r2 = rootfs2.to_str().unwrap();
    let cgname = cg.0.file_name().unwrap().to_str().unwrap().to_string();
    let ext = ["--external", "mnt[devnull]:/dev/null"];
    // The caller's mount must be given back.
    env.restore(&img, &pidfile, &["--root", r2])
        .expect_clear_failure("restore without --external", &["devnull"]);
    // strict wants to make the cgroup itself; none wants it made already.
    env.restore(
        &img,
        &pidfile,
        &["--root", r2, "--manage-cgroups=strict", ext[0], ext[1]],
    )
    .expect_clear_failure("restore strict into an existing cgroup", &[&cgname]);
    fs::remove_dir(&cg.0).unwrap();
    env.restore(
        &img,
        &pidfile,
        &["--root", r2, "--manage-cgroups=none", ext[0], ext[1]],
    )
    .expect_clear_failure("restore none without the cgroup", &[&cgname]);
    env.restore(
        &img,
        &pidfile,
        &[
            "--root",
            r2,
            "--manage-cgroups=full",
            "--external",
            "mnt[devnull]:/dev/null",
        ],
    )
    .expect_success("restore --root");
    t.restored = read_pidfile(&pidfile).unwrap();
    let (_, f) = wait_tick(&rootfs2.join("tick"), last + 2, "after restore");
    assert_eq!(
        &f[..5],
        ["ct-test", "tmpfs-data", "deep-data", "ro", "1"].map(String::from),
        "container's view after restore"
    );

    let m = mounts_of(t.restored);
    assert_eq!(find(&m, "/proc").1, "proc");
    assert_eq!(find(&m, "/tmp").1, "tmpfs");
    assert_eq!(find(&m, "/dev/mqueue").1, "mqueue");
    assert_eq!(find(&m, "/dev/null").1, "devtmpfs");
    let ro = find(&m, "/ro");
    assert!(ro.2.starts_with("ro,") && ro.2.contains("nosuid"), "{ro:?}");
    let cgl = fs::read_to_string(format!("/proc/{}/cgroup", t.restored)).unwrap();
    let name = cg.0.file_name().unwrap().to_str().unwrap();
    assert!(
        cgl.lines()
            .any(|l| l.starts_with("0::/") && l.ends_with(name)),
        "restored init is not in {name}: {cgl}"
    );
    assert_eq!(
        fs::read_to_string(cg.0.join("cgroup.max.descendants"))
            .unwrap()
            .trim(),
        "5",
        "cgroup property not restored"
    );
    drop(t);
    drop(cg);
}

/// N of a `count N` line.
fn count(l: &str) -> u64 {
    l.trim()
        .strip_prefix("count ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a count line: {l:?}"))
}

/// runc's stdio hand-over: the tree's stdout is a pipe of ours; restore
/// gives it a new pipe with `--inherit-fd fd[1]:pipe:[INO]` (stasis's own
/// stdout), and the counter must go on arriving there.
#[test]
fn inherit_fd_stdio_pipe() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::MetadataExt;

    let Some(env) = Env::setup("inherit_fd_stdio_pipe") else {
        return;
    };
    let (r1, w1) = nix::unistd::pipe().unwrap();
    let ino = fs::File::from(r1.try_clone().unwrap())
        .metadata()
        .unwrap()
        .ino();
    // The Command holds our copy of the write end: gone with it.
    let mut t = {
        // wl-counter: one process printing `count N`, no forks.
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wl-counter"));
        cmd.arg(env.dir("wl")).stdout(Stdio::from(w1));
        Tree::start_plain(&mut cmd, &env.path("wl.log"))
    };
    let mut lines = BufReader::new(fs::File::from(r1));
    let mut last = 0u64;
    for _ in 0..3 {
        let mut l = String::new();
        lines.read_line(&mut l).unwrap();
        last = count(&l);
    }
    let img = env.dir("images");
    env.dump(t.init, &img, &[]).expect_success("dump");
    t.wait_launcher();
    // Drain what was written before the dump.
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut lines, &mut rest).unwrap();
    if let Some(l) = rest.lines().last() {
        last = count(l);
    }

    let (r2, w2) = nix::unistd::pipe().unwrap();
    let pidfile = env.path("restore.pid");
    let key = format!("fd[1]:pipe:[{ino}]");
    let log = env.path("restore.log");
    let mut c = Command::new(&env.bin);
    c.args(["criu", "restore", "-d", "-v4", "-D"])
        .arg(&img)
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("-o")
        .arg(&log)
        .args(["--inherit-fd", &key])
        .stdin(Stdio::null())
        .stdout(Stdio::from(w2))
        .stderr(fs::File::create(env.path("restore.err")).unwrap());
    let st = c.status().unwrap();
    drop(c);
    assert!(
        st.success(),
        "restore --inherit-fd failed: {}\n{}",
        fs::read_to_string(env.path("restore.err")).unwrap_or_default(),
        fs::read_to_string(&log).unwrap_or_default()
    );
    t.restored = read_pidfile(&pidfile).unwrap();
    assert_eq!(t.restored, t.init);
    let mut lines = BufReader::new(fs::File::from(r2));
    let mut l = String::new();
    lines.read_line(&mut l).unwrap();
    let n = count(&l);
    assert!(n > last, "counter went from {last} to {n}");
}

/// `--join-ns uts:PATH`: a plain tree restored into a UTS namespace another
/// process holds; it must report that namespace's hostname.
#[test]
fn join_ns_uts() {
    let Some(env) = Env::setup("join_ns_uts") else {
        return;
    };
    let ready = env.path("holder.ready");
    let mut holder = {
        let mut cmd = Command::new("unshare");
        cmd.args(["--uts", "sh", "-c"]).arg(format!(
            "hostname stasis-joined && touch {} && exec sleep 1000",
            ready.display()
        ));
        Tree::start_plain(&mut cmd, &env.path("holder.log"))
    };
    stasis_integration::harness::wait_for_file(&ready, Duration::from_secs(10)).unwrap();
    // wl-counter: one process, no forks; its hostname is read through
    // its UTS namespace.
    let mut t = {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wl-counter"));
        cmd.arg(env.dir("wl")).stdout(Stdio::null());
        Tree::start_plain(&mut cmd, &env.path("wl.log"))
    };
    let uts_host = |pid: i32| -> String {
        let o = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-u", "hostname"])
            .output()
            .expect("run nsenter");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    stasis_integration::harness::wait_for_file(&env.path("wl/ready"), Duration::from_secs(10))
        .unwrap();
    assert_ne!(uts_host(t.init), "stasis-joined");
    let img = env.dir("images");
    env.dump(t.init, &img, &[]).expect_success("dump");
    t.wait_launcher();
    let pidfile = env.path("restore.pid");
    let ns = format!("uts:/proc/{}/ns/uts", holder.init);
    env.restore(&img, &pidfile, &["--join-ns", &ns])
        .expect_success("restore --join-ns");
    t.restored = read_pidfile(&pidfile).unwrap();
    let a = fs::read_link(format!("/proc/{}/ns/uts", t.restored)).unwrap();
    let b = fs::read_link(format!("/proc/{}/ns/uts", holder.init)).unwrap();
    assert_eq!(a, b, "restored tree is not in the joined UTS namespace");
    assert_eq!(uts_host(t.restored), "stasis-joined");
    drop(t);
    holder.restored = 0;
    drop(holder);
}
