//! TCP and UDP sockets, in network namespaces the tests make themselves
//! (`stasis-tcp-*`, joined by veth pairs or a bridge). The test thread
//! enters a namespace before it starts a workload or stasis, so they are
//! born there (the tree's namespace is then the dumper's and is not
//! dumped). Every namespace is deleted when the test ends, failed or not,
//! and its nft tables with it.
//!
//! - `wl-tcp`: an established connection with unread data both ways,
//!   dumped with `--tcp-established` on the client or the server (IPv6)
//!   side and restored; the peer (another namespace, never dumped) and the
//!   restored side then finish the exchange with no byte lost or repeated
//!   and no reset sent or received (snmp counters); the network lock is
//!   there between dump and restore and gone afterwards; the same with
//!   unacknowledged data (retransmitted after restore), with both ends in
//!   the tree (in the dumper's namespace and in one of the tree's own),
//!   with `-R`, and for a service moved between two "node" namespaces with
//!   its client on a third;
//! - without `--tcp-established` the dump is refused by name and the
//!   connection carries on; restore refuses such images without it;
//!   `--tcp-close` restores the connection closed;
//! - `wl-inet`: listeners, UDP sockets and their options (both scenarios);
//!   raw, packet and netlink sockets refused by name; a listener with a
//!   connection waiting to be accepted (refused, or dropped with
//!   `--tcp-skip-in-flight`).
//!
//! Root only (skipped otherwise); needs `ip` and `nft`; run with
//! `--test-threads=1`.

use std::fs::File;
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use stasis_integration::net::{assert_no_resets, in_ns, in_ns_with_input, ip, tcp_counter};
use stasis_integration::workload::write_atomic;

use stasis_integration::harness::{
    dump_restore, leave_running_then_restore, Env, Scenario, Workload,
};

const WL_TCP: &str = env!("CARGO_BIN_EXE_wl-tcp");
const WL_INET: &str = env!("CARGO_BIN_EXE_wl-inet");

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Two namespaces `a` (10.231.0.1, fd00:231::1) and `b` (.2, ::2) joined
/// by a veth pair. Dropping it puts the test thread back in its own
/// namespace and deletes both (their nft tables go with them).
struct Net {
    a: String,
    b: String,
    home: File,
}

impl Net {
    fn new() -> Net {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let net = Net {
            a: format!("stasis-tcp-{id}-a"),
            b: format!("stasis-tcp-{id}-b"),
            home: File::open("/proc/thread-self/ns/net").expect("open own netns"),
        };
        let (va, vb) = (
            format!("stcp{}a", std::process::id() % 100_000),
            format!("stcp{}b", std::process::id() % 100_000),
        );
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &net.a])?;
            ip(&["netns", "add", &net.b])?;
            ip(&[
                "link", "add", &va, "netns", &net.a, "type", "veth", "peer", "name", &vb, "netns",
                &net.b,
            ])?;
            for (ns, dev, x) in [(&net.a, &va, "1"), (&net.b, &vb, "2")] {
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("10.231.0.{x}/24"),
                    "dev",
                    dev,
                ])?;
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("fd00:231::{x}/64"),
                    "dev",
                    dev,
                    "nodad",
                ])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
                ip(&["-n", ns, "link", "set", dev, "up"])?;
            }
            Ok(())
        };
        if let Err(e) = setup() {
            drop(net);
            panic!("network set-up: {e}");
        }
        net
    }

    /// Move the test thread (and what it starts from now on) into `ns`.
    fn enter(&self, ns: &str) {
        let f = File::open(format!("/run/netns/{ns}")).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }

    fn nft_tables(&self, ns: &str) -> String {
        in_ns(ns, "nft", &["list", "tables"]).expect("nft list tables")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = nix::sched::setns(&self.home, nix::sched::CloneFlags::CLONE_NEWNET);
        for ns in [&self.a, &self.b] {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// Start the dumped side (`mode`, namespace a) and its peer (b): the
/// server first, from a thread (it is ready only once it has accepted),
/// then the client. Returns (dumped, peer); the test thread ends up in a.
fn start_pair(
    env: &Env,
    net: &Net,
    mode: &str,
    peer: &str,
    server_host: &str,
    port: &str,
) -> (Workload, Workload) {
    let (server, client) = if mode == "server" {
        ((&net.a, mode), (&net.b, peer))
    } else {
        ((&net.b, peer), (&net.a, mode))
    };
    let (s, c) = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            net.enter(server.0);
            Workload::start(env, WL_TCP, &[server.1, server_host, port], &[])
        });
        std::thread::sleep(Duration::from_millis(300));
        net.enter(client.0);
        let c = Workload::start(env, WL_TCP, &[client.1, server_host, port], &[]);
        (h.join().expect("server start"), c)
    });
    net.enter(&net.a);
    if mode == "server" {
        (s, c)
    } else {
        (c, s)
    }
}

fn has_nft() -> bool {
    Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The dumped side (`mode`) in namespace a, its peer in b; dump with
/// `--tcp-established`, restore, finish the exchange on both ends.
fn established(test: &str, mode: &str, host_a: &str, host_b: &str, port: &str) {
    let Some(env) = Env::setup(test) else {
        return;
    };
    assert!(has_nft(), "nft is needed (hack/setup.sh installs nftables)");
    let net = Net::new();
    let (peer, server_host) = if mode == "client" {
        ("peer-server", host_b)
    } else {
        ("peer-client", host_a)
    };
    let (mut dumped, mut other) = start_pair(&env, &net, mode, peer, server_host, port);
    let img = env.dir("images");
    let run = env.dump(dumped.root_pid(), &img, &["--tcp-established"]);
    run.expect_success("dump of an established connection");
    dumped.expect_killed_and_reap();
    assert!(
        net.nft_tables(&net.a).contains("stasis_lock"),
        "no network lock after the dump: {}",
        net.nft_tables(&net.a)
    );
    // Without --tcp-established (or --tcp-close) the images are refused.
    let run = env.restore(&img, &env.path("refused.pid"), &[]);
    run.expect_clear_failure(
        "restore of an established connection without --tcp-established",
        &["--tcp-established"],
    );
    dumped.restore_from(&env, &img, &["--tcp-established"]);
    let left = net.nft_tables(&net.a);
    assert!(
        !left.contains("stasis_lock"),
        "the network lock is still there after restore: {left}"
    );
    write_atomic(&other.path("go"), "").expect("go");
    dumped.verify_and_finish("after restore");
    other.verify_and_finish("peer after restore");
    assert_no_resets(&[
        (&net.b, "EstabResets"),
        (&net.b, "OutRsts"),
        (&net.a, "OutRsts"),
    ]);
    drop(dumped);
    drop(other);
    drop(net);
}

#[test]
fn tcp_client_established() {
    established(
        "tcp_client_established",
        "client",
        "10.231.0.1",
        "10.231.0.2",
        "5000",
    );
}

#[test]
fn tcp_server_established_v6() {
    established(
        "tcp_server_established_v6",
        "server",
        "fd00:231::1",
        "fd00:231::2",
        "5001",
    );
}

/// A client that connects while the server is checkpointed (from the
/// dump's post-dump point, the listener still there but frozen, until
/// restore): the network lock holds its SYNs back, so it is neither queued
/// by the dumped listener (which would reset it when killed) nor refused;
/// it connects to the restored listener and talks with the server. No
/// reset on either side.
#[test]
fn tcp_connect_during_checkpoint() {
    let Some(env) = Env::setup("tcp_connect_during_checkpoint") else {
        return;
    };
    assert!(has_nft(), "nft is needed (hack/setup.sh installs nftables)");
    let net = Net::new();
    let (mut dumped, mut other) =
        start_pair(&env, &net, "server", "peer-client", "10.231.0.1", "5009");
    let marker = env.path("post-dump");
    let script = env.path("action.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$CRTOOLS_SCRIPT_ACTION\" = post-dump ] || exit 0\n\
             touch {}\nsleep 0.5\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let img = env.dir("images");
    let (run, client) = std::thread::scope(|sc| {
        let client = sc.spawn(|| -> Result<String, String> {
            net.enter(&net.b);
            let t0 = std::time::Instant::now();
            while !marker.exists() {
                if t0.elapsed() > Duration::from_secs(60) {
                    return Err("no post-dump point".into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let addr = "10.231.0.1:5009".parse().unwrap();
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(30))
                .map_err(|e| format!("connect during checkpoint: {e}"))?;
            c.set_read_timeout(Some(Duration::from_secs(30)))
                .map_err(|e| e.to_string())?;
            std::io::Write::write_all(&mut c, b"hello").map_err(|e| e.to_string())?;
            let mut b = [0u8; 5];
            std::io::Read::read_exact(&mut c, &mut b).map_err(|e| format!("read: {e}"))?;
            Ok(String::from_utf8_lossy(&b).into_owned())
        });
        let run = env.dump(
            dumped.root_pid(),
            &img,
            &[
                "--tcp-established",
                "--action-script",
                script.to_str().unwrap(),
            ],
        );
        if run.status.success() {
            dumped.expect_killed_and_reap();
            write_atomic(&dumped.path("pending"), "").expect("pending");
            // Its SYN has been held back for a while now.
            std::thread::sleep(Duration::from_millis(300));
            dumped.restore_from(&env, &img, &["--tcp-established"]);
            // The server answers the client in its check.
            write_atomic(&other.path("go"), "").expect("go");
            dumped.verify_and_finish("after restore");
            other.verify_and_finish("peer after restore");
        }
        (run, client.join().expect("client thread"))
    });
    run.expect_success("dump of a server with a listener");
    assert_eq!(
        client.as_deref(),
        Ok("world"),
        "the client that connected meanwhile"
    );
    assert_no_resets(&[
        (&net.b, "EstabResets"),
        (&net.b, "OutRsts"),
        (&net.a, "OutRsts"),
    ]);
    drop(dumped);
    drop(other);
    drop(net);
}

/// Data the dumped side sent that its peer never acknowledged: packets
/// from a to b are dropped in b while the peer opens its window, so the
/// client's kernel sends more that is lost. After restore (the drop
/// lifted) the restored socket retransmits it.
#[test]
fn tcp_client_unacked() {
    let Some(env) = Env::setup("tcp_client_unacked") else {
        return;
    };
    let net = Net::new();
    let (mut dumped, mut other) =
        start_pair(&env, &net, "client", "peer-server", "10.231.0.2", "5003");
    let loss = |cmd: &str| {
        if let Err(e) = in_ns_with_input(&net.b, "nft", &["-f", "-"], Some(cmd)) {
            panic!("{e}");
        }
    };
    loss(
        "add table inet stasis_test_loss
         add chain inet stasis_test_loss in { type filter hook input priority -300; }
         add rule inet stasis_test_loss in ip saddr 10.231.0.1 tcp sport != 0 drop
",
    );
    // The peer reads: its window opens, the client sends into the loss.
    write_atomic(&other.path("go"), "").expect("go");
    std::thread::sleep(Duration::from_millis(700));
    let img = env.dir("images");
    let run = env.dump(dumped.root_pid(), &img, &["--tcp-established"]);
    run.expect_success("dump with unacknowledged data");
    let log = std::fs::read_to_string(run.log.as_ref().expect("log")).unwrap_or_default();
    let line = log
        .lines()
        .find(|l| l.contains("tcp stream"))
        .unwrap_or_default()
        .to_string();
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{k}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(
        field("outq_len") > field("unsq_len"),
        "no unacknowledged data in the send queue: {line}"
    );
    dumped.expect_killed_and_reap();
    dumped.restore_from(&env, &img, &["--tcp-established"]);
    loss(
        "delete table inet stasis_test_loss
",
    );
    dumped.verify_and_finish("after restore");
    other.verify_and_finish("peer after restore");
    drop(dumped);
    drop(other);
    drop(net);
}

/// Both ends of a loopback connection in the dumped tree (a server and its
/// child client), each with unread data.
#[test]
fn tcp_both_ends_in_tree() {
    let Some(env) = Env::setup("tcp_both_ends_in_tree") else {
        return;
    };
    let net = Net::new();
    net.enter(&net.a);
    let mut wl = Workload::start(&env, WL_TCP, &["pair", "127.0.0.1", "5007"], &["peer"]);
    let img = env.dir("images");
    env.dump(wl.root_pid(), &img, &["--tcp-established"])
        .expect_success("dump of both ends");
    wl.expect_killed_and_reap();
    wl.restore_from(&env, &img, &["--tcp-established"]);
    write_atomic(&wl.path("go"), "").expect("go");
    wl.verify_and_finish("after restore");
    assert_eq!(tcp_counter(&net.a, "OutRsts"), 0, "a reset was sent");
    drop(wl);
    drop(net);
}

/// The same in a network namespace of the tree's own (loopback only): the
/// namespace is dumped and made anew on restore, the connection rebuilt in
/// it.
#[test]
fn tcp_both_ends_own_netns() {
    let Some(env) = Env::setup("tcp_both_ends_own_netns") else {
        return;
    };
    let mut wl = Workload::start(
        &env,
        WL_TCP,
        &["pair-netns", "127.0.0.1", "5008"],
        &["peer"],
    );
    let img = env.dir("images");
    env.dump(wl.root_pid(), &img, &["--tcp-established"])
        .expect_success("dump of both ends in their own netns");
    wl.expect_killed_and_reap();
    wl.restore_from(&env, &img, &["--tcp-established"]);
    write_atomic(&wl.path("go"), "").expect("go");
    wl.verify_and_finish("after restore");
    drop(wl);
}

/// Half-closed by the dumped client: it shut down for writing with data
/// still queued (FIN_WAIT1), or after the peer read it all (FIN_WAIT2, the
/// peer's data then waiting unread). The peer gets every byte and one EOF;
/// its own stream still reaches the client.
fn half_closed(test: &str, port: &str, fin_wait2: bool) {
    let Some(env) = Env::setup(test) else {
        return;
    };
    let net = Net::new();
    let (mut dumped, mut other) =
        start_pair(&env, &net, "client-shut", "peer-server", "10.231.0.2", port);
    let total = std::fs::read_to_string(dumped.path("sent-before-dump")).expect("sent");
    write_atomic(&other.path("expect-total"), &total).expect("expect-total");
    let state = if fin_wait2 {
        "fin-wait-2"
    } else {
        "fin-wait-1"
    };
    if fin_wait2 {
        write_atomic(&other.path("go"), "").expect("go");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("ss")
            .args(["-Htn", "state", state])
            .output()
            .expect("ss");
        if String::from_utf8_lossy(&out.stdout).contains(&format!(":{port}")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the client never got to {state}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let img = env.dir("images");
    env.dump(dumped.root_pid(), &img, &["--tcp-established"])
        .expect_success("dump of a half-closed connection");
    dumped.expect_killed_and_reap();
    dumped.restore_from(&env, &img, &["--tcp-established"]);
    if !fin_wait2 {
        write_atomic(&other.path("go"), "").expect("go");
    }
    dumped.verify_and_finish("after restore");
    other.verify_and_finish("peer after restore");
    assert_no_resets(&[(&net.b, "EstabResets"), (&net.a, "OutRsts")]);
    drop(dumped);
    drop(other);
    drop(net);
}

#[test]
fn tcp_half_closed_fin_wait1() {
    half_closed("tcp_half_closed_fin_wait1", "5010", false);
}

#[test]
fn tcp_half_closed_fin_wait2() {
    half_closed("tcp_half_closed_fin_wait2", "5011", true);
}

/// `-R`: the connections leave repair mode, the lock goes, and the
/// original finishes its exchange.
#[test]
fn tcp_established_leave_running() {
    let Some(env) = Env::setup("tcp_established_leave_running") else {
        return;
    };
    let net = Net::new();
    let (mut dumped, mut other) =
        start_pair(&env, &net, "client", "peer-server", "10.231.0.2", "5004");
    let img = env.dir("images");
    let run = env.dump(dumped.root_pid(), &img, &["-R", "--tcp-established"]);
    run.expect_success("dump -R of an established connection");
    assert!(
        !net.nft_tables(&net.a).contains("stasis_lock"),
        "the network lock is still there after dump -R"
    );
    dumped.expect_running("after dump -R");
    write_atomic(&other.path("go"), "").expect("go");
    dumped.verify_and_finish("original after dump -R");
    other.verify_and_finish("peer after dump -R");
    drop(dumped);
    drop(other);
    drop(net);
}

/// Without `--tcp-established` the dump names the connection and the flag;
/// the tree runs on and the connection still works.
#[test]
fn tcp_established_refused() {
    let Some(env) = Env::setup("tcp_established_refused") else {
        return;
    };
    let net = Net::new();
    let (mut dumped, other) = start_pair(&env, &net, "client", "peer-server", "10.231.0.2", "5002");
    let img = env.dir("images");
    let run = env.dump(dumped.root_pid(), &img, &[]);
    run.expect_clear_failure(
        "dump of an established connection without --tcp-established",
        &[&dumped.root_pid().to_string(), "--tcp-established"],
    );
    assert!(run.stderr.contains("10.231.0.2:5002"), "{}", run.stderr);
    dumped.expect_running("after the refused dump");
    write_atomic(&other.path("go"), "").expect("go");
    let mut other = other;
    dumped.verify_and_finish("after the refused dump");
    other.verify_and_finish("peer after the refused dump");
    drop(dumped);
    drop(other);
    drop(net);
}

fn inet_scenario() -> Scenario<'static> {
    Scenario {
        bin: WL_INET,
        args: &[],
        roles: &[],
        flags: &[],
    }
}

#[test]
fn inet_listen_udp_dump_restore() {
    let Some(env) = Env::setup("inet_listen_udp_dump_restore") else {
        return;
    };
    let net = Net::new();
    net.enter(&net.a);
    dump_restore(&env, &inet_scenario());
    drop(net);
}

#[test]
fn inet_listen_udp_leave_running() {
    let Some(env) = Env::setup("inet_listen_udp_leave_running") else {
        return;
    };
    let net = Net::new();
    net.enter(&net.a);
    leave_running_then_restore(&env, &inet_scenario());
    drop(net);
}

/// Raw, packet and netlink sockets are refused by name; the tree runs on.
#[test]
fn inet_other_sockets_refused() {
    let Some(env) = Env::setup("inet_other_sockets_refused") else {
        return;
    };
    let net = Net::new();
    net.enter(&net.a);
    for (arg, name) in [("raw", "raw"), ("packet", "packet"), ("netlink", "netlink")] {
        let mut wl = Workload::start(&env, WL_INET, &[arg], &[]);
        let img = env.dir(&format!("images-{arg}"));
        let run = env.dump(wl.root_pid(), &img, &[]);
        run.expect_clear_failure(
            &format!("dump of a {arg} socket"),
            &[&wl.root_pid().to_string(), name, "fd 16"],
        );
        wl.expect_running("after the refused dump");
        wl.verify_and_finish("after the refused dump");
    }
    drop(net);
}

/// `--tcp-close`: an established connection comes back as a socket that
/// was never connected; the rest of the tree is restored as usual.
#[test]
fn tcp_close_on_restore() {
    let Some(env) = Env::setup("tcp_close_on_restore") else {
        return;
    };
    let net = Net::new();
    let (mut dumped, other) = start_pair(&env, &net, "client", "peer-server", "10.231.0.2", "5006");
    let img = env.dir("images");
    env.dump(dumped.root_pid(), &img, &["--tcp-established"])
        .expect_success("dump");
    dumped.expect_killed_and_reap();
    dumped.restore_from(&env, &img, &["--tcp-close"]);
    let out = Command::new("ss")
        .args(["-Htn", "state", "established"])
        .output()
        .expect("ss");
    let est = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !est.contains(":5006"),
        "a connection restored with --tcp-close is established: {est}"
    );
    assert!(
        !net.nft_tables(&net.a).contains("stasis_lock"),
        "the network lock is still there"
    );
    drop(dumped);
    drop(other);
    drop(net);
}

/// A connection waiting in a listener's accept queue cannot be put back:
/// refused by name; with `--tcp-skip-in-flight` it is dropped and the
/// listener itself restored.
#[test]
fn inet_listen_pending() {
    let Some(env) = Env::setup("inet_listen_pending") else {
        return;
    };
    let net = Net::new();
    net.enter(&net.a);
    let mut wl = Workload::start(&env, WL_INET, &[], &[]);
    let port: u16 = std::fs::read_to_string(wl.path("tcp4-port"))
        .expect("port file")
        .trim()
        .parse()
        .expect("port");
    let pending = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let img = env.dir("images");
    let run = env.dump(wl.root_pid(), &img, &[]);
    run.expect_clear_failure(
        "dump of a listener with a pending connection",
        &[&wl.root_pid().to_string(), "waiting to be accepted"],
    );
    wl.expect_running("after the refused dump");
    let img = env.dir("images2");
    let run = env.dump(wl.root_pid(), &img, &["--tcp-skip-in-flight"]);
    run.expect_success("dump with --tcp-skip-in-flight");
    drop(pending);
    wl.expect_killed_and_reap();
    wl.restore_from(&env, &img, &[]);
    // The restored listener's queue is empty again; the workload's own
    // check connects to it.
    wl.verify_and_finish("after restore");
    drop(wl);
    drop(net);
}

/// Three "nodes" (namespaces n1, n2, c) on one bridge (in namespace s).
struct Nodes {
    ns: Vec<String>,
    home: File,
}

impl Nodes {
    fn new() -> Nodes {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{n}", std::process::id());
        let nodes = Nodes {
            ns: ["s", "n1", "n2", "c"]
                .iter()
                .map(|x| format!("stasis-tcp-{id}-{x}"))
                .collect(),
            home: File::open("/proc/thread-self/ns/net").expect("open own netns"),
        };
        let setup = || -> Result<(), String> {
            for ns in &nodes.ns {
                ip(&["netns", "add", ns])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
            }
            let s = &nodes.ns[0];
            ip(&["-n", s, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", s, "link", "set", "br0", "up"])?;
            for (i, ns) in nodes.ns.iter().enumerate().skip(1) {
                let (here, there) = (format!("sw{i}"), format!("eth{i}"));
                ip(&[
                    "-n", s, "link", "add", &here, "type", "veth", "peer", "name", &there, "netns",
                    ns,
                ])?;
                ip(&["-n", s, "link", "set", &here, "master", "br0"])?;
                ip(&["-n", s, "link", "set", &here, "up"])?;
                ip(&["-n", ns, "link", "set", &there, "up"])?;
            }
            ip(&[
                "-n",
                &nodes.ns[1],
                "addr",
                "add",
                "10.232.0.10/24",
                "dev",
                "eth1",
            ])?;
            ip(&[
                "-n",
                &nodes.ns[3],
                "addr",
                "add",
                "10.232.0.3/24",
                "dev",
                "eth3",
            ])?;
            Ok(())
        };
        if let Err(e) = setup() {
            drop(nodes);
            panic!("network set-up: {e}");
        }
        nodes
    }

    fn enter(&self, i: usize) {
        let f = File::open(format!("/run/netns/{}", self.ns[i])).expect("open netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }

    /// Move the service address (and the MAC it answers with) from n1 to n2.
    /// As an orchestrator must, n2 drops the service's packets from before
    /// the address arrives until the restore is done ([`Nodes::release`]):
    /// the client's window probes would otherwise meet a node that has the
    /// address but no socket yet, and be answered with a reset.
    fn move_service(&self) -> Result<(), String> {
        let (n1, n2) = (&self.ns[1], &self.ns[2]);
        in_ns_with_input(
            n2,
            "nft",
            &["-f", "-"],
            Some(
                "add table inet stasis_test_hold
                 add chain inet stasis_test_hold in { type filter hook input priority -300; }
                 add rule inet stasis_test_hold in ip daddr 10.232.0.10 tcp dport 5005 drop
",
            ),
        )?;
        let show = ip(&["-n", n1, "link", "show", "eth1"])?;
        let mac = show
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .ok_or("no MAC on n1's eth1")?
            .to_string();
        ip(&["-n", n1, "addr", "del", "10.232.0.10/24", "dev", "eth1"])?;
        ip(&["-n", n1, "link", "set", "eth1", "down"])?;
        ip(&["-n", n2, "link", "set", "eth2", "down"])?;
        ip(&["-n", n2, "link", "set", "eth2", "address", &mac])?;
        ip(&["-n", n2, "link", "set", "eth2", "up"])?;
        ip(&["-n", n2, "addr", "add", "10.232.0.10/24", "dev", "eth2"])?;
        Ok(())
    }

    /// End the hold on n2 that [`Nodes::move_service`] began.
    fn release(&self) -> Result<(), String> {
        in_ns(
            &self.ns[2],
            "nft",
            &["delete", "table", "inet", "stasis_test_hold"],
        )
        .map(drop)
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        let _ = nix::sched::setns(&self.home, nix::sched::CloneFlags::CLONE_NEWNET);
        for ns in &self.ns {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

/// A service with an established connection moves from node n1 to node n2
/// (dumped in n1, its address and MAC moved, restored in n2); its client
/// on node c keeps the connection: the exchange completes with every byte
/// once and no reset.
#[test]
fn tcp_service_moves_between_nodes() {
    let Some(env) = Env::setup("tcp_service_moves_between_nodes") else {
        return;
    };
    let nodes = Nodes::new();
    let (mut server, mut client) = std::thread::scope(|sc| {
        let h = sc.spawn(|| {
            nodes.enter(1);
            Workload::start(&env, WL_TCP, &["server", "10.232.0.10", "5005"], &[])
        });
        std::thread::sleep(Duration::from_millis(300));
        nodes.enter(3);
        let c = Workload::start(&env, WL_TCP, &["peer-client", "10.232.0.10", "5005"], &[]);
        (h.join().expect("server start"), c)
    });
    nodes.enter(1);
    let img = env.dir("images");
    let run = env.dump(server.root_pid(), &img, &["--tcp-established"]);
    run.expect_success("dump of the service on n1");
    server.expect_killed_and_reap();
    nodes.move_service().expect("move the service address");
    nodes.enter(2);
    server.restore_from(&env, &img, &["--tcp-established"]);
    nodes.release().expect("end the hold on n2");
    write_atomic(&client.path("go"), "").expect("go");
    server.verify_and_finish("service after the move");
    client.verify_and_finish("client through the move");
    assert_eq!(
        tcp_counter(&nodes.ns[3], "EstabResets"),
        0,
        "client saw a reset"
    );
    drop(server);
    drop(client);
    drop(nodes);
}
