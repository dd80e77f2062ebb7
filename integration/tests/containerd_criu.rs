//! containerd 1.6 with its stock runc shim and stasis as `criu` in
//! containerd's opt bin dir (CONTAINER-LAB.md): `ctr task checkpoint` (the
//! task runs on), then `ctr c checkpoint --task --rw --image` and, after the
//! container is removed, `ctr c restore --live --rw`: the busybox counter
//! continues, under containerd's default seccomp profile.
//!
//! A private containerd (own root, state, sockets, opt dir, namespace);
//! everything is removed afterwards.

use std::time::Duration;

use stasis_integration::harness::Env;
use stasis_integration::stack::{busybox_rootfs, tick, wait_until, Containerd};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn containerd_checkpoint_and_live_restore() {
    let Some(env) = Env::setup("containerd_checkpoint_and_live_restore") else {
        return;
    };
    let Some(mut cd) = Containerd::start(&env, "containerd_checkpoint_and_live_restore", "ctrd")
    else {
        return;
    };
    cd.use_criu(&env.bin);
    let rootfs = env.dir("rootfs");
    busybox_rootfs(&rootfs);
    let image = cd.import_busybox(&env, &rootfs);
    let id = cd.id("ck");
    cd.sh(
        "ctr run -d",
        &format!("$C run -d --seccomp {image} {id} </dev/null >/dev/null 2>&1"),
    );
    let task_fs = cd.task_rootfs(&id);
    wait_until("the first ticks", WAIT, || tick(&task_fs) > 2);
    assert_eq!(init_seccomp(&cd, &id), "2", "containerd's default profile");

    // A checkpoint image in the content store; the task runs on.
    cd.sh("ctr task checkpoint", &format!("$C task checkpoint {id}"));
    let images = cd.sh("ctr images ls", "$C images ls -q");
    assert!(
        images.contains(&format!("containerd.io/checkpoint/{id}:")),
        "ctr task checkpoint stored an image: {images}"
    );
    let tasks = cd.sh("ctr task ls", "$C task ls");
    assert!(
        tasks.contains(&id) && tasks.contains("RUNNING"),
        "still running after ctr task checkpoint: {tasks}"
    );
    // containerd 1.6 stores a task checkpoint's spec as its own blob: a
    // second checkpoint of the same container fails to commit it
    // (AlreadyExists) and `ctr c checkpoint` silently drops the task part.
    // Garbage-collect the first one first.
    cd.sh(
        "ctr images rm",
        &format!("$C images rm --sync $($C images ls -q | grep containerd.io/checkpoint/{id}:)"),
    );

    // Container checkpoint with its rw layer, removal, live restore.
    let ck = format!("localhost/ckpt/{id}:1");
    // Read before: the task runs on after the checkpoint.
    let before = tick(&task_fs);
    cd.sh(
        "ctr c checkpoint",
        &format!("$C c checkpoint --task --rw --image {id} {ck}"),
    );
    cd.sh(
        "remove the container",
        &format!("$C task kill -s KILL {id}; sleep 0.5; $C task rm -f {id}; $C c rm {id}"),
    );
    cd.sh(
        "ctr c restore",
        &format!("$C c restore --live --rw {id} {ck} </dev/null"),
    );
    let tasks = cd.sh("ctr task ls", "$C task ls");
    assert!(
        tasks.contains(&id) && tasks.contains("RUNNING"),
        "restored task running: {tasks}"
    );
    assert!(before > 2, "checkpointed after a few ticks");
    wait_until(&format!("the counter to pass {}", before + 3), WAIT, || {
        let t = tick(&task_fs);
        assert!(
            t == 0 || t >= before,
            "the counter restarted ({t} after a checkpoint at {before})"
        );
        t > before + 3
    });
    assert_eq!(init_seccomp(&cd, &id), "2", "seccomp filters restored");
}

/// The `Seccomp:` mode of the task's init (from `ctr task ls`'s pid).
fn init_seccomp(cd: &Containerd, id: &str) -> String {
    cd.sh(
        "init's seccomp mode",
        &format!(
            "p=$($C task ls | awk '$1 == \"{id}\" {{print $2}}'); awk '/^Seccomp:/ {{print $2}}' /proc/$p/status"
        ),
    )
    .trim()
    .to_string()
}
