//! podman 4.3 with stock runc and stasis as the `criu` first on PATH:
//! podman's CRIU version probe (a VERSION request over swrk) must pass, and
//! `podman container checkpoint --leave-running --print-stats --export`
//! must work through runc's swrk DUMP (stats from our stats-dump).
//!
//! Isolated podman config and storage in the test's directory
//! (CONTAINER-LAB.md §5); seccomp is off because the engine does not dump
//! seccomp filters yet. Everything is removed afterwards.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use stasis_integration::harness::Env;

const PODMAN: &str = "/usr/bin/podman";

/// Runs `cmd`, killed after a minute: podman must never hang a test.
fn output(cmd: &mut Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run podman");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().expect("wait podman").is_some() {
            return child.wait_with_output().expect("podman output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("podman output");
            panic!("podman hung: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Podman {
    dir: PathBuf,
    path: String,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new(PODMAN);
        c.env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .env("PATH", &self.path)
            .arg("--runtime-flag")
            .arg(format!("root={}", self.dir.join("runc-root").display()));
        c
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = output(self.cmd().args(["rm", "-af", "-t", "0"]));
        let _ = output(self.cmd().args(["rmi", "-af"]));
    }
}

fn rootfs_tar(env: &Env) -> PathBuf {
    let rootfs = env.dir("rootfs");
    for d in ["bin", "dev", "etc", "proc", "sys", "tmp", "root"] {
        fs::create_dir_all(rootfs.join(d)).expect("mkdir rootfs");
    }
    fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copy busybox");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    for a in String::from_utf8_lossy(&list.stdout).lines() {
        if a != "busybox" && !a.is_empty() {
            let _ = symlink("busybox", rootfs.join("bin").join(a));
        }
    }
    let tar = env.path("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("tar");
    assert!(st.success(), "tar rootfs");
    tar
}

#[test]
fn podman_checkpoint_through_swrk() {
    let Some(env) = Env::setup("podman_checkpoint_through_swrk") else {
        return;
    };
    if !Path::new(PODMAN).exists() {
        if std::env::var_os("STASIS_TESTS_REQUIRED").is_some() {
            panic!("{PODMAN} is missing: run hack/setup.sh");
        }
        eprintln!("skipped: {PODMAN} is missing");
        return;
    }
    let dir = env.dir("podman");
    fs::create_dir_all(dir.join("tmp")).expect("mkdir tmp");
    fs::write(
        dir.join("containers.conf"),
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n\
             netns = \"none\"\n\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             runtime = \"runc\"\ntmp_dir = \"{}\"\n",
            dir.join("tmp").display()
        ),
    )
    .expect("containers.conf");
    fs::write(
        dir.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.join("root").display(),
            dir.join("runroot").display()
        ),
    )
    .expect("storage.conf");
    let cbin = env.dir("criu-bin");
    symlink(&env.bin, cbin.join("criu")).expect("symlink criu");
    let path = format!(
        "{}:{}",
        cbin.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    let pm = Podman { dir, path };
    let tag = format!("localhost/stasis-swrk-bb:{}", std::process::id());
    let name = format!("stasis-swrk-q{}", std::process::id());

    let tar = rootfs_tar(&env);
    let o = output(
        pm.cmd()
            .args(["import", "--change"])
            .arg(r#"CMD ["sh","-c","i=0; while true; do i=$((i+1)); echo $i >/tmp/tick; sleep 0.2; done"]"#)
            .args(["--change", "ENV PATH=/bin"])
            .arg(&tar)
            .arg(&tag),
    );
    assert!(o.status.success(), "podman import: {}", text(&o));
    let o = output(pm.cmd().args([
        "run",
        "-d",
        "--security-opt",
        "seccomp=unconfined",
        "--name",
        &name,
        &tag,
    ]));
    assert!(o.status.success(), "podman run: {}", text(&o));
    std::thread::sleep(Duration::from_millis(500));

    let export = env.path("export.tar.gz");
    let o = output(
        pm.cmd()
            .args([
                "container",
                "checkpoint",
                "--leave-running",
                "--print-stats",
                "-e",
            ])
            .arg(&export)
            .arg(&name),
    );
    let out = text(&o);
    // A failed version probe reads "checkpoint/restore requires at least CRIU".
    assert!(
        !out.contains("requires at least CRIU"),
        "version probe: {out}"
    );
    assert!(o.status.success(), "podman checkpoint: {out}");
    assert!(
        out.contains("criu_statistics") && out.contains("pages_written"),
        "--print-stats shows our stats-dump: {out}"
    );
    assert!(
        fs::metadata(&export).is_ok_and(|m| m.len() > 0),
        "--export wrote {}",
        export.display()
    );
    // --leave-running: still up.
    let o = output(
        pm.cmd()
            .args(["inspect", "-f", "{{.State.Running}}", &name]),
    );
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "true",
        "{}",
        text(&o)
    );
}
