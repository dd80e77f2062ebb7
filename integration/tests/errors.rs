//! Bad input and interrupted operations: every failure must exit non-zero
//! with exactly one clear line on stderr naming the object at fault (the pid
//! or the file), leave the dump target running and untraced, and leave no new
//! process behind after a failed restore.
//!
//! Read-only images directory: `chmod 0500` does not stop root, so the tests
//! use (a) a regular file where the directory should be, and (b) a tmpfs
//! mounted read-only (`MS_RDONLY`) for the test and unmounted afterwards.
//! Out of space: a 4 MiB tmpfs, too small for `wl-mem`'s 64 MiB.
//!
//! Root only (skipped otherwise); run with `--test-threads=1`.

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use stasis_integration::harness::{
    all_pids, comm, expect_untraced, mentions, new_processes, proc_state, process_exists, say, Env,
    Mount, Workload,
};

fn small(env: &Env) -> Workload {
    Workload::start(env, env!("CARGO_BIN_EXE_wl-small"), &[], &[])
}

/// Dumps a fresh `wl-small` (which kills it), reaps it, returns the workload
/// (dead) and its images.
fn dumped_small(env: &Env) -> (Workload, PathBuf) {
    let mut wl = small(env);
    let img = env.dir("images");
    env.dump(wl.root_pid(), &img, &[])
        .expect_success("dump wl-small");
    wl.expect_killed_and_reap();
    (wl, img)
}

/// The first file in `dir` whose name starts with `prefix` and ends `.img`.
fn image(dir: &Path, prefix: &str) -> PathBuf {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("read images dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".img"))
        })
        .collect();
    v.sort();
    v.into_iter()
        .next()
        .unwrap_or_else(|| panic!("no {prefix}*.img in {}", dir.display()))
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

/// Restores from `img` (expected to fail clearly, naming one of `names`) and
/// checks that nothing is left running.
fn restore_must_fail(env: &Env, wl: &Workload, img: &Path, what: &str, names: &[&str]) {
    let before = all_pids();
    let pidfile = env.path("restore.pid");
    let run = env.restore(img, &pidfile, &[]);
    run.expect_clear_failure(what, names);
    std::thread::sleep(Duration::from_millis(100));
    let left = new_processes(&before, &wl.dir.to_string_lossy());
    assert!(
        left.is_empty(),
        "{what}: the failed restore left processes behind:\n{}",
        left.join("\n")
    );
    assert!(
        !process_exists(wl.root_pid()),
        "{what}: pid {} exists after a failed restore",
        wl.root_pid()
    );
}

/// The target must still run untraced and verify itself fine.
fn expect_unharmed(wl: &mut Workload, what: &str) {
    wl.expect_running(what);
    wl.verify_and_finish(what);
}

#[test]
fn dump_nonexistent_pid_fails() {
    let Some(env) = Env::setup("dump_nonexistent_pid_fails") else {
        return;
    };
    let max: i32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let pid = (2..max)
        .rev()
        .find(|&p| !process_exists(p))
        .expect("a free pid");
    let img = env.dir("images");
    let run = env.dump(pid, &img, &[]);
    run.expect_clear_failure("dump of a missing pid", &[&pid.to_string()]);
}

#[test]
fn dump_kernel_thread_fails() {
    let Some(env) = Env::setup("dump_kernel_thread_fails") else {
        return;
    };
    if comm(2) != "kthreadd" {
        say("dump_kernel_thread_fails: skipped: pid 2 is not kthreadd here");
        return;
    }
    let img = env.dir("images");
    let run = env.dump(2, &img, &[]);
    run.expect_clear_failure("dump of kthreadd", &["2", "kthreadd"]);
    let st = proc_state(2).expect("kthreadd still exists");
    assert_eq!(st.tracer, 0, "kthreadd left traced");
}

#[test]
fn dump_into_missing_dir_fails() {
    let Some(env) = Env::setup("dump_into_missing_dir_fails") else {
        return;
    };
    let mut wl = small(&env);
    let img = env.path("missing/images");
    let run = env.dump(wl.root_pid(), &img, &[]);
    run.expect_clear_failure(
        "dump into a missing dir",
        &[&img.to_string_lossy(), "missing/images"],
    );
    expect_unharmed(&mut wl, "after dump into a missing dir");
}

#[test]
fn dump_into_file_path_fails() {
    let Some(env) = Env::setup("dump_into_file_path_fails") else {
        return;
    };
    let mut wl = small(&env);
    let img = env.path("not-a-dir");
    fs::write(&img, "a regular file\n").unwrap();
    let run = env.dump(wl.root_pid(), &img, &[]);
    run.expect_clear_failure(
        "dump into a regular file",
        &[&img.to_string_lossy(), "not-a-dir"],
    );
    expect_unharmed(&mut wl, "after dump into a regular file");
    assert_eq!(
        fs::read_to_string(&img).unwrap(),
        "a regular file\n",
        "the file given as images dir was modified"
    );
}

#[test]
fn dump_into_readonly_mount_fails() {
    let Some(env) = Env::setup("dump_into_readonly_mount_fails") else {
        return;
    };
    let img = env.path("ro-images");
    let _mount = match Mount::tmpfs(&img, "size=16m", true) {
        Ok(m) => m,
        Err(e) => {
            say(&format!("dump_into_readonly_mount_fails: skipped: {e}"));
            return;
        }
    };
    let mut wl = small(&env);
    let run = env.dump(wl.root_pid(), &img, &[]);
    run.expect_clear_failure(
        "dump into a read-only mount",
        &[&img.to_string_lossy(), "ro-images"],
    );
    expect_unharmed(&mut wl, "after dump into a read-only mount");
}

#[test]
fn failed_dump_leaves_target_running() {
    // The images dir is a file: the dump fails, the target must be left as
    // it was (untraced, not stopped) and keep working.
    let Some(env) = Env::setup("failed_dump_leaves_target_running") else {
        return;
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-threads"), &[], &[]);
    let img = env.path("file-not-dir");
    fs::write(&img, "").unwrap();
    let run = env.dump(wl.root_pid(), &img, &[]);
    assert!(!run.success(), "dump should fail: {}", run.describe());
    expect_unharmed(&mut wl, "after a failed dump");
}

#[test]
fn unsupported_fd_kind_fails_by_name() {
    // A netlink socket: the dump must refuse it naming pid, fd and kind, and
    // leave the target running and untouched.
    let Some(env) = Env::setup("unsupported_fd_kind_fails_by_name") else {
        return;
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-small"), &["netlink"], &[]);
    let img = env.dir("images");
    let run = env.dump(wl.root_pid(), &img, &[]);
    let pid = wl.root_pid().to_string();
    run.expect_clear_failure("dump of a netlink socket", &[&pid, "fd 42", "netlink"]);
    expect_unharmed(&mut wl, "after refusing a netlink socket");
}

#[test]
fn host_ipc_shm_attachment_fails_by_name() {
    // A SysV segment of the host's IPC namespace attached: the segment is
    // not the tree's (as CRIU, the dump refuses it, naming pid and segment)
    // and the target keeps running.
    let Some(env) = Env::setup("host_ipc_shm_attachment_fails_by_name") else {
        return;
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-small"), &["sysv"], &[]);
    let img = env.dir("images");
    let run = env.dump(wl.root_pid(), &img, &[]);
    let pid = wl.root_pid().to_string();
    run.expect_clear_failure("dump of a host sysv shm attachment", &[&pid]);
    assert!(
        run.stderr.contains("sysv shm segment") && run.stderr.contains("ipc namespace"),
        "{}",
        run.describe()
    );
    expect_unharmed(&mut wl, "after refusing a host sysv shm attachment");
}

#[test]
fn dump_out_of_space_leaves_target_running() {
    // The failure happens mid-dump (while writing pages), after the target
    // was seized: it must be released untouched.
    let Some(env) = Env::setup("dump_out_of_space_leaves_target_running") else {
        return;
    };
    let img = env.path("tiny-images");
    let _mount = match Mount::tmpfs(&img, "size=4m", false) {
        Ok(m) => m,
        Err(e) => {
            say(&format!(
                "dump_out_of_space_leaves_target_running: skipped: {e}"
            ));
            return;
        }
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-mem"), &[], &["child"]);
    let run = env.dump(wl.root_pid(), &img, &[]);
    run.expect_clear_failure(
        "dump into a full filesystem",
        &[&img.to_string_lossy(), "No space", "ENOSPC", "pages-"],
    );
    expect_unharmed(&mut wl, "after a dump that ran out of space");
    assert!(
        !img.join("inventory.img").exists(),
        "a failed dump must not write inventory.img"
    );
}

#[test]
fn killed_dump_leaves_target_running() {
    // SIGKILL the dumper while it copies 512 MiB: the target must come
    // back running and untraced, and the images must be rejected as
    // incomplete.
    interrupted_dump("killed_dump_leaves_target_running", libc::SIGKILL);
}

#[test]
fn interrupted_dump_leaves_target_running() {
    // The same with SIGINT (Ctrl-C): stasis stops at a safe point, detaches
    // the target and says so, with a non-zero exit.
    interrupted_dump("interrupted_dump_leaves_target_running", libc::SIGINT);
}

fn interrupted_dump(name: &str, sig: i32) {
    let Some(env) = Env::setup(name) else {
        return;
    };
    // With threads: each must be left at a syscall stop, not in the SIGTRAP
    // stop of a remote call, which the kernel would deliver on our death.
    // A dumper killed outright cannot unmap its scratch area, and the thread
    // writing the target's pages (mem/selfwrite.rs) finishes on its own
    // with its fd: no footprint check after SIGKILL.
    let mut args = vec!["512", "threads"];
    if sig == libc::SIGKILL {
        args.push("nofootprint");
    }
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-memhog"), &args, &[]);
    let img = env.dir("images");
    let log = env.path("killed-dump.log");
    let pid = wl.root_pid().to_string();
    let mut child = env.spawn_stasis(&[
        "criu",
        "dump",
        "-t",
        &pid,
        "-D",
        &img.to_string_lossy(),
        "-o",
        &log.to_string_lossy(),
        "-v4",
    ]);
    // Stop it while it copies memory: the target is then between remote
    // calls (no SIGKILL can be survived in the middle of one, as with
    // CRIU's parasite), which is where nearly all of a dump's time goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let copying = || {
        fs::read_dir(&img).ok().is_some_and(|d| {
            d.flatten().any(|e| {
                e.file_name().to_string_lossy().starts_with("pages-")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
        })
    };
    while !copying() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if let Ok(Some(st)) = child.child.try_wait() {
        panic!(
            "the dump ended ({st}) before it could be stopped while copying memory; \
             cannot test an interrupted dump"
        );
    }
    let run = child.signal(sig);
    assert!(
        !run.success(),
        "stasis was stopped by signal {sig}: {}",
        run.describe()
    );
    if let Err(e) = expect_untraced(wl.root_pid(), Duration::from_secs(5)) {
        panic!(
            "after stopping the dumper, the target is not running freely: {e}\n{}",
            wl.diagnostics()
        );
    }
    expect_unharmed(&mut wl, "after the dumper was stopped");
    assert!(
        !img.join("inventory.img").exists(),
        "an interrupted dump must not leave inventory.img"
    );
    restore_must_fail(
        &env,
        &wl,
        &img,
        "restore from an interrupted dump",
        &["inventory", "incomplete"],
    );
}

#[test]
fn restore_truncated_core_fails() {
    let Some(env) = Env::setup("restore_truncated_core_fails") else {
        return;
    };
    let (wl, img) = dumped_small(&env);
    let core = img.join(format!("core-{}.img", wl.root_pid()));
    let len = fs::metadata(&core).expect("core image exists").len();
    fs::OpenOptions::new()
        .write(true)
        .open(&core)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let name = file_name(&core);
    restore_must_fail(
        &env,
        &wl,
        &img,
        "restore with a truncated core image",
        &[&name],
    );
}

#[test]
fn restore_truncated_pages_fails() {
    let Some(env) = Env::setup("restore_truncated_pages_fails") else {
        return;
    };
    let (wl, img) = dumped_small(&env);
    let pages = image(&img, "pages-");
    let len = fs::metadata(&pages).unwrap().len();
    assert!(
        len >= 8192,
        "pages image too small to truncate: {len} bytes"
    );
    fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    let name = file_name(&pages);
    restore_must_fail(
        &env,
        &wl,
        &img,
        "restore with a truncated pages image",
        &[&name, "pagemap-"],
    );
}

#[test]
fn restore_corrupted_core_fails() {
    // Bytes 12..28 (the start of the first entry's protobuf, right after the
    // two magics and the entry length) are overwritten with 0xff: an
    // over-long varint tag, which no protobuf decoder accepts. (Flipping
    // arbitrary payload bytes can yield a valid message with other register
    // values, which no image format without checksums can detect.)
    let Some(env) = Env::setup("restore_corrupted_core_fails") else {
        return;
    };
    let (wl, img) = dumped_small(&env);
    let core = img.join(format!("core-{}.img", wl.root_pid()));
    let mut f = fs::OpenOptions::new().write(true).open(&core).unwrap();
    f.seek(SeekFrom::Start(12)).unwrap();
    f.write_all(&[0xff; 16]).unwrap();
    drop(f);
    let name = file_name(&core);
    restore_must_fail(
        &env,
        &wl,
        &img,
        "restore with a corrupted core image",
        &[&name],
    );
}

#[test]
fn restore_wrong_magic_fails() {
    let Some(env) = Env::setup("restore_wrong_magic_fails") else {
        return;
    };
    let (wl, img) = dumped_small(&env);
    let pstree = img.join("pstree.img");
    let mut f = fs::OpenOptions::new().write(true).open(&pstree).unwrap();
    f.write_all(&0xdead_beef_u32.to_le_bytes()).unwrap();
    drop(f);
    restore_must_fail(
        &env,
        &wl,
        &img,
        "restore with a bad pstree magic",
        &["pstree.img"],
    );
}

#[test]
fn restore_without_inventory_fails() {
    let Some(env) = Env::setup("restore_without_inventory_fails") else {
        return;
    };
    let (wl, img) = dumped_small(&env);
    fs::remove_file(img.join("inventory.img")).expect("inventory.img exists");
    restore_must_fail(
        &env,
        &wl,
        &img,
        "restore without inventory.img",
        &["inventory.img"],
    );
}

#[test]
fn restore_pid_in_use_fails() {
    // Dump with -R and keep the original running: its pid is taken, so the
    // restore must fail, name the pid, create nothing and not disturb the
    // original.
    let Some(env) = Env::setup("restore_pid_in_use_fails") else {
        return;
    };
    let mut wl = small(&env);
    let img = env.dir("images");
    env.dump(wl.root_pid(), &img, &["-R"])
        .expect_success("dump -R wl-small");
    wl.expect_running("after dump -R");
    let before = all_pids();
    let pidfile = env.path("restore.pid");
    let run = env.restore(&img, &pidfile, &[]);
    run.expect_clear_failure("restore over a running pid", &[&wl.root_pid().to_string()]);
    std::thread::sleep(Duration::from_millis(100));
    let left = new_processes(&before, &wl.dir.to_string_lossy());
    assert!(
        left.is_empty(),
        "the failed restore left processes behind:\n{}",
        left.join("\n")
    );
    expect_unharmed(&mut wl, "original after a refused restore");
}

/// Waits until `pid` sleeps in vfork: uninterruptible, with a child.
fn wait_in_vfork(pid: i32) -> i32 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
        let child = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok());
        if let (Some('D'), Some(c)) = (state, child) {
            return c;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} did not enter vfork (state {state:?})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn dump_in_vfork_refused_by_name() {
    // The root sits in vfork while its child sleeps 6 s before exec: it
    // cannot reach a ptrace stop, so the dump must give up after --timeout
    // naming the pid, the vfork and the child, and leave both running.
    let Some(env) = Env::setup("dump_in_vfork_refused_by_name") else {
        return;
    };
    let mut wl = Workload::start(
        &env,
        env!("CARGO_BIN_EXE_wl-small"),
        &["vfork", "6000", "exec"],
        &[],
    );
    let child = wait_in_vfork(wl.root_pid());
    let img = env.dir("images");
    let t0 = std::time::Instant::now();
    let run = env.dump(wl.root_pid(), &img, &["--timeout", "1"]);
    let took = t0.elapsed();
    run.expect_clear_failure(
        "dump of a process in vfork",
        &[&wl.root_pid().to_string(), "vfork", &child.to_string()],
    );
    for name in [wl.root_pid().to_string(), "vfork".into(), child.to_string()] {
        assert!(
            mentions(&run.stderr, &name),
            "the refusal should name {name}: {}",
            run.describe()
        );
    }
    assert!(took < Duration::from_secs(4), "refusal took {took:?}");
    expect_untraced(child, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("vfork child {child} after the refused dump: {e}"));
    assert!(
        !img.join("inventory.img").exists(),
        "a refused dump must not leave inventory.img"
    );
    // The child execs, the root returns from vfork, verifies and exits.
    expect_unharmed(&mut wl, "after a dump refused in vfork");
}

#[test]
fn dump_waits_for_vfork_child() {
    // The child leaves vfork (exits) after 300 ms: the dump waits for the
    // root's stop, then dumps and restores it.
    let Some(env) = Env::setup("dump_waits_for_vfork_child") else {
        return;
    };
    let mut wl = Workload::start(
        &env,
        env!("CARGO_BIN_EXE_wl-small"),
        &["vfork", "300", "exit"],
        &[],
    );
    wait_in_vfork(wl.root_pid());
    let img = env.dir("images");
    env.dump(wl.root_pid(), &img, &[])
        .expect_success("dump of a process in vfork for 300 ms");
    wl.expect_killed_and_reap();
    wl.restore_from(&env, &img, &[]);
    wl.verify_and_finish("after restore of a former vfork parent");
}

/// A cgroup2 cgroup this test creates, removed on drop (killing what is
/// left in it).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn create(name: &str) -> Option<TestCgroup> {
        let mi = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mnt = mi
            .lines()
            .find(|l| l.contains(" - cgroup2 "))
            .and_then(|l| l.split(' ').nth(4))?
            .to_string();
        let p = PathBuf::from(mnt).join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir(&p);
        fs::create_dir(&p).ok()?;
        p.join("cgroup.freeze").exists().then_some(TestCgroup(p))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::write(self.0.join("cgroup.freeze"), "0");
        let _ = fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while fs::read_to_string(self.0.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
fn dump_in_vfork_frozen_cgroup() {
    // With --freeze-cgroup the vfork child is frozen too and can never exec
    // while the parent waits for it: the dump thaws the cgroup when the
    // parent is slow to stop, waits for the exec and dumps (-R); the cgroup
    // is left thawed and the target unharmed.
    let Some(env) = Env::setup("dump_in_vfork_frozen_cgroup") else {
        return;
    };
    let Some(cg) = TestCgroup::create("stasis-perf-vfork") else {
        say("dump_in_vfork_frozen_cgroup: skipped: no cgroup2 freezer");
        return;
    };
    let mut wl = Workload::start(
        &env,
        env!("CARGO_BIN_EXE_wl-small"),
        &["vfork", "1500", "exec"],
        &[],
    );
    let child = wait_in_vfork(wl.root_pid());
    for p in [wl.root_pid(), child] {
        fs::write(cg.0.join("cgroup.procs"), p.to_string()).expect("move into the test cgroup");
    }
    let img = env.dir("images");
    let run = env.dump(
        wl.root_pid(),
        &img,
        &["-R", "--freeze-cgroup", cg.0.to_str().unwrap()],
    );
    run.expect_success("dump of a vfork parent in a frozen cgroup");
    let ev = fs::read_to_string(cg.0.join("cgroup.events")).unwrap();
    assert!(ev.contains("frozen 0"), "cgroup left frozen: {ev}");
    expect_unharmed(&mut wl, "after a dump in vfork with --freeze-cgroup");
}
