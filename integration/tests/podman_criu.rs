//! podman 4.3 with stock runc and stasis as the `criu` first on PATH:
//! podman's CRIU version probe (a VERSION request over swrk) must pass, and
//! `podman container checkpoint --leave-running --print-stats --export`
//! must work through runc's swrk DUMP (stats from our stats-dump).
//!
//! Isolated podman config and storage in the test's directory
//! (CONTAINER-LAB.md §5); seccomp is off because the engine does not dump
//! seccomp filters yet. Everything is removed afterwards.

use std::fs;
use std::time::Duration;

use stasis_integration::harness::Env;
use stasis_integration::stack::{busybox_rootfs, Podman, PodmanRuntime};

#[test]
fn podman_checkpoint_through_swrk() {
    let Some(env) = Env::setup("podman_checkpoint_through_swrk") else {
        return;
    };
    let Some(pm) = Podman::new(
        &env,
        "podman_checkpoint_through_swrk",
        PodmanRuntime::RuncWithCriu(&env.bin),
    ) else {
        return;
    };
    let rootfs = env.dir("rootfs");
    busybox_rootfs(&rootfs);
    let image = pm.load_busybox(&env, &rootfs);
    let name = format!("stasis-swrk-q{}", std::process::id());
    pm.ok(&[
        "run",
        "-d",
        "--security-opt",
        "seccomp=unconfined",
        "--name",
        &name,
        image,
    ]);
    std::thread::sleep(Duration::from_millis(500));

    let export = env.path("export.tar.gz");
    let out = pm.ok(&[
        "container",
        "checkpoint",
        "--leave-running",
        "--print-stats",
        "-e",
        export.to_str().expect("utf-8 path"),
        &name,
    ]);
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
    assert_eq!(pm.status(&name), "running");
}
