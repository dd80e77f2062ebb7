//! Stock runc (Debian's 1.1.5) with `--criu <dir>/criu`, that file being
//! stasis: runc speaks swrk to us exactly as to CRIU (VERSION probe, then
//! DUMP/RESTORE at fd 3 with its images and work dir fds, notifications).
//!
//! The container is the busybox bundle of CONTAINER-LAB.md §1 (pid, net,
//! ipc, uts and mount namespaces; no seccomp). Names are unique per run and
//! everything runc created is killed and deleted afterwards.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stasis_integration::harness::{reap_zombie_children, Env};
use stasis_integration::stack::{busybox_rootfs, jq, output, tick, TICKER};

const RUNC: &str = "/usr/sbin/runc";

struct Runc {
    root: PathBuf,
    criu: PathBuf,
    bundle: PathBuf,
    names: Vec<String>,
}

impl Runc {
    fn new(env: &Env) -> Option<Runc> {
        if !Path::new(RUNC).exists() {
            if std::env::var_os("STASIS_TESTS_REQUIRED").is_some() {
                panic!("{RUNC} is missing: run hack/setup.sh");
            }
            eprintln!("skipped: {RUNC} is missing");
            return None;
        }
        let cbin = env.dir("criu-bin");
        let criu = cbin.join("criu");
        symlink(&env.bin, &criu).expect("symlink criu");
        let bundle = env.dir("bundle");
        busybox_rootfs(&bundle.join("rootfs"));
        let st = Command::new(RUNC)
            .arg("spec")
            .current_dir(&bundle)
            .status()
            .expect("runc spec");
        assert!(st.success(), "runc spec");
        let cfg = bundle.join("config.json");
        jq(
            &cfg,
            &format!(
                r#".process.terminal=false | .root.readonly=false | .process.args=["sh","-c","{TICKER}"]"#
            ),
        );
        Some(Runc {
            root: env.dir("runc-root"),
            criu,
            bundle,
            names: Vec::new(),
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(RUNC);
        c.arg("--root")
            .arg(&self.root)
            .arg("--criu")
            .arg(&self.criu);
        c
    }

    fn name(&mut self, what: &str) -> String {
        let n = format!("stasis-swrk-{what}-{}", std::process::id());
        self.names.push(n.clone());
        n
    }

    fn tick(&self) -> u64 {
        tick(&self.bundle.join("rootfs"))
    }

    fn wait_tick(&self, above: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = self.tick();
            if t > above {
                return t;
            }
            assert!(Instant::now() < deadline, "container stuck at tick {t}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run(&mut self, env: &Env) -> String {
        let name = self.name("c1");
        // The container's stdio is /dev/null, which exists inside it too
        // (a host file would be outside its mount namespace on restore);
        // runc's own errors go to its --log.
        let st = self
            .cmd()
            .arg("--log")
            .arg(env.path("run.out"))
            .args(["run", "-d", &name])
            .current_dir(&self.bundle)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("runc run");
        assert!(
            st.success(),
            "runc run: {}",
            fs::read_to_string(env.path("run.out")).unwrap_or_default()
        );
        name
    }

    /// `runc restore -d` from `img` into a new container (work dir
    /// `work2`), which must succeed; returns its name.
    fn restore(&mut self, env: &Env, img: &Path) -> String {
        let c2 = self.name("c2");
        let work2 = env.dir("work2");
        let out = output(
            self.cmd()
                .args(["restore", "-d", "--image-path"])
                .arg(img)
                .arg("--work-path")
                .arg(&work2)
                .arg("--bundle")
                .arg(&self.bundle)
                .arg(&c2)
                .current_dir(&self.bundle),
        );
        assert!(
            out.status.success(),
            "runc restore: {}\nrestore.log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(work2.join("restore.log")).unwrap_or_default()
        );
        c2
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = output(self.cmd().args(["kill", n, "KILL"]));
            let _ = output(self.cmd().args(["delete", "-f", n]));
        }
    }
}

#[test]
fn runc_checkpoint_and_restore_through_swrk() {
    let Some(env) = Env::setup("runc_checkpoint_and_restore_through_swrk") else {
        return;
    };
    let Some(mut rc) = Runc::new(&env) else {
        return;
    };
    let c1 = rc.run(&env);
    let t0 = rc.wait_tick(2);
    let (img, work) = (env.dir("img"), env.dir("work"));
    let out = output(
        rc.cmd()
            .args(["checkpoint", "--leave-running", "--image-path"])
            .arg(&img)
            .arg("--work-path")
            .arg(&work)
            .arg(&c1),
    );
    let log = fs::read_to_string(work.join("dump.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "runc checkpoint: {}\ndump.log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    // runc's own descriptors.json next to our images; logs and stats in
    // the work dir; every notification runc acked, in CRIU's order.
    for f in ["inventory.img", "pstree.img", "descriptors.json"] {
        assert!(img.join(f).exists(), "{f} in the image dir");
    }
    assert!(
        work.join("stats-dump").exists(),
        "stats-dump in the work dir"
    );
    let order: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("script=\"").nth(1))
        .map(|s| s.split('"').next().unwrap_or(""))
        .collect();
    assert_eq!(
        order,
        [
            "pre-dump",
            "network-lock",
            "query-ext-files",
            "post-dump",
            "network-unlock"
        ],
        "{log}"
    );
    // --leave-running: the container keeps counting.
    rc.wait_tick(t0 + 2);

    // Restore into a new container: the counter goes on.
    let _ = output(rc.cmd().args(["kill", &c1, "KILL"]));
    let _ = output(rc.cmd().args(["delete", "-f", &c1]));
    // The killed init was re-parented to this test (a child subreaper, as
    // a shim is): reap it so its pid is free for the restore.
    reap_zombie_children(&[]);
    rc.restore(&env, &img);
    // It continues from where it was, not from 0.
    let t = rc.tick();
    assert!(t >= t0 + 2, "counter restarted: {t} after {}", t0 + 2);
    rc.wait_tick(t + 2);
}

/// containerd's `ctr task checkpoint` pauses the container first (freezer
/// cgroup), then runs `runc checkpoint --leave-running`, then resumes: the
/// dump must get through the frozen cgroup and leave it frozen.
#[test]
fn runc_checkpoint_of_a_paused_container() {
    let Some(env) = Env::setup("runc_checkpoint_of_a_paused_container") else {
        return;
    };
    let Some(mut rc) = Runc::new(&env) else {
        return;
    };
    let c = rc.run(&env);
    rc.wait_tick(2);
    let o = output(rc.cmd().args(["pause", &c]));
    assert!(
        o.status.success(),
        "runc pause: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (img, work) = (env.dir("img"), env.dir("work"));
    let out = output(
        rc.cmd()
            .args(["checkpoint", "--leave-running", "--image-path"])
            .arg(&img)
            .arg("--work-path")
            .arg(&work)
            .arg(&c),
    );
    assert!(
        out.status.success(),
        "checkpoint of a paused container: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(work.join("dump.log")).unwrap_or_default()
    );
    assert!(img.join("inventory.img").exists());
    let st = output(rc.cmd().args(["state", &c]));
    let state = String::from_utf8_lossy(&st.stdout);
    assert!(
        state.contains("\"paused\""),
        "still paused after the dump: {state}"
    );
    let frozen = rc.tick();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(rc.tick(), frozen, "a paused container must not run");
    let o = output(rc.cmd().args(["resume", &c]));
    assert!(
        o.status.success(),
        "runc resume: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    rc.wait_tick(frozen + 1);
}

/// `runc checkpoint --pre-dump` (PRE_DUMP over swrk, after runc's mem_track
/// feature check), then `runc checkpoint --parent-path ../pre`: the dump
/// saves only what changed since, and a restore from it continues counting.
#[test]
fn runc_pre_dump_then_checkpoint_and_restore() {
    let Some(env) = Env::setup("runc_pre_dump_then_checkpoint_and_restore") else {
        return;
    };
    let Some(mut rc) = Runc::new(&env) else {
        return;
    };
    let c1 = rc.run(&env);
    let t0 = rc.wait_tick(2);
    let (pre, img, work) = (env.dir("pre"), env.dir("img"), env.dir("work"));
    let checkpoint = |args: &[&str], dir: &Path, what: &str| {
        let out = output(
            rc.cmd()
                .arg("checkpoint")
                .args(args)
                .arg("--image-path")
                .arg(dir)
                .arg("--work-path")
                .arg(&work)
                .arg(&c1),
        );
        assert!(
            out.status.success(),
            "runc checkpoint {what}: {}\ndump.log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(work.join("dump.log")).unwrap_or_default()
        );
    };
    checkpoint(&["--pre-dump"], &pre, "--pre-dump");
    // Still running after the pre-dump.
    let t1 = rc.wait_tick(t0 + 1);
    checkpoint(&["--parent-path", "../pre"], &img, "--parent-path");
    let pages = |d: &Path| -> u64 {
        fs::read_dir(d)
            .expect("image dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum()
    };
    let (full, inc) = (pages(&pre), pages(&img));
    assert!(
        inc < full,
        "the checkpoint on a pre-dump saves less ({inc} of {full} bytes)"
    );
    let _ = output(rc.cmd().args(["delete", "-f", &c1]));
    reap_zombie_children(&[]);
    rc.restore(&env, &img);
    let t = rc.tick();
    assert!(t >= t1, "counter restarted: {t} after {t1}");
    rc.wait_tick(t + 2);
}
