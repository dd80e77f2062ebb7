//! wl-tree STATEDIR: a process tree with process groups and sessions.
//!
//! ```text
//! root                 (started by the harness as a session leader)
//! ├── pgrp             setpgid(0, 0): its own group in root's session
//! ├── sess             setsid(): leader of a new session and group
//! │   └── gchild       stays in sess's session and group
//! ├── zombie           exits with status 7 at once; root reaps it only
//! │                    after the check, which must find it still a zombie
//! └── stopped          stops itself with SIGSTOP; at the check root finds it
//!                      still stopped, then continues it and it reports
//! ```
//! Each process records pid, ppid, pgid and sid before the checkpoint and
//! checks them after `check` (the root skips its ppid: its parent is not
//! part of the tree). Each parent waits for its children and folds
//! their exit status into its verdict. Roles: `root`, `pgrp`, `sess`, `gchild`.

use std::time::Duration;

use stasis_integration::workload::{fork, wait_child, Ctx, Verdict};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ids {
    pid: i32,
    ppid: i32,
    pgid: i32,
    sid: i32,
}

fn ids() -> Ids {
    // SAFETY: these calls take no pointers and cannot fail for ourselves.
    unsafe {
        Ids {
            pid: libc::getpid(),
            ppid: libc::getppid(),
            pgid: libc::getpgid(0),
            sid: libc::getsid(0),
        }
    }
}

/// Waits for `check`, verifies the ids (and the children), writes the result.
fn run(
    ctx: &mut Ctx,
    role: &str,
    want: Ids,
    children: &[(&str, i32)],
    extra: impl Fn(&mut Verdict),
) -> ! {
    ctx.wait_for_check(|| {});
    let mut v = Verdict::new();
    let now = ids();
    v.eq("pid", now.pid, want.pid);
    // The root's parent is outside the checkpointed tree (after a restore
    // with -d it is whoever reaps orphans), so only the others check it.
    if role != "root" {
        v.eq("ppid", now.ppid, want.ppid);
    }
    v.eq("pgid", now.pgid, want.pgid);
    v.eq("sid", now.sid, want.sid);
    extra(&mut v);
    for &(name, pid) in children {
        v.result(name, wait_child(pid, Duration::from_secs(25)));
    }
    ctx.finish(role, v)
}

fn main() {
    let mut ctx = Ctx::from_args("wl-tree STATEDIR");
    let root = ids();

    let pgrp = fork().unwrap_or_else(|e| ctx.setup_failed("root", &format!("fork: {e}")));
    if pgrp == 0 {
        // SAFETY: setpgid on ourselves.
        if unsafe { libc::setpgid(0, 0) } != 0 {
            ctx.setup_failed("pgrp", "setpgid failed");
        }
        let me = ids();
        let ok = me.pgid == me.pid && me.sid == root.sid && me.ppid == root.pid;
        if !ok {
            ctx.setup_failed("pgrp", &format!("unexpected ids {me:?}"));
        }
        ctx.write_ready("pgrp");
        run(&mut ctx, "pgrp", me, &[], |_| {});
    }

    let sess = fork().unwrap_or_else(|e| ctx.setup_failed("root", &format!("fork: {e}")));
    if sess == 0 {
        // SAFETY: setsid on ourselves (we are not a group leader after fork).
        if unsafe { libc::setsid() } < 0 {
            ctx.setup_failed("sess", "setsid failed");
        }
        let me = ids();
        let gchild = fork().unwrap_or_else(|e| ctx.setup_failed("sess", &format!("fork: {e}")));
        if gchild == 0 {
            let g = ids();
            if g.sid != me.pid || g.pgid != me.pid || g.ppid != me.pid {
                ctx.setup_failed("gchild", &format!("unexpected ids {g:?}"));
            }
            ctx.write_ready("gchild");
            run(&mut ctx, "gchild", g, &[], |_| {});
        }
        ctx.write_ready("sess");
        run(&mut ctx, "sess", me, &[("gchild", gchild)], |v| {
            // The session leader's group still has its member.
            // SAFETY: getpgid takes a plain pid.
            let g = unsafe { libc::getpgid(gchild) };
            v.eq("gchild pgid seen from sess", g, me.pid);
            // SAFETY: getsid takes a plain pid.
            let s = unsafe { libc::getsid(gchild) };
            v.eq("gchild sid seen from sess", s, me.pid);
        });
    }

    let zombie = fork().unwrap_or_else(|e| ctx.setup_failed("root", &format!("fork: {e}")));
    if zombie == 0 {
        // SAFETY: _exit ends this child at once, as intended.
        unsafe { libc::_exit(7) };
    }
    let stopped = fork().unwrap_or_else(|e| ctx.setup_failed("root", &format!("fork: {e}")));
    if stopped == 0 {
        let me = ids();
        ctx.write_ready("stopped");
        // SAFETY: kill on ourselves; we stay stopped until root continues us.
        unsafe { libc::kill(libc::getpid(), libc::SIGSTOP) };
        run(&mut ctx, "stopped", me, &[], |_| {});
    }
    if let Err(e) = ctx.wait_ready_of(
        &["pgrp", "sess", "gchild", "stopped"],
        Duration::from_secs(20),
    ) {
        ctx.setup_failed("root", &e);
    }
    while proc_state(stopped) != Some('T') {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Make sure the zombie is one before the checkpoint can happen.
    while proc_state(zombie) != Some('Z') {
        std::thread::sleep(Duration::from_millis(1));
    }
    ctx.write_ready("root");
    run(
        &mut ctx,
        "root",
        root,
        &[("pgrp", pgrp), ("sess", sess), ("stopped", stopped)],
        |v| {
            v.eq(
                "stopped child still stopped",
                proc_state(stopped),
                Some('T'),
            );
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(stopped, libc::SIGCONT) };
            // SAFETY: getpgid/getsid take plain pids.
            let (pg, ps) = unsafe { (libc::getpgid(pgrp), libc::getsid(sess)) };
            v.eq("pgrp's pgid seen from root", pg, pgrp);
            v.eq("sess's sid seen from root", ps, sess);
            v.eq("zombie still a zombie", proc_state(zombie), Some('Z'));
            let mut status = 0;
            // SAFETY: `status` is a valid out-pointer.
            let r = unsafe { libc::waitpid(zombie, &mut status, libc::WNOHANG) };
            v.eq("zombie reaped", r, zombie);
            v.eq("zombie exit status", libc::WEXITSTATUS(status), 7);
        },
    );
}

/// The state letter of `pid` in /proc/PID/stat (R, S, T, Z, ...).
fn proc_state(pid: i32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}
