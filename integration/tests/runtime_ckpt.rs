//! `stasis checkpoint` and `stasis restore` as a runc-compatible runtime
//! (in-process, no runc or criu underneath): busybox bundles with and
//! without a terminal, with and without `--leave-running`; bad images;
//! then podman 4.3 (`--runtime`) and containerd 1.6's runc shim
//! (`--runc-binary`). The counter in the container must go on from where
//! it was, never restart. Every container is removed at the end.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stasis_integration::harness::{reap_zombie_children, say, Env};
use stasis_integration::stack::{
    bundle, jq, no_leftovers, read_tick, recv_fd, sh_bundle, tick, uniq, wait_until, Containerd,
    Podman, PodmanRuntime, Rt, CG2, TICKER_ARGS,
};

/// The container's init pid, from `stasis state`.
fn pid_of(rt: &Rt, id: &str) -> i32 {
    let s = rt.ok(&["state", id]).stdout;
    s.lines()
        .find_map(|l| l.trim().strip_prefix("\"pid\": "))
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no pid in the state of {id}: {s}"))
}

/// Waits until the counter in `rootfs` passes `above`; returns it.
fn ticks_past(rootfs: &Path, above: u64) -> u64 {
    let mut t = 0;
    wait_until(
        &format!("the counter past {above}"),
        Duration::from_secs(10),
        || {
            t = tick(rootfs);
            t > above
        },
    );
    t
}

/// `stasis run -d` with the container's stdio on /dev/null (a file of the
/// test's would be gone by restore time, and is not what runtimes pass).
fn run_detached(rt: &Rt, bundle: &str, id: &str) {
    let st = std::process::Command::new(&rt.env.bin)
        .arg("--root")
        .arg(&rt.root)
        .args(["run", "-d", "--bundle", bundle, id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("stasis run -d");
    assert!(st.success(), "stasis run -d {id}: {st}");
}

/// Kill and delete a container and reap its init (we are the subreaper
/// the runtime's init re-parents to), so its pid is free for a restore.
fn remove(rt: &Rt, id: &str) {
    rt.ok(&["delete", "--force", id]);
    reap_zombie_children(&[]);
}

/// A busybox counter container `name` running from a fresh bundle, past
/// its second tick: (bundle, id, tick).
fn start_ticker(env: &Env, rt: &Rt, name: &str) -> (PathBuf, String, u64) {
    let b = bundle(env, "b", TICKER_ARGS);
    let id = uniq(name);
    run_detached(rt, b.to_str().unwrap(), &id);
    let t0 = ticks_past(&b.join("rootfs"), 2);
    (b, id, t0)
}

#[test]
fn ckpt_busybox_checkpoint_restore() {
    let Some(env) = Env::setup("ckpt_busybox_checkpoint_restore") else {
        return;
    };
    let rt = Rt::new(&env);
    let (b, id, t0) = start_ticker(&env, &rt, "ck1");
    let rootfs = b.join("rootfs");
    let bs = b.to_str().unwrap();
    let pid0 = pid_of(&rt, &id);

    // Not-yet features are refused by name; the container is untouched.
    for (flags, word) in [
        (&["--page-server", "127.0.0.1:1"][..], "page server"),
        (&["--lazy-pages"][..], "lazy pages"),
        (&["--auto-dedup"][..], "auto-dedup"),
    ] {
        let img = env.path("never");
        let mut a = vec!["checkpoint", "--image-path", img.to_str().unwrap()];
        a.extend_from_slice(flags);
        a.push(&id);
        let r = rt.run(&a);
        assert!(
            !r.success() && r.stderr.contains("not supported yet") && r.stderr.contains(word),
            "{}",
            r.describe()
        );
    }
    assert_eq!(rt.status(&id), "running");

    // --leave-running (twice, as podman passes it): the container runs on.
    let (img, work) = (env.path("img"), env.path("work"));
    let c = rt.ok(&[
        "checkpoint",
        "--image-path",
        img.to_str().unwrap(),
        "--work-path",
        work.to_str().unwrap(),
        "--leave-running",
        "--leave-running",
        &id,
    ]);
    say(&format!(
        "stasis checkpoint --leave-running (busybox): {:?}",
        c.elapsed
    ));
    for f in ["inventory.img", "pstree.img", "descriptors.json"] {
        assert!(img.join(f).exists(), "{f} in the image dir");
    }
    assert!(
        work.join("stats-dump").exists(),
        "stats-dump in the work dir"
    );
    let d = std::fs::read_to_string(img.join("descriptors.json")).unwrap();
    assert!(d.starts_with('[') && d.contains("/dev/null"), "{d}");
    assert_eq!(rt.status(&id), "running");
    let t1 = ticks_past(&rootfs, t0 + 1);

    // A copy beside the running original: only the pids inside its pid
    // namespace are the dumped ones, the host pids are new.
    let id3 = uniq("ck3");
    rt.ok(&[
        "restore",
        "-d",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        bs,
        &id3,
    ]);
    let (p1, p3) = (pid_of(&rt, &id), pid_of(&rt, &id3));
    assert_ne!(p1, p3, "the copy has the original's host pid");
    assert_eq!(rt.status(&id3), "running");
    remove(&rt, &id3);
    no_leftovers(&id3, p3);
    assert_eq!(rt.status(&id), "running");
    let id2 = uniq("ck2");

    // Restore into a new container once the original is gone.
    remove(&rt, &id);
    let frozen_at = tick(&rootfs);
    let pidf = env.path("ck2.pid");
    let r = rt.ok(&[
        "restore",
        "--detach",
        "--image-path",
        img.to_str().unwrap(),
        "--work-path",
        env.path("work2").to_str().unwrap(),
        "--pid-file",
        pidf.to_str().unwrap(),
        "--bundle",
        bs,
        &id2,
    ]);
    say(&format!("stasis restore (busybox): {:?}", r.elapsed));
    let pid2 = pid_of(&rt, &id2);
    assert_eq!(
        std::fs::read_to_string(&pidf).unwrap().trim(),
        pid2.to_string()
    );
    assert_eq!(rt.status(&id2), "running");
    // The image was taken at >= t1 - 1; the counter continues, no reset.
    let t2 = ticks_past(&rootfs, frozen_at);
    assert!(
        t2 >= t1.min(frozen_at),
        "counter restarted: {t2} after {t1}"
    );
    let ps = rt.ok(&["ps", "--format", "json", &id2]).stdout;
    assert!(ps.contains(&pid2.to_string()), "{ps}");
    assert!(
        Path::new(CG2).join(&id2).join("cgroup.procs").exists(),
        "the restored container has its cgroup"
    );
    let e = rt.ok(&["exec", &id2, "cat", "/tmp/tick"]);
    assert!(!e.stdout.trim().is_empty(), "{}", e.describe());

    // Without --leave-running: the container is gone afterwards, and a
    // paused one is checkpointed too.
    rt.ok(&["pause", &id2]);
    let img2 = env.path("img2");
    let c = rt.ok(&["checkpoint", "--image-path", img2.to_str().unwrap(), &id2]);
    say(&format!(
        "stasis checkpoint (busybox, paused): {:?}",
        c.elapsed
    ));
    // The dumped tree is gone at once (a pid namespace's init exits only
    // once the dumper has taken its children's exits).
    assert!(
        c.elapsed < Duration::from_secs(5),
        "checkpoint took {:?}",
        c.elapsed
    );
    assert!(
        rt.run(&["state", &id2]).stderr.contains("does not exist"),
        "checkpoint without --leave-running must destroy the container"
    );
    reap_zombie_children(&[]);
    no_leftovers(&id2, pid2);
    let stopped = tick(&rootfs);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        tick(&rootfs),
        stopped,
        "the checkpointed container still runs"
    );
    let r = rt.ok(&[
        "restore",
        "-d",
        "--image-path",
        img2.to_str().unwrap(),
        "--bundle",
        bs,
        &id2,
    ]);
    say(&format!("stasis restore (busybox, again): {:?}", r.elapsed));
    let t3 = ticks_past(&rootfs, stopped);
    assert!(t3 > stopped, "counter restarted: {t3} after {stopped}");
    let pid3 = pid_of(&rt, &id2);
    rt.ok(&["delete", "--force", &id2]);
    reap_zombie_children(&[]);
    no_leftovers(&id2, pid3);
    no_leftovers(&id, pid0);
}

/// Collects what a pty master shows, on a thread.
fn reader(mut master: std::fs::File) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let o = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            o.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

/// The highest `tick-N` a terminal showed.
fn last_tty_tick(out: &Arc<Mutex<String>>) -> u64 {
    out.lock()
        .unwrap()
        .split("tick-")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The pty master `stasis ARGS --console-socket SOCK` sends.
fn console(env: &Env, rt: &Rt, sock: &Path, args: &[&str]) -> std::fs::File {
    let l = UnixListener::bind(sock).unwrap();
    l.set_nonblocking(true).unwrap();
    let root = rt.root.to_str().unwrap().to_string();
    let mut a = vec!["--root", root.as_str()];
    a.extend_from_slice(args);
    let child = env.spawn_stasis(&a);
    let mut conn = None;
    wait_until(
        "the console socket connection",
        Duration::from_secs(30),
        || {
            conn = l.accept().ok().map(|c| c.0);
            conn.is_some()
        },
    );
    let master = recv_fd(conn.as_ref().unwrap());
    let r = child.wait(Duration::from_secs(60));
    r.expect_success(&format!("stasis {}", args.join(" ")));
    say(&format!("stasis {}: {:?}", args[0], r.elapsed));
    master
}

#[test]
fn ckpt_terminal_checkpoint_restore() {
    let Some(env) = Env::setup("ckpt_terminal_checkpoint_restore") else {
        return;
    };
    let rt = Rt::new(&env);
    let b = sh_bundle(
        &env,
        "b",
        "i=0; while true; do i=$((i+1)); echo $i >/tmp/tick; echo tick-$i; sleep 0.2; done",
    );
    jq(&b.join("config.json"), ".process.terminal=true");
    let rootfs = b.join("rootfs");
    let bs = b.to_str().unwrap();
    let id = uniq("ckt");
    let s1 = env.path("c1.sock");
    let m1 = console(
        &env,
        &rt,
        &s1,
        &[
            "run",
            "-d",
            "--console-socket",
            s1.to_str().unwrap(),
            "--bundle",
            bs,
            &id,
        ],
    );
    let out1 = reader(m1);
    wait_until("ticks on the terminal", Duration::from_secs(10), || {
        last_tty_tick(&out1) >= 3
    });
    let pid0 = pid_of(&rt, &id);
    let img = env.path("img");
    let c = rt.ok(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    say(&format!("stasis checkpoint (terminal): {:?}", c.elapsed));
    let d = std::fs::read_to_string(img.join("descriptors.json")).unwrap();
    assert!(d.contains("/dev/pts/"), "stdio is the container's pty: {d}");
    reap_zombie_children(&[]);
    no_leftovers(&id, pid0);
    let before = tick(&rootfs);
    let s2 = env.path("c2.sock");
    let m2 = console(
        &env,
        &rt,
        &s2,
        &[
            "restore",
            "-d",
            "--console-socket",
            s2.to_str().unwrap(),
            "--image-path",
            img.to_str().unwrap(),
            "--bundle",
            bs,
            &id,
        ],
    );
    let out2 = reader(m2);
    // The restored shell writes on the new master, counting on.
    wait_until(
        "ticks on the restored terminal",
        Duration::from_secs(10),
        || last_tty_tick(&out2) > before,
    );
    assert!(
        !out2.lock().unwrap().contains("tick-1\r"),
        "the counter restarted: {}",
        out2.lock().unwrap()
    );
    assert_eq!(rt.status(&id), "running");
    let pid = pid_of(&rt, &id);
    rt.ok(&["delete", "--force", &id]);
    reap_zombie_children(&[]);
    no_leftovers(&id, pid);
}

#[test]
fn ckpt_restore_bad_images() {
    let Some(env) = Env::setup("ckpt_restore_bad_images") else {
        return;
    };
    let rt = Rt::new(&env);
    let b = bundle(&env, "b", TICKER_ARGS);
    let bs = b.to_str().unwrap();
    let id = uniq("ckbad");
    let expect_fail = |img: &Path, words: &[&str]| {
        let r = rt.run(&[
            "restore",
            "-d",
            "--image-path",
            img.to_str().unwrap(),
            "--bundle",
            bs,
            &id,
        ]);
        rt.expect_clean_failure(&r, &id, words);
    };
    let missing = env.path("no-such-images");
    expect_fail(&missing, &["no-such-images", "No such file"]);
    let empty = env.dir("empty");
    expect_fail(&empty, &["inventory.img"]);

    // Real images of a plain (non-container) process: no descriptors.json.
    let img = env.dir("plain");
    let mut sleeper = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let d = env.dump(sleeper.id() as i32, &img, &[]);
    d.expect_success("stasis dump of a sleep");
    let _ = sleeper.wait();
    expect_fail(&img, &["descriptors.json"]);

    // A container checkpoint with a broken image: the engine fails after
    // the container's cgroup and state dir were made; both go.
    let c = uniq("ckbad-src");
    run_detached(&rt, bs, &c);
    ticks_past(&b.join("rootfs"), 1);
    let cimg = env.path("cimg");
    rt.ok(&["checkpoint", "--image-path", cimg.to_str().unwrap(), &c]);
    reap_zombie_children(&[]);
    std::fs::write(cimg.join("pstree.img"), b"garbage").unwrap();
    expect_fail(&cimg, &["pstree.img"]);
    // A restore into the id of a running container: refused, it runs on.
    let dup = uniq("ckdup");
    run_detached(&rt, bs, &dup);
    let r = rt.run(&[
        "restore",
        "-d",
        "--image-path",
        cimg.to_str().unwrap(),
        "--bundle",
        bs,
        &dup,
    ]);
    assert!(
        !r.success() && r.stderr.contains("already exists"),
        "{}",
        r.describe()
    );
    assert_eq!(rt.status(&dup), "running");
    let dpid = pid_of(&rt, &dup);
    rt.ok(&["delete", "--force", &dup]);
    reap_zombie_children(&[]);
    no_leftovers(&dup, dpid);
    // Flags that need missing engine features are refused by name.
    let r = rt.run(&[
        "restore",
        "--lsm-profile",
        "apparmor:x",
        "--image-path",
        cimg.to_str().unwrap(),
        "--bundle",
        bs,
        &id,
    ]);
    assert!(
        !r.success() && r.stderr.contains("not supported yet"),
        "{}",
        r.describe()
    );
    no_leftovers(&id, 0);
    no_leftovers(&c, 0);
}

// ---- podman and containerd ----

/// The counter inside a podman container.
#[test]
fn ckpt_under_podman() {
    let Some(env) = Env::setup("ckpt_under_podman") else {
        return;
    };
    let Some(pm) = Podman::new(&env, "ckpt_under_podman", PodmanRuntime::Stasis(&env.bin)) else {
        return;
    };
    let b = bundle(&env, "b", TICKER_ARGS);
    let image = pm.load_busybox(&env, &b.join("rootfs"));
    let name = uniq("pck");
    // podman's default seccomp profile: its filter is dumped and restored.
    pm.ok(&["run", "-d", "--name", &name, image]);
    assert_eq!(pm.init_seccomp(&name), "2", "the container runs filtered");
    wait_until("the counter", Duration::from_secs(20), || {
        pm.tick(&name) >= 3
    });
    let t = Instant::now();
    pm.ok(&["container", "checkpoint", &name]);
    say(&format!(
        "podman container checkpoint (stasis): {:?}",
        t.elapsed()
    ));
    let st = pm.status(&name);
    assert!(st == "exited" || st == "stopped", "after checkpoint: {st}");
    reap_zombie_children(&[]);
    let t = Instant::now();
    let out = pm.ok(&["container", "restore", "--print-stats", &name]);
    assert!(
        out.contains("runtime_restore_duration"),
        "--print-stats: {out}"
    );
    say(&format!(
        "podman container restore (stasis): {:?}",
        t.elapsed()
    ));
    assert_eq!(pm.status(&name), "running");
    assert_eq!(pm.init_seccomp(&name), "2", "the filter is back");
    let t1 = pm.tick(&name);
    assert!(t1 >= 3, "counter restarted after restore: {t1}");
    wait_until("the counter to go on", Duration::from_secs(10), || {
        pm.tick(&name) > t1
    });

    // Export, then import into a new container.
    let export = env.path("export.tar.gz");
    let out = pm.ok(&[
        "container",
        "checkpoint",
        "--print-stats",
        "--export",
        export.to_str().unwrap(),
        &name,
    ]);
    assert!(
        out.contains("criu_statistics") && out.contains("pages_written"),
        "--print-stats shows our stats-dump: {out}"
    );
    assert!(
        std::fs::metadata(&export).is_ok_and(|m| m.len() > 0),
        "--export wrote {}",
        export.display()
    );
    reap_zombie_children(&[]);
    let name2 = uniq("pck2");
    pm.ok(&[
        "container",
        "restore",
        "--import",
        export.to_str().unwrap(),
        "--name",
        &name2,
    ]);
    assert_eq!(pm.status(&name2), "running");
    let t2 = pm.tick(&name2);
    assert!(t2 > t1, "counter restarted in the imported container: {t2}");
    wait_until(
        "the imported counter to go on",
        Duration::from_secs(10),
        || pm.tick(&name2) > t2,
    );
    pm.ok(&["rm", "-f", &name2]);
    pm.ok(&["rm", "-f", &name]);
}

#[test]
fn ckpt_under_containerd() {
    let Some(env) = Env::setup("ckpt_under_containerd") else {
        return;
    };
    let Some(mut cd) = Containerd::start(&env, "ckpt_under_containerd", "ckctrd") else {
        return;
    };
    let b = bundle(&env, "b", TICKER_ARGS);
    let image = cd.import_busybox(&env, &b.join("rootfs"));
    let id = cd.id("cck");
    let stasis = env.bin.display().to_string();
    cd.sh(
        "ctr run -d",
        &format!("$C run -d --runc-binary {stasis} {image} {id} </dev/null >/dev/null 2>&1"),
    );
    let tick_of = |cd: &Containerd, id: &str| -> u64 {
        read_tick(|| {
            cd.sh(
                "ctr task exec",
                &format!("$C task exec --exec-id t$(date +%s%N) {id} cat /tmp/tick"),
            )
        })
    };
    wait_until("the counter", Duration::from_secs(20), || {
        tick_of(&cd, &id) >= 3
    });
    // ctr task checkpoint: pause, checkpoint --leave-running, resume.
    let t = Instant::now();
    let out = cd.sh("ctr task checkpoint", &format!("$C task checkpoint {id}"));
    say(&format!("ctr task checkpoint (stasis): {:?}", t.elapsed()));
    assert!(out.contains("containerd.io/checkpoint/"), "{out}");
    let tasks = cd.sh("ctr task ls", "$C task ls");
    assert!(tasks.contains(&id) && tasks.contains("RUNNING"), "{tasks}");
    let t0 = tick_of(&cd, &id);
    wait_until(
        "the counter after the checkpoint",
        Duration::from_secs(10),
        || tick_of(&cd, &id) > t0,
    );
    cd.sh(
        "remove the first container",
        &format!("$C task kill -s KILL {id}; sleep 0.5; $C task rm -f {id}; $C c rm {id}"),
    );
    reap_zombie_children(&[]);
    // A restorable checkpoint of another container (ctr 1.6 fails to store
    // a checkpoint whose spec blob another checkpoint stored already): then
    // the container goes and comes back.
    let id = cd.id("cck2");
    cd.sh(
        "ctr run -d",
        &format!("$C run -d --runc-binary {stasis} {image} {id} </dev/null >/dev/null 2>&1"),
    );
    wait_until("the counter", Duration::from_secs(20), || {
        tick_of(&cd, &id) >= 3
    });
    let ck = format!("localhost/ckpt/{id}:1");
    // The image holds at least this value (the task runs on after it).
    let t1 = tick_of(&cd, &id);
    let t = Instant::now();
    cd.sh(
        "ctr c checkpoint",
        &format!("$C c checkpoint --task --rw --image {id} {ck}"),
    );
    say(&format!(
        "ctr c checkpoint --task (stasis): {:?}",
        t.elapsed()
    ));
    cd.sh(
        "remove the container",
        &format!("$C task kill -s KILL {id}; sleep 0.5; $C task rm -f {id}; $C c rm {id}"),
    );
    reap_zombie_children(&[]);
    let t = Instant::now();
    cd.sh(
        "ctr c restore",
        &format!("$C c restore --live --rw {id} {ck} </dev/null"),
    );
    say(&format!("ctr c restore --live (stasis): {:?}", t.elapsed()));
    let tasks = cd.sh("ctr task ls", "$C task ls");
    assert!(tasks.contains(&id) && tasks.contains("RUNNING"), "{tasks}");
    let t2 = tick_of(&cd, &id);
    assert!(t2 >= t1, "counter restarted: {t2} after {t1}");
    wait_until("the restored counter", Duration::from_secs(10), || {
        tick_of(&cd, &id) > t2
    });
    cd.sh(
        "ctr task kill",
        &format!("$C task kill -s KILL {id}; sleep 1; $C task rm -f {id}; $C c rm {id}"),
    );
    assert!(
        !Path::new(CG2).join(&cd.ns).join(&id).exists(),
        "cgroup left behind"
    );
}

/// runc's iterative migration: `--pre-dump` saves the memory while the
/// container runs on and tracks what it writes; the checkpoint on top
/// (`--parent-path`) saves only pages written since; the restore reads
/// both and the counter continues.
#[test]
fn ckpt_pre_dump_then_checkpoint() {
    let Some(env) = Env::setup("ckpt_pre_dump_then_checkpoint") else {
        return;
    };
    let rt = Rt::new(&env);
    let (b, id, t0) = start_ticker(&env, &rt, "pre1");
    let rootfs = b.join("rootfs");
    let bs = b.to_str().unwrap();
    let (pre, img) = (env.path("pre"), env.path("img"));
    rt.ok(&[
        "checkpoint",
        "--pre-dump",
        "--image-path",
        pre.to_str().unwrap(),
        &id,
    ]);
    assert_eq!(rt.status(&id), "running", "a pre-dump leaves it running");
    let t1 = ticks_past(&rootfs, t0 + 1);
    rt.ok(&[
        "checkpoint",
        "--parent-path",
        "../pre",
        "--image-path",
        img.to_str().unwrap(),
        &id,
    ]);
    assert!(
        img.join("parent").exists(),
        "the checkpoint links its parent images"
    );
    let pages = |d: &Path| -> u64 {
        std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let (full, inc) = (pages(&pre), pages(&img));
    assert!(
        inc < full,
        "the checkpoint on a pre-dump saves less: {inc} bytes of pages against {full}"
    );
    say(&format!(
        "pre-dump pages {full} bytes, checkpoint on top {inc} bytes"
    ));
    reap_zombie_children(&[]);
    let id2 = uniq("pre2");
    rt.ok(&[
        "restore",
        "-d",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        bs,
        &id2,
    ]);
    let frozen_at = tick(&rootfs);
    let t2 = ticks_past(&rootfs, frozen_at);
    assert!(t2 > t1, "counter restarted: {t2} after {t1}");
    remove(&rt, &id2);
}

/// A foreground restore (no `-d`) with `--no-subreaper`, as go-runc passes
/// it: stasis waits for the restored container, which goes on counting
/// from where it was, exits with its own status, and is deleted.
#[test]
fn ckpt_foreground_restore_no_subreaper() {
    let Some(env) = Env::setup("ckpt_foreground_restore_no_subreaper") else {
        return;
    };
    let rt = Rt::new(&env);
    let b = sh_bundle(
        &env,
        "b",
        "i=0; while [ $i -lt 25 ]; do i=$((i+1)); echo $i >/tmp/tick; sleep 0.1; done; exit 3",
    );
    let rootfs = b.join("rootfs");
    let bs = b.to_str().unwrap();
    let id = uniq("fg1");
    run_detached(&rt, bs, &id);
    let t0 = ticks_past(&rootfs, 2);
    let img = env.path("img");
    rt.ok(&["checkpoint", "--image-path", img.to_str().unwrap(), &id]);
    assert!(t0 < 25, "the counter ended before the checkpoint: {t0}");
    reap_zombie_children(&[]);
    let id2 = uniq("fg2");
    let r = rt.run(&[
        "restore",
        "-no-subreaper",
        "--image-path",
        img.to_str().unwrap(),
        "--bundle",
        bs,
        &id2,
    ]);
    assert_eq!(r.status.code(), Some(3), "{}", r.describe());
    assert_eq!(tick(&rootfs), 25, "the restored counter ran to its end");
    assert!(!rt.root.join(&id2).exists(), "state left for {id2}");
    no_leftovers(&id2, 0);
}
