//! `containerd-shim-stasis-v2` (runtime `io.containerd.stasis.v2`) under a
//! private containerd 1.6: `ctr run` detached, attached, with a terminal and
//! with stdin; `ctr task exec`, ps, metrics, pause/resume, kill/rm, exit
//! codes and the errors containerd sees. The shim runs the containers with
//! the stasis library in-process; no runc is involved.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use stasis_integration::harness::{say, Env};
use stasis_integration::stack::{busybox_rootfs, output_within, read_tick, text, Containerd, CG2};

const RUNTIME: &str = "io.containerd.stasis.v2";

/// The shim, built next to the `stasis` binary by `cargo build --release`.
fn shim_bin(env: &Env) -> PathBuf {
    let p = env.bin.with_file_name("containerd-shim-stasis-v2");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --release`",
        p.display()
    );
    p
}

/// A containerd with the shim installed and the busybox image imported.
fn setup(env: &Env, test: &str) -> Option<(Containerd, &'static str)> {
    let cd = Containerd::start(env, test, "ctrd")?;
    cd.install_shim(&shim_bin(env));
    let rootfs = env.dir("rootfs");
    busybox_rootfs(&rootfs);
    let image = cd.import_busybox(env, &rootfs);
    Some((cd, image))
}

/// Runs a script with `$C` set to the ctr prefix, whatever its status.
fn run(cd: &Containerd, what: &str, script: &str) -> Output {
    output_within(
        Command::new("sh").args(["-c", &format!("C='{}'; {script}", cd.ctr)]),
        what,
        Duration::from_secs(60),
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The counter the image's command keeps in /tmp/tick, read by an exec.
fn counter(cd: &Containerd, id: &str, exec_id: &str) -> u64 {
    let mut n = 0;
    let mut last = String::new();
    let v = read_tick(|| {
        // Exec ids must be unique while an exec runs: one per attempt.
        n += 1;
        last = cd.sh(
            "ctr task exec cat /tmp/tick",
            &format!("$C task exec --exec-id {exec_id}-{n} {id} cat /tmp/tick"),
        );
        last.clone()
    });
    assert!(last.trim().parse::<u64>().is_ok(), "counter {last:?}");
    v
}

fn task_status(cd: &Containerd, id: &str) -> String {
    let ls = cd.sh("ctr task ls", "$C task ls");
    ls.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_string()
}

/// Whether a shim for `id` is still running.
fn shim_alive(id: &str) -> bool {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .any(|c| {
            let c = String::from_utf8_lossy(&c);
            c.contains("containerd-shim-stasis-v2") && c.contains(id)
        })
}

#[test]
fn shim_v2_detached_lifecycle() {
    let Some(env) = Env::setup("shim_v2_detached_lifecycle") else {
        return;
    };
    let Some((mut cd, image)) = setup(&env, "shim_v2_detached_lifecycle") else {
        return;
    };
    let id = cd.id("shimd");
    let t = std::time::Instant::now();
    cd.sh(
        "ctr run -d",
        &format!("$C run -d --runtime {RUNTIME} {image} {id} </dev/null >/dev/null 2>&1"),
    );
    say(&format!(
        "ctr run -d with the stasis shim: {:?}",
        t.elapsed()
    ));
    assert_eq!(task_status(&cd, &id), "RUNNING");
    let a = counter(&cd, &id, "e1");
    std::thread::sleep(Duration::from_millis(600));
    let b = counter(&cd, &id, "e2");
    assert!(b > a, "the counter does not move: {a} then {b}");

    // The exit code of an exec reaches ctr.
    let o = run(
        &cd,
        "ctr task exec exit 7",
        &format!("$C task exec --exec-id e3 {id} sh -c 'echo out; echo err >&2; exit 7'"),
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert_eq!(stdout(&o).trim(), "out", "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("err"),
        "{}",
        text(&o)
    );

    // A signal's exit status is 128+N (an exec'd sh is no pid 1, which
    // would be immune to its own SIGKILL).
    let o = run(
        &cd,
        "ctr task exec killed",
        &format!("$C task exec --exec-id k1 {id} sh -c 'kill -9 $$'"),
    );
    assert_eq!(o.status.code(), Some(137), "{}", text(&o));

    // ps lists the init; metrics answer (cpu.stat exists without controllers).
    let ps = cd.sh("ctr task ps", &format!("$C task ps {id}"));
    let init_pid = cd.sh("ctr task ls", "$C task ls");
    assert!(ps.lines().count() >= 2, "{ps}\n{init_pid}");
    let m = cd.sh("ctr task metrics", &format!("$C task metrics {id}"));
    assert!(!m.trim().is_empty(), "{m}");

    // pause stops the counter, resume lets it go on.
    cd.sh("ctr task pause", &format!("$C task pause {id}"));
    assert_eq!(task_status(&cd, &id), "PAUSED");
    let cg = Path::new(CG2).join(&cd.ns).join(&id);
    let frozen = std::fs::read_to_string(cg.join("cgroup.freeze")).unwrap_or_default();
    assert_eq!(frozen.trim(), "1", "cgroup {} not frozen", cg.display());
    let o = run(&cd, "ctr task pause again", &format!("$C task pause {id}"));
    assert!(!o.status.success(), "pausing a paused task: {}", text(&o));
    cd.sh("ctr task resume", &format!("$C task resume {id}"));
    assert_eq!(task_status(&cd, &id), "RUNNING");
    let c = counter(&cd, &id, "e4");
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        counter(&cd, &id, "e5") > c,
        "the counter stopped after resume"
    );

    // A running task cannot be removed (failed precondition).
    let o = run(&cd, "ctr task rm running", &format!("$C task rm {id}"));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("failed precondition"),
        "{}",
        text(&o)
    );

    // kill, then the exit status is SIGKILL's, rm and the cgroup is gone.
    cd.sh("ctr task kill", &format!("$C task kill -s KILL {id}"));
    let mut st = String::new();
    for _ in 0..100 {
        st = task_status(&cd, &id);
        if st == "STOPPED" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(st, "STOPPED");
    let o = run(&cd, "ctr task kill stopped", &format!("$C task kill {id}"));
    assert!(!o.status.success(), "killing a stopped task: {}", text(&o));
    cd.sh("ctr task rm", &format!("$C task rm {id}; $C c rm {id}"));
    assert!(!cg.exists(), "cgroup {} left behind", cg.display());
    let mut gone = false;
    for _ in 0..100 {
        if !shim_alive(&id) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(gone, "the shim for {id} did not exit after rm");

    // Unknown tasks are not found.
    let o = run(&cd, "ctr task pause unknown", "$C task pause no-such-task");
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not found"),
        "{}",
        text(&o)
    );
}

#[test]
fn shim_v2_attached_stdio_and_exit_codes() {
    let Some(env) = Env::setup("shim_v2_attached_stdio_and_exit_codes") else {
        return;
    };
    let Some((mut cd, image)) = setup(&env, "shim_v2_attached_stdio_and_exit_codes") else {
        return;
    };
    // Plain pipes: stdout, stderr and the exit code.
    let id = cd.id("shima");
    let o = run(
        &cd,
        "ctr run attached",
        &format!(
            "$C run --rm --runtime {RUNTIME} {image} {id} sh -c 'echo hello; echo oops >&2; exit 3' </dev/null"
        ),
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert_eq!(stdout(&o).trim(), "hello", "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("oops"),
        "{}",
        text(&o)
    );

    // stdin reaches the process and its end (CloseIO) is an EOF.
    let id = cd.id("shimi");
    let o = run(
        &cd,
        "ctr run with stdin",
        &format!(
            "printf 'one\\ntwo\\n' | $C run --rm --runtime {RUNTIME} {image} {id} sh -c 'while read l; do echo got-$l; done; echo eof'"
        ),
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(stdout(&o), "got-one\ngot-two\neof\n", "{}", text(&o));

    // A terminal (ctr needs one itself: script gives it a pty).
    let id = cd.id("shimt");
    let o = run(
        &cd,
        "ctr run -t",
        &format!(
            "script -qec \"$C run --rm -t --runtime {RUNTIME} {image} {id} sh -c 'tty; echo term-ok; exit 5'\" /dev/null </dev/null"
        ),
    );
    let out = stdout(&o);
    assert!(
        out.contains("/dev/pts/") && out.contains("term-ok"),
        "{}",
        text(&o)
    );
    assert_eq!(o.status.code(), Some(5), "{}", text(&o));

    // exec with a terminal in a detached container.
    let id = cd.id("shimx");
    cd.sh(
        "ctr run -d",
        &format!("$C run -d --runtime {RUNTIME} {image} {id} </dev/null >/dev/null 2>&1"),
    );
    let o = run(
        &cd,
        "ctr task exec -t",
        &format!(
            "script -qec \"$C task exec -t --exec-id t1 {id} sh -c 'tty; echo exec-term-ok; exit 4'\" /dev/null </dev/null"
        ),
    );
    let out = stdout(&o);
    assert!(
        out.contains("/dev/pts/") && out.contains("exec-term-ok"),
        "{}",
        text(&o)
    );
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    cd.sh(
        "ctr task rm -f",
        &format!("$C task kill -s KILL {id}; sleep 0.3; $C task rm -f {id}; $C c rm {id}"),
    );
}

/// Waits until the counter in `id` passes `min`.
fn counter_past(cd: &Containerd, id: &str, min: u64) -> u64 {
    let mut v = 0;
    for n in 0..100 {
        v = counter(cd, id, &format!("w{n}"));
        if v > min {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("counter of {id} stuck at {v} (wanted more than {min})");
}

#[test]
fn shim_v2_checkpoint_restore() {
    let Some(env) = Env::setup("shim_v2_checkpoint_restore") else {
        return;
    };
    let Some((mut cd, image)) = setup(&env, "shim_v2_checkpoint_restore") else {
        return;
    };
    // ctr task checkpoint: pause, checkpoint (leave running), resume.
    let id = cd.id("shimck");
    cd.sh(
        "ctr run -d",
        &format!("$C run -d --runtime {RUNTIME} {image} {id} </dev/null >/dev/null 2>&1"),
    );
    counter_past(&cd, &id, 2);
    let t = std::time::Instant::now();
    let out = cd.sh("ctr task checkpoint", &format!("$C task checkpoint {id}"));
    say(&format!(
        "ctr task checkpoint (stasis shim): {:?}",
        t.elapsed()
    ));
    assert!(out.contains("containerd.io/checkpoint/"), "{out}");
    let ck = out.trim().to_string();
    let info = cd.sh("ctr images ls", "$C images ls");
    assert!(info.contains(&ck), "{info}");
    assert_eq!(task_status(&cd, &id), "RUNNING");
    let a = counter(&cd, &id, "after-ck");
    counter_past(&cd, &id, a);
    // A failed checkpoint (the image dir cannot be made) leaves the task
    // running.
    let o = run(
        &cd,
        "ctr task checkpoint (failing)",
        &format!("$C task checkpoint --image-path /proc/stasis-no-such-dir {id}"),
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(task_status(&cd, &id), "RUNNING");
    let a = counter(&cd, &id, "after-failed-ck");
    counter_past(&cd, &id, a);
    cd.sh(
        "remove the first container",
        &format!("$C task kill -s KILL {id}; sleep 0.3; $C task rm -f {id}; $C c rm {id}"),
    );

    // ctr c checkpoint --task --rw --image, then the container goes and
    // comes back with its counter.
    let id = cd.id("shimck2");
    cd.sh(
        "ctr run -d",
        &format!("$C run -d --runtime {RUNTIME} {image} {id} </dev/null >/dev/null 2>&1"),
    );
    counter_past(&cd, &id, 2);
    let ck = format!("localhost/ckpt/{id}:1");
    let t1 = counter(&cd, &id, "before");
    let t = std::time::Instant::now();
    cd.sh(
        "ctr c checkpoint",
        &format!("$C c checkpoint --task --rw --image {id} {ck}"),
    );
    say(&format!(
        "ctr c checkpoint --task (stasis shim): {:?}",
        t.elapsed()
    ));
    let tar = env.dir("export").join("ck.tar");
    cd.sh(
        "ctr images export",
        &format!(
            "$C images export --skip-manifest-json {} {ck}",
            tar.display()
        ),
    );
    cd.sh(
        "remove the container",
        &format!("$C task kill -s KILL {id}; sleep 0.3; $C task rm -f {id}; $C c rm {id}"),
    );
    let t = std::time::Instant::now();
    cd.sh(
        "ctr c restore",
        &format!("$C c restore --live --rw {id} {ck} </dev/null"),
    );
    say(&format!(
        "ctr c restore --live (stasis shim): {:?}",
        t.elapsed()
    ));
    assert_eq!(task_status(&cd, &id), "RUNNING");
    let t2 = counter(&cd, &id, "restored");
    assert!(t2 >= t1, "counter restarted: {t2} after {t1}");
    counter_past(&cd, &id, t2);
    cd.sh(
        "ctr task kill",
        &format!("$C task kill -s KILL {id}; sleep 0.5; $C task rm -f {id}; $C c rm {id}"),
    );
    let cg = Path::new(CG2).join(&cd.ns).join(&id);
    assert!(!cg.exists(), "cgroup {} left behind", cg.display());

    // Migration: the exported checkpoint restored by a second containerd
    // (own root and state) with the same namespace and id.
    let Some(mut cd2) = Containerd::start(&env, "shim_v2_checkpoint_restore", "ctrd2") else {
        return;
    };
    cd2.install_shim(&shim_bin(&env));
    let base = env.dir("img").join("busybox-oci.tar");
    cd2.sh(
        "ctr images import (base)",
        &format!(
            "$C images import --base-name localhost/busybox {}",
            base.display()
        ),
    );
    cd2.sh(
        "ctr images import (checkpoint)",
        &format!("$C images import --no-unpack {}", tar.display()),
    );
    let id2 = cd2.id("shimck2");
    assert_eq!(id2, id);
    // First a restore that fails (no cgroup can be made under the
    // namespace's cgroup, which this test owns; the checkpointed spec keeps
    // the first containerd's cgroupsPath): ctr gets the error at once and
    // the task is removed at once (runc's shim hangs here).
    let ns_cg = Path::new(CG2).join(&cd.ns);
    std::fs::create_dir_all(&ns_cg).expect("mkdir the namespace cgroup");
    std::fs::write(ns_cg.join("cgroup.max.descendants"), "0").expect("cgroup.max.descendants");
    let t = std::time::Instant::now();
    let o = run(
        &cd2,
        "ctr c restore (failing)",
        &format!("$C c restore --live --rw {id} {ck} </dev/null"),
    );
    assert!(
        !o.status.success(),
        "restore under a full cgroup: {}",
        text(&o)
    );
    std::fs::write(ns_cg.join("cgroup.max.descendants"), "max").expect("cgroup.max.descendants");
    cd2.sh(
        "ctr task rm after a failed restore",
        &format!("$C task rm -f {id}; $C c rm {id}"),
    );
    let took = t.elapsed();
    say(&format!("failed restore and its cleanup: {took:?}"));
    assert!(took < Duration::from_secs(20), "cleanup took {took:?}");
    cd2.sh(
        "ctr c restore on the second containerd",
        &format!("$C c restore --live --rw {id} {ck} </dev/null"),
    );
    assert_eq!(task_status(&cd2, &id), "RUNNING");
    let t3 = counter(&cd2, &id, "migrated");
    assert!(
        t3 >= t1,
        "counter restarted after migration: {t3} after {t1}"
    );
    counter_past(&cd2, &id, t3);
    cd2.sh(
        "ctr task kill",
        &format!("$C task kill -s KILL {id}; sleep 0.5; $C task rm -f {id}; $C c rm {id}"),
    );
}
