//! Unix sockets (`wl-unix`): socketpairs, a listener with a pending
//! connection that carries data, a connection between parent and child, an
//! abstract datagram socket with queued datagrams, a seqpacket pair; and
//! sockets connected outside the dumped tree (refused, or external with
//! `--ext-unix-sk`).
//!
//! Root only (skipped otherwise); run with `--test-threads=1`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{bind, recv, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use stasis_integration::harness::{
    dump_restore, leave_running_then_restore, Env, Scenario, Workload,
};

const WL: &str = env!("CARGO_BIN_EXE_wl-unix");

fn scenario() -> Scenario<'static> {
    Scenario {
        bin: WL,
        args: &[],
        roles: &["child"],
        flags: &[],
    }
}

#[test]
fn unix_dump_restore() {
    let Some(env) = Env::setup("unix_dump_restore") else {
        return;
    };
    dump_restore(&env, &scenario());
}

#[test]
fn unix_leave_running() {
    let Some(env) = Env::setup("unix_leave_running") else {
        return;
    };
    leave_running_then_restore(&env, &scenario());
}

/// Dumping only the child: its sockets are connected to the parent, which
/// is outside the dumped tree. The dump must fail naming the pid and fd,
/// and the whole workload must carry on unharmed.
#[test]
fn unix_outside_peer_refused() {
    let Some(env) = Env::setup("unix_outside_peer_refused") else {
        return;
    };
    let mut wl = Workload::start(&env, WL, &[], &["child"]);
    let child = wl.pids["child"];
    let img = env.dir("images");
    let run = env.dump(child, &img, &[]);
    run.expect_clear_failure(
        "dump of a child whose sockets lead outside",
        &[&child.to_string()],
    );
    let line = run.stderr.trim().to_string();
    assert!(
        line.contains(" fd ") && line.contains("outside the dumped tree") && line.contains("ino"),
        "the error should name the fd, the peer inode and why: {line}"
    );
    assert!(
        !img.join("inventory.img").exists(),
        "a refused dump left an inventory"
    );
    wl.expect_running("after the refused dump");
    wl.verify_and_finish("after the refused dump");
}

fn recv_within(fd: &OwnedFd, timeout: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut b = [0u8; 256];
    loop {
        match recv(fd.as_raw_fd(), &mut b, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => return Some(b[..n].to_vec()),
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(_) => return None,
        }
    }
}

/// A datagram socket connected to a socket of ours (outside the tree):
/// refused without --ext-unix-sk; with it, dumped as external and connected
/// to our socket again on restore (which also needs the flag).
#[test]
fn unix_external_peer() {
    let Some(env) = Env::setup("unix_external_peer") else {
        return;
    };
    let path = env.path("ext.sock");
    let ours = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    bind(ours.as_raw_fd(), &UnixAddr::new(&path).unwrap()).expect("bind ext.sock");
    let p = path.to_string_lossy().into_owned();
    let mut wl = Workload::start(&env, WL, &["ext", &p], &[]);
    assert_eq!(
        recv_within(&ours, Duration::from_secs(5)).as_deref(),
        Some(&b"ext-hello"[..])
    );
    let img = env.dir("images");
    let run = env.dump(wl.root_pid(), &img, &[]);
    run.expect_clear_failure("dump without --ext-unix-sk", &[&wl.root_pid().to_string()]);
    assert!(run.stderr.contains("--ext-unix-sk"), "{}", run.describe());
    wl.expect_running("after the refused dump");

    env.dump(wl.root_pid(), &img, &["--ext-unix-sk"])
        .expect_success("dump with --ext-unix-sk");
    wl.expect_killed_and_reap();
    let pidfile = env.path("refused.pid");
    let run = env.restore(&img, &pidfile, &[]);
    run.expect_clear_failure("restore without --ext-unix-sk", &["--ext-unix-sk"]);
    wl.restore_from(&env, &img, &["--ext-unix-sk"]);
    wl.verify_and_finish("after restore");
    assert_eq!(
        recv_within(&ours, Duration::from_secs(5)).as_deref(),
        Some(&b"ext-after"[..]),
        "the restored socket did not reach our socket"
    );
}
