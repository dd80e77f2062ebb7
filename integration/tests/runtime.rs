//! `stasis` as a runc-compatible OCI runtime, on a busybox-static bundle the
//! tests build: lifecycle, run, exec (plain and with a terminal through a
//! console socket), pause/resume, signals and exit codes, bad input; then
//! under podman (`--runtime`) and containerd (`ctr run --runc-binary`).
//! Every container is removed at the end of its test, cgroups included.

use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

use stasis_integration::harness::{say, Env};
use stasis_integration::stack::{
    bundle, jq, no_leftovers, recv_fd, sh, sh_bundle, tick, uniq, wait_until, Containerd, Podman,
    PodmanRuntime, Rt, CG2, TICKER_ARGS,
};

#[test]
fn runtime_lifecycle() {
    let Some(env) = Env::setup("runtime_lifecycle") else {
        return;
    };
    let rt = Rt::new(&env);
    let b = bundle(&env, "b", TICKER_ARGS);
    let id = uniq("life");
    let pidf = env.path("init.pid");
    rt.ok(&[
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pidf.to_str().unwrap(),
        &id,
    ]);
    let pid: i32 = std::fs::read_to_string(&pidf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(rt.status(&id), "created");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(tick(&b.join("rootfs")), 0, "the program ran before start");
    let l = rt.ok(&["list"]);
    assert!(
        l.stdout.starts_with("ID ") && l.stdout.contains(&id) && l.stdout.contains("created"),
        "{}",
        l.stdout
    );
    rt.ok(&["start", &id]);
    assert_eq!(rt.status(&id), "running");
    wait_until("the counter", Duration::from_secs(10), || {
        tick(&b.join("rootfs")) >= 2
    });
    let ps = rt.ok(&["ps", "--format", "json", &id]);
    assert!(
        ps.stdout.contains(&pid.to_string()),
        "ps -f json {}: {}",
        pid,
        ps.stdout
    );
    let ps = rt.ok(&["ps", &id]);
    assert!(
        ps.stdout.contains("PID") && ps.stdout.contains("tick"),
        "{}",
        ps.stdout
    );
    let lj = rt.ok(&["list", "-f", "json"]);
    assert!(
        lj.stdout.contains(&format!("\"id\":\"{id}\""))
            && lj.stdout.contains("\"status\":\"running\""),
        "{}",
        lj.stdout
    );
    assert_eq!(rt.ok(&["list", "-q"]).stdout.trim(), id);
    // A running container cannot be deleted without --force.
    let d = rt.run(&["delete", &id]);
    assert!(
        !d.success() && d.stderr.contains("not stopped"),
        "{}",
        d.describe()
    );
    // sh as pid 1 ignores SIGTERM; SIGKILL stops it.
    rt.ok(&["kill", &id, "TERM"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(rt.status(&id), "running");
    rt.ok(&["kill", &id, "KILL"]);
    wait_until("stopped", Duration::from_secs(10), || {
        rt.status(&id) == "stopped"
    });
    let k = rt.run(&["kill", &id, "KILL"]);
    assert!(
        !k.success() && k.stderr.contains("container not running"),
        "{}",
        k.describe()
    );
    rt.ok(&["delete", &id]);
    let s = rt.run(&["state", &id]);
    assert!(
        !s.success() && s.stderr.contains("container does not exist"),
        "{}",
        s.describe()
    );
    no_leftovers(&id, pid);
}

#[test]
fn runtime_run_detached_and_exec() {
    let Some(env) = Env::setup("runtime_run_detached_and_exec") else {
        return;
    };
    let rt = Rt::new(&env);
    let b = bundle(&env, "b", TICKER_ARGS);
    let id = uniq("exec");
    rt.ok(&["run", "-d", "--bundle", b.to_str().unwrap(), &id]);
    assert_eq!(rt.status(&id), "running");
    let r = rt.run(&[
        "exec",
        "--env",
        "X=hello",
        "--cwd",
        "/tmp",
        &id,
        "sh",
        "-c",
        "echo $X $(pwd) $(hostname); cat /proc/1/cmdline; exit 7",
    ]);
    assert_eq!(
        r.status.code(),
        Some(7),
        "exit code of exec: {}",
        r.describe()
    );
    assert!(r.stdout.contains("hello /tmp runc"), "{}", r.describe());
    assert!(
        r.stdout.contains("while true"),
        "exec does not see the container's pid 1: {}",
        r.describe()
    );
    // Detached, with a pid file; the process is in the container's cgroup.
    let pf = env.path("exec.pid");
    rt.ok(&[
        "exec",
        "-d",
        "--pid-file",
        pf.to_str().unwrap(),
        &id,
        "sleep",
        "1000",
    ]);
    let epid: i32 = std::fs::read_to_string(&pf)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pids = rt.ok(&["ps", "-f", "json", &id]).stdout;
    assert!(
        pids.contains(&epid.to_string()),
        "exec -d pid {epid} not in {pids}"
    );
    // With a terminal: the master arrives on our console socket.
    let sock = env.path("console.sock");
    let l = UnixListener::bind(&sock).unwrap();
    l.set_nonblocking(true).unwrap();
    let root = rt.root.to_str().unwrap().to_string();
    let child = env.spawn_stasis(&[
        "--root",
        &root,
        "exec",
        "--tty",
        "--console-socket",
        sock.to_str().unwrap(),
        &id,
        "sh",
        "-c",
        "tty; echo tty-ok; exit 3",
    ]);
    let mut conn = None;
    wait_until(
        "the console socket connection",
        Duration::from_secs(20),
        || {
            conn = l.accept().ok().map(|c| c.0);
            conn.is_some()
        },
    );
    let master = recv_fd(conn.as_ref().unwrap());
    let mut out = String::new();
    let mut f = master;
    let mut buf = [0u8; 4096];
    let t = Instant::now();
    while !out.contains("tty-ok") && t.elapsed() < Duration::from_secs(20) {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    }
    let r = child.wait(Duration::from_secs(30));
    assert!(
        out.contains("/dev/pts/") && out.contains("tty-ok"),
        "terminal output {out:?}; {}",
        r.describe()
    );
    assert_eq!(r.status.code(), Some(3), "{}", r.describe());
    let pid: i32 = rt
        .ok(&["ps", "-f", "json", &id])
        .stdout
        .trim_matches(|c| c == '[' || c == ']' || c == '\n')
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    rt.ok(&["delete", "--force", &id]);
    no_leftovers(&id, pid);
    no_leftovers(&id, epid);
}

#[test]
fn runtime_pause_resume() {
    let Some(env) = Env::setup("runtime_pause_resume") else {
        return;
    };
    let rt = Rt::new(&env);
    let b = bundle(&env, "b", TICKER_ARGS);
    let id = uniq("pause");
    rt.ok(&["run", "-d", "--bundle", b.to_str().unwrap(), &id]);
    wait_until("the counter", Duration::from_secs(10), || {
        tick(&b.join("rootfs")) >= 2
    });
    rt.ok(&["pause", &id]);
    assert_eq!(rt.status(&id), "paused");
    let e = rt.run(&["exec", &id, "true"]);
    assert!(
        !e.success() && e.stderr.contains("paused"),
        "{}",
        e.describe()
    );
    let a = tick(&b.join("rootfs"));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(tick(&b.join("rootfs")), a, "the counter moved while paused");
    rt.ok(&["resume", &id]);
    assert_eq!(rt.status(&id), "running");
    wait_until("the counter to continue", Duration::from_secs(10), || {
        tick(&b.join("rootfs")) >= a + 2
    });
    let r = rt.run(&["resume", &id]);
    assert!(
        !r.success() && r.stderr.contains("not paused"),
        "{}",
        r.describe()
    );
    let st = rt.ok(&["events", "--stats", &id]);
    assert!(
        st.stdout.contains("\"type\":\"stats\"") && st.stdout.contains("\"pids\""),
        "{}",
        st.stdout
    );
    // kill --all through cgroup.kill, also while paused.
    rt.ok(&["pause", &id]);
    rt.ok(&["kill", "--all", &id, "KILL"]);
    wait_until("stopped", Duration::from_secs(10), || {
        rt.status(&id) == "stopped"
    });
    rt.ok(&["delete", &id]);
    no_leftovers(&id, 0);
}

#[test]
fn runtime_exit_codes_and_signals() {
    let Some(env) = Env::setup("runtime_exit_codes_and_signals") else {
        return;
    };
    let rt = Rt::new(&env);
    let b = sh_bundle(&env, "b", "exit 3");
    let id = uniq("exit");
    let r = rt.run(&["run", "--bundle", b.to_str().unwrap(), &id]);
    assert_eq!(r.status.code(), Some(3), "{}", r.describe());
    assert!(
        rt.run(&["state", &id]).stderr.contains("does not exist"),
        "run did not delete the container"
    );
    no_leftovers(&id, 0);
    // A signal to `stasis run` goes to the container's process.
    let b2 = sh_bundle(
        &env,
        "b2",
        "trap 'exit 42' TERM; echo up >/tmp/up; while true; do sleep 0.1; done",
    );
    let id2 = uniq("sig");
    let root = rt.root.to_str().unwrap().to_string();
    let child = env.spawn_stasis(&[
        "--root",
        &root,
        "run",
        "--bundle",
        b2.to_str().unwrap(),
        &id2,
    ]);
    wait_until("the container", Duration::from_secs(20), || {
        b2.join("rootfs/tmp/up").exists()
    });
    let pid = child.child.id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let r = child.wait(Duration::from_secs(30));
    assert_eq!(r.status.code(), Some(42), "{}", r.describe());
    // Killed by a signal: 128 + N.
    let b3 = sh_bundle(
        &env,
        "b3",
        "echo up >/tmp/up; while true; do sleep 0.1; done",
    );
    let id3 = uniq("kill");
    let child = env.spawn_stasis(&[
        "--root",
        &root,
        "run",
        "--bundle",
        b3.to_str().unwrap(),
        &id3,
    ]);
    wait_until("the container", Duration::from_secs(20), || {
        b3.join("rootfs/tmp/up").exists()
    });
    rt.ok(&["kill", &id3, "KILL"]);
    let r = child.wait(Duration::from_secs(30));
    assert_eq!(r.status.code(), Some(137), "{}", r.describe());
    no_leftovers(&id2, 0);
    no_leftovers(&id3, 0);
}

#[test]
fn runtime_bad_input() {
    let Some(env) = Env::setup("runtime_bad_input") else {
        return;
    };
    let rt = Rt::new(&env);
    let b = bundle(&env, "b", TICKER_ARGS);
    let bs = b.to_str().unwrap();
    let id = uniq("bad");
    let expect_fail = |args: &[&str], words: &[&str]| {
        let r = rt.run(args);
        rt.expect_clean_failure(&r, &id, words);
    };
    // Invalid config: the field is named.
    let cfg = b.join("config.json");
    let good = std::fs::read(&cfg).unwrap();
    jq(&cfg, ".process.args = \"sh\"");
    expect_fail(&["create", "--bundle", bs, &id], &["process.args"]);
    jq(&cfg, ".linux.namespaces[0].type = \"bogus\"");
    std::fs::write(&cfg, &good).unwrap();
    jq(&cfg, ".linux.namespaces[0].type = \"bogus\"");
    expect_fail(
        &["create", "--bundle", bs, &id],
        &["linux.namespaces[0].type"],
    );
    std::fs::write(&cfg, &good).unwrap();
    // Missing rootfs.
    jq(&cfg, ".root.path = \"nope\"");
    expect_fail(&["create", "--bundle", bs, &id], &["rootfs", "nope"]);
    std::fs::write(&cfg, &good).unwrap();
    // A program that does not exist: create fails, nothing is left.
    jq(&cfg, ".process.args = [\"/bin/no-such-program\"]");
    expect_fail(&["create", "--bundle", bs, &id], &["no-such-program"]);
    std::fs::write(&cfg, &good).unwrap();
    // Unknown id.
    for cmd in ["state", "start", "kill", "delete", "pause", "resume", "ps"] {
        expect_fail(&[cmd, &id], &["container does not exist"]);
    }
    rt.ok(&["delete", "--force", &id]);
    // Duplicate id.
    rt.ok(&["create", "--bundle", bs, &id]);
    let r = rt.run(&["create", "--bundle", bs, &id]);
    assert!(
        !r.success() && r.stderr.contains("already exists"),
        "{}",
        r.describe()
    );
    assert_eq!(
        rt.status(&id),
        "created",
        "the first container must survive"
    );
    rt.ok(&["delete", &id]);
    no_leftovers(&id, 0);
    // --systemd-cgroup is refused clearly.
    let r = rt.run(&["--systemd-cgroup", "create", "--bundle", bs, &id]);
    assert!(
        !r.success() && r.stderr.contains("systemd-cgroup"),
        "{}",
        r.describe()
    );
    // Probes podman makes.
    rt.ok(&["checkpoint", "--help"]);
    let r = rt.run(&["restore", "--lsm-mount-context"]);
    assert!(
        !r.success() && r.stderr.contains("flag needs an argument"),
        "{}",
        r.describe()
    );
    // A repeated flag is accepted (podman passes --leave-running twice).
    let r = rt.run(&["checkpoint", "--leave-running", "--leave-running", &id]);
    assert!(
        !r.success() && r.stderr.contains("container does not exist"),
        "{}",
        r.describe()
    );
}

// ---- podman and containerd ----

#[test]
fn runtime_under_podman() {
    let Some(env) = Env::setup("runtime_under_podman") else {
        return;
    };
    let Some(pm) = Podman::new(
        &env,
        "runtime_under_podman",
        PodmanRuntime::Stasis(&env.bin),
    ) else {
        return;
    };
    let b = bundle(&env, "b", TICKER_ARGS);
    let image = pm.load_busybox(&env, &b.join("rootfs"));
    let name = uniq("pod");
    let t = Instant::now();
    pm.ok(&["run", "-d", "--name", &name, image]);
    say(&format!("podman run -d with stasis: {:?}", t.elapsed()));
    std::thread::sleep(Duration::from_secs(1));
    let out = pm.ok(&["exec", &name, "sh", "-c", "cat /tmp/tick; echo exec-ok"]);
    assert!(out.contains("exec-ok"), "{out}");
    assert_eq!(pm.status(&name), "running");
    let rt = pm.dir.join("rt");
    let stasis = env.bin.display().to_string();
    let state = sh(
        "stasis list",
        &format!("{stasis} --root {} list -q", rt.display()),
    );
    assert!(
        !state.trim().is_empty(),
        "the container is not in stasis's state dir"
    );
    pm.ok(&["stop", "-t", "1", &name]);
    let st = pm.status(&name);
    assert!(st == "exited" || st == "stopped", "{st}");
    pm.ok(&["rm", &name]);
    let left = sh(
        "stasis list",
        &format!("{stasis} --root {} list -q", rt.display()),
    );
    assert!(left.trim().is_empty(), "state left after podman rm: {left}");
}

#[test]
fn runtime_under_containerd() {
    let Some(env) = Env::setup("runtime_under_containerd") else {
        return;
    };
    let Some(mut cd) = Containerd::start(&env, "runtime_under_containerd", "ctrd") else {
        return;
    };
    let b = bundle(&env, "b", TICKER_ARGS);
    let image = cd.import_busybox(&env, &b.join("rootfs"));
    let id = cd.id("ctr");
    let ns = cd.ns.clone();
    let stasis = env.bin.display().to_string();
    cd.sh(
        "ctr run -d",
        &format!("$C run -d --runc-binary {stasis} {image} {id} </dev/null >/dev/null 2>&1"),
    );
    let tasks = cd.sh("ctr task ls", "sleep 1; $C task ls");
    assert!(tasks.contains(&id) && tasks.contains("RUNNING"), "{tasks}");
    let out = cd.sh(
        "ctr task exec",
        &format!("$C task exec --exec-id e1 {id} sh -c 'cat /tmp/tick; echo exec-ok'"),
    );
    assert!(out.contains("exec-ok"), "{out}");
    let state = sh(
        "stasis state",
        &format!("{stasis} --root /run/containerd/runc/{ns} state {id}"),
    );
    assert!(state.contains("\"running\""), "{state}");
    cd.sh(
        "ctr task pause/resume",
        &format!("$C task pause {id}; $C task ls | grep -q PAUSED; $C task resume {id}"),
    );
    cd.sh(
        "ctr task kill",
        &format!("$C task kill -s KILL {id}; sleep 1; $C task rm {id}; $C c rm {id}"),
    );
    assert!(
        !Path::new(CG2).join(&ns).join(&id).exists(),
        "cgroup left behind"
    );
}
