//! podman 4.3 with stock runc and stasis as the `criu` first on PATH, with
//! podman's default seccomp profile (the engine dumps and restores the
//! filters):
//! - podman's CRIU version probe (a VERSION request over swrk) passes, and
//!   `podman container checkpoint --leave-running --print-stats --export`
//!   works through runc's swrk DUMP (stats from our stats-dump);
//! - `podman container checkpoint` then `podman container restore`, and
//!   `checkpoint --export` then `restore --import` into a new container:
//!   the busybox counter continues, under the same seccomp mode.
//!
//! Isolated podman config and storage in the test's directory
//! (CONTAINER-LAB.md §5). Everything is removed afterwards.

use std::fs;
use std::time::Duration;

use stasis_integration::harness::Env;
use stasis_integration::stack::{busybox_rootfs, wait_until, Podman, PodmanRuntime};

const WAIT: Duration = Duration::from_secs(30);

fn setup(env: &Env, test: &str) -> Option<(Podman, &'static str)> {
    let pm = Podman::new(env, test, PodmanRuntime::RuncWithCriu(&env.bin))?;
    let rootfs = env.dir("rootfs");
    busybox_rootfs(&rootfs);
    let image = pm.load_busybox(env, &rootfs);
    Some((pm, image))
}

/// The counter goes on from `from` (a restarted one would count from 1
/// again), under seccomp.
fn expect_continues(pm: &Podman, name: &str, from: u64) {
    assert!(from > 2, "checkpointed after a few ticks");
    wait_until(
        &format!("{name}'s counter to pass {}", from + 3),
        WAIT,
        || {
            let t = pm.tick(name);
            assert!(
                t >= from,
                "{name}: the counter restarted ({t} after a checkpoint at {from})"
            );
            t > from + 3
        },
    );
    assert_eq!(
        pm.init_seccomp(name),
        "2",
        "{name}: seccomp filters restored"
    );
}

#[test]
fn podman_checkpoint_through_swrk() {
    let Some(env) = Env::setup("podman_checkpoint_through_swrk") else {
        return;
    };
    let Some((pm, image)) = setup(&env, "podman_checkpoint_through_swrk") else {
        return;
    };
    let name = format!("stasis-swrk-q{}", std::process::id());
    pm.ok(&["run", "-d", "--name", &name, image]);
    wait_until("the first tick", WAIT, || pm.tick(&name) > 0);
    assert_eq!(pm.init_seccomp(&name), "2", "podman's default profile");

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

#[test]
fn podman_checkpoint_restore_and_import() {
    let Some(env) = Env::setup("podman_checkpoint_restore_and_import") else {
        return;
    };
    let Some((pm, image)) = setup(&env, "podman_checkpoint_restore_and_import") else {
        return;
    };
    let name = format!("stasis-swrk-r{}", std::process::id());
    pm.ok(&["run", "-d", "--name", &name, image]);
    wait_until("the first ticks", WAIT, || pm.tick(&name) > 2);

    // In place: checkpoint (the container stops), restore.
    let before = pm.tick(&name);
    pm.ok(&["container", "checkpoint", &name]);
    assert_eq!(pm.status(&name), "exited");
    pm.ok(&["container", "restore", &name]);
    assert_eq!(pm.status(&name), "running");
    expect_continues(&pm, &name, before);

    // Exported, then imported into a new container.
    let export = env.path("export.tar.gz");
    let before = pm.tick(&name);
    pm.ok(&[
        "container",
        "checkpoint",
        "-e",
        export.to_str().expect("utf-8 path"),
        &name,
    ]);
    let copy = format!("{name}-import");
    pm.ok(&["rm", "-f", &name]);
    pm.ok(&[
        "container",
        "restore",
        "-i",
        export.to_str().expect("utf-8 path"),
        "-n",
        &copy,
    ]);
    assert_eq!(pm.status(&copy), "running");
    expect_continues(&pm, &copy, before);
}

#[test]
fn podman_pre_checkpoint_with_previous() {
    let Some(env) = Env::setup("podman_pre_checkpoint_with_previous") else {
        return;
    };
    let Some((pm, image)) = setup(&env, "podman_pre_checkpoint_with_previous") else {
        return;
    };
    let name = format!("stasis-swrk-p{}", std::process::id());
    pm.ok(&["run", "-d", "--name", &name, image]);
    wait_until("the first ticks", WAIT, || pm.tick(&name) > 2);
    // A pre-checkpoint (PRE_DUMP, memory tracked) leaves it running.
    pm.ok(&["container", "checkpoint", "--pre-checkpoint", &name]);
    assert_eq!(pm.status(&name), "running");
    let after_pre = pm.tick(&name);
    wait_until("ticks after the pre-checkpoint", WAIT, || {
        pm.tick(&name) > after_pre + 1
    });
    let before = pm.tick(&name);
    pm.ok(&["container", "checkpoint", "--with-previous", &name]);
    assert_eq!(pm.status(&name), "exited");
    // The dump was made on the tracked pre-checkpoint (runc's work dir is
    // the container's userdata).
    let userdata = pm.ok(&["inspect", "-f", "{{.StaticDir}}", &name]);
    let userdata = std::path::Path::new(userdata.trim());
    let log = fs::read_to_string(userdata.join("dump.log")).unwrap_or_default();
    assert!(
        userdata.join("checkpoint/parent").exists() && !log.contains("not tracked"),
        "checkpoint --with-previous builds on the pre-checkpoint:\n{log}"
    );
    pm.ok(&["container", "restore", &name]);
    assert_eq!(pm.status(&name), "running");
    expect_continues(&pm, &name, before);
}
