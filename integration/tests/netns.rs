//! A tree in a network namespace of its own with real networking, dumped
//! and restored with it (CRIU's netdev/netns/ifaddr/route/nftables images).
//!
//! Topology: an "outside" namespace (`nl-<id>-o`, named) with a bridge
//! holding 10.233.N.1/24 and fd00:233:N::1/64; the tree's namespace (made
//! by a test thread with unshare, so it lives exactly as long as the tree)
//! has lo with an extra v4 and v6 address, a veth `nl0` (MAC and MTU set)
//! whose other end is on that bridge, a macvlan `mv0` over the bridge, a
//! veth pair `nlp0`/`nlp1` with both ends inside (addresses on both),
//! 10.233.N.2/24 and fd00:233:N::2/64 on nl0, a v4 and a v6 route via the
//! bridge, changed sysctls (ip_forward, nl0's rp_filter and hop_limit,
//! unix max_dgram_qlen) and an nft table dropping TCP port 7777.
//!
//! After the dump the tree's namespace is gone (its veth and macvlan with
//! it); restore runs in the outside namespace with `--external
//! veth[nl0]:OUT@BRIDGE` and `--external macvlan[mv0]:BRIDGE`. Then the
//! links, addresses, routes, sysctls and ruleset must be as before, and
//! traffic over the veth works: an ESTABLISHED connection to a peer
//! outside survives (`--tcp-established`, no reset), new connections get
//! through to both addresses (and the nft rule still drops port 7777).
//!
//! A namespace with a link we cannot restore (a bridge inside) is refused
//! at dump, naming the pid and the link. Every test deletes the outside
//! namespace when it ends, failed or not; the tree's namespace (and its
//! nft table) goes with the tree.
//!
//! Root only; needs `ip`, `nft`, `nsenter`; run with `--test-threads=1`.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use stasis_integration::harness::{Env, Workload};
use stasis_integration::net::{in_ns, ip, run_with_input, tcp_counter};
use stasis_integration::workload::write_atomic;

const WL_TCP: &str = env!("CARGO_BIN_EXE_wl-tcp");
const WL_INET: &str = env!("CARGO_BIN_EXE_wl-inet");

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The outside namespace and the names of this test's devices. Dropping
/// it puts the test thread home and deletes the outside namespace (the
/// bridge and the outer veth ends go with it).
struct Topo {
    n: u32,
    out_ns: String,
    bridge: String,
    /// The veth's end on the bridge.
    outer: String,
    home: File,
    /// A third "node" on the bridge (see [`Topo::add_node`]).
    node: Option<String>,
}

impl Topo {
    fn new() -> Topo {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() % 100_000;
        // Subnets per test (N in 10.233.N.0/24): unique within this run.
        let sub = (pid * 4 + n) % 250 + 1;
        let t = Topo {
            n: sub,
            out_ns: format!("nl-{pid}-{n}-o"),
            bridge: format!("nlb{pid}x{n}"),
            outer: format!("nlo{pid}x{n}"),
            home: File::open("/proc/thread-self/ns/net").expect("open own netns"),
            node: None,
        };
        let o = &t.out_ns;
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", o])?;
            ip(&["-n", o, "link", "set", "lo", "up"])?;
            ip(&["-n", o, "link", "add", &t.bridge, "type", "bridge"])?;
            ip(&["-n", o, "addr", "add", &t.v4(1, 24), "dev", &t.bridge])?;
            ip(&[
                "-n",
                o,
                "addr",
                "add",
                &t.v6(1, 64),
                "dev",
                &t.bridge,
                "nodad",
            ])?;
            ip(&["-n", o, "link", "set", &t.bridge, "up"])?;
            // The tree's extra addresses are reached through its veth.
            ip(&[
                "-n",
                o,
                "route",
                "add",
                &format!("10.235.{}.5/32", t.n),
                "via",
                &t.v4(2, 0),
            ])?;
            ip(&[
                "-n",
                o,
                "-6",
                "route",
                "add",
                &format!("fd00:235:{}::5/128", t.n),
                "via",
                &t.v6(2, 0),
            ])?;
            Ok(())
        };
        if let Err(e) = setup() {
            drop(t);
            panic!("outside namespace set-up: {e}");
        }
        t
    }

    /// A namespace `nl-<id>-c` on the bridge with 10.233.N.3 (a client
    /// node); returns its path.
    fn add_node(&mut self) -> String {
        let c = self.out_ns.replace("-o", "-c");
        self.node = Some(c.clone());
        let (here, there) = (self.outer.replace("nlo", "nlc"), "nlc0");
        let setup = || -> Result<(), String> {
            ip(&["netns", "add", &c])?;
            ip(&["-n", &c, "link", "set", "lo", "up"])?;
            ip(&[
                "-n",
                &self.out_ns,
                "link",
                "add",
                &here,
                "type",
                "veth",
                "peer",
                "name",
                there,
                "netns",
                &c,
            ])?;
            ip(&[
                "-n",
                &self.out_ns,
                "link",
                "set",
                &here,
                "master",
                &self.bridge,
                "up",
            ])?;
            ip(&["-n", &c, "addr", "add", &self.v4(3, 24), "dev", there])?;
            ip(&["-n", &c, "link", "set", there, "up"])?;
            Ok(())
        };
        setup().unwrap_or_else(|e| panic!("client node set-up: {e}"));
        format!("/run/netns/{c}")
    }

    /// 10.233.N.host[/prefix].
    fn v4(&self, host: u32, prefix: u32) -> String {
        match prefix {
            0 => format!("10.233.{}.{host}", self.n),
            p => format!("10.233.{}.{host}/{p}", self.n),
        }
    }

    fn v6(&self, host: u32, prefix: u32) -> String {
        match prefix {
            0 => format!("fd00:233:{}::{host}", self.n),
            p => format!("fd00:233:{}::{host}/{p}", self.n),
        }
    }

    fn out_path(&self) -> String {
        format!("/run/netns/{}", self.out_ns)
    }

    /// Move the calling thread into the outside namespace.
    fn enter_outside(&self) {
        let f = File::open(self.out_path()).expect("open outside netns");
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns outside");
    }

    /// Set up the namespace the calling thread is in as the tree's.
    fn setup_inside(&self) -> Result<(), String> {
        let o = &self.out_ns;
        ip(&["link", "set", "lo", "up"])?;
        ip(&[
            "link",
            "add",
            "nl0",
            "type",
            "veth",
            "peer",
            "name",
            &self.outer,
            "netns",
            o,
        ])?;
        ip(&[
            "-n",
            o,
            "link",
            "set",
            &self.outer,
            "master",
            &self.bridge,
            "up",
        ])?;
        let mac = format!("02:00:00:33:{:02x}:02", self.n);
        ip(&["link", "set", "nl0", "address", &mac, "mtu", "1400", "up"])?;
        ip(&["addr", "add", &self.v4(2, 24), "dev", "nl0"])?;
        ip(&["addr", "add", &self.v6(2, 64), "dev", "nl0", "nodad"])?;
        ip(&[
            "addr",
            "add",
            &format!("10.235.{}.5/32", self.n),
            "dev",
            "lo",
        ])?;
        ip(&[
            "addr",
            "add",
            &format!("fd00:235:{}::5/128", self.n),
            "dev",
            "lo",
        ])?;
        ip(&[
            "route",
            "add",
            &format!("10.234.{}.0/24", self.n),
            "via",
            &self.v4(1, 0),
        ])?;
        ip(&[
            "-6",
            "route",
            "add",
            &format!("fd00:234:{}::/64", self.n),
            "via",
            &self.v6(1, 0),
        ])?;
        // A macvlan over the outside bridge, moved in here.
        let tid = nix::unistd::gettid().to_string();
        ip(&[
            "-n",
            o,
            "link",
            "add",
            "mv0",
            "link",
            &self.bridge,
            "type",
            "macvlan",
            "mode",
            "bridge",
        ])?;
        ip(&["-n", o, "link", "set", "mv0", "netns", &tid])?;
        let mac = format!("02:00:00:35:{:02x}:07", self.n);
        ip(&["link", "set", "mv0", "address", &mac, "up"])?;
        // A veth pair with both ends in here.
        ip(&[
            "link", "add", "nlp0", "type", "veth", "peer", "name", "nlp1",
        ])?;
        ip(&["link", "set", "nlp1", "mtu", "1300"])?;
        ip(&["addr", "add", "10.236.0.1/30", "dev", "nlp0"])?;
        ip(&["addr", "add", "10.236.0.2/30", "dev", "nlp1"])?;
        ip(&["link", "set", "nlp0", "up"])?;
        ip(&["link", "set", "nlp1", "up"])?;
        for (k, v) in [
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv4/conf/nl0/rp_filter", "2"),
            ("net/ipv6/conf/nl0/hop_limit", "33"),
            ("net/unix/max_dgram_qlen", "77"),
        ] {
            std::fs::write(format!("/proc/sys/{k}"), v).map_err(|e| format!("sysctl {k}: {e}"))?;
        }
        run_with_input(
            "nft",
            &["-f", "-"],
            Some(
                "add table inet nltest\n\
                 add chain inet nltest in { type filter hook input priority 0; policy accept; }\n\
                 add rule inet nltest in tcp dport 7777 counter drop\n",
            ),
        )?;
        Ok(())
    }

    /// Start `bin args` in a fresh namespace set up as the tree's.
    fn start_inside(&self, env: &Env, bin: &str, args: &[&str]) -> Workload {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
                if let Err(e) = self.setup_inside() {
                    panic!("tree namespace set-up: {e}");
                }
                Workload::start(env, bin, args, &[])
            })
            .join()
            .expect("start the tree in its namespace")
        })
    }

    /// Wait until the dumped namespace is gone (its veth end leaves the
    /// bridge): the restore makes the same names again.
    fn wait_outer_gone(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while ip(&["-n", &self.out_ns, "link", "show", &self.outer]).is_ok() {
            assert!(
                Instant::now() < deadline,
                "the old veth end {} is still there",
                self.outer
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn externals(&self) -> Vec<String> {
        vec![
            "--external".into(),
            format!("veth[nl0]:{}@{}", self.outer, self.bridge),
            "--external".into(),
            format!("macvlan[mv0]:{}", self.bridge),
        ]
    }

    /// Restore from the outside namespace (where the outer ends go).
    fn restore(&self, env: &Env, wl: &mut Workload, img: &std::path::Path, extra: &[&str]) {
        let ext = self.externals();
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(ext.iter().map(|s| s.as_str()));
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter_outside();
                wl.restore_from(env, img, &args);
            })
            .join()
            .expect("restore")
        });
    }

    /// New connections from outside over the veth: port 7778 is closed
    /// (the kernel answers with a reset: refused, promptly), port 7777 is
    /// dropped by the tree's nft rule (times out); to the veth's and to
    /// lo's extra addresses, v4 and v6.
    fn check_traffic(&self, when: &str) {
        let targets = [
            self.v4(2, 0),
            format!("10.235.{}.5", self.n),
            format!("[{}]", self.v6(2, 0)),
            format!("[fd00:235:{}::5]", self.n),
        ];
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter_outside();
                for t in &targets {
                    let a: SocketAddr = format!("{t}:7778").parse().expect("address");
                    // IPv6 neighbours may need a moment after a restore.
                    let deadline = Instant::now() + Duration::from_secs(5);
                    loop {
                        match TcpStream::connect_timeout(&a, Duration::from_secs(2)) {
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                            r if Instant::now() > deadline => {
                                panic!("{when}: connect to {a}: expected refused, got {r:?}")
                            }
                            _ => std::thread::sleep(Duration::from_millis(100)),
                        }
                    }
                    let a: SocketAddr = format!("{t}:7777").parse().expect("address");
                    match TcpStream::connect_timeout(&a, Duration::from_millis(700)) {
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        r => panic!("{when}: connect to {a} (dropped by nft): got {r:?}"),
                    }
                }
            })
            .join()
            .expect("traffic check")
        });
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        let _ = nix::sched::setns(&self.home, nix::sched::CloneFlags::CLONE_NEWNET);
        let _ = ip(&["netns", "del", &self.out_ns]);
        if let Some(c) = &self.node {
            let _ = ip(&["netns", "del", c]);
        }
    }
}

/// What must be restored of the tree's namespace, as text: links (name,
/// MTU, MAC, up), addresses, main-table routes (v4, v6), the sysctls set
/// and the nft ruleset (counters left out).
fn net_state(pid: i32) -> String {
    let ns = format!("/proc/{pid}/ns/net");
    let q = |prog: &str, args: &[&str]| {
        in_ns(&ns, prog, args).unwrap_or_else(|e| panic!("read the state of {ns}: {e}"))
    };
    let mut s = String::new();
    for l in q("ip", &["-o", "-d", "link", "show"]).lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        let name = w.get(1).unwrap_or(&"").trim_end_matches(':');
        let name = name.split('@').next().unwrap_or(name);
        let after = |k: &str| {
            w.iter()
                .position(|x| *x == k)
                .and_then(|i| w.get(i + 1))
                .copied()
                .unwrap_or("-")
        };
        let up = w
            .get(2)
            .is_some_and(|f| f.contains(",UP") || f.contains("<UP"));
        let mode = if l.contains("macvlan mode bridge") {
            " macvlan-bridge"
        } else {
            ""
        };
        s.push_str(&format!(
            "link {name} mtu {} mac {} up {up}{mode}\n",
            after("mtu"),
            after("link/ether")
        ));
    }
    for l in q("ip", &["-o", "addr", "show"]).lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        // "2: nl0 inet 10.233.1.2/24 ... scope global nl0"
        let scope = w
            .iter()
            .position(|x| *x == "scope")
            .and_then(|i| w.get(i + 1))
            .unwrap_or(&"-");
        s.push_str(&format!(
            "addr {} {} {} scope {scope}\n",
            w.get(1).unwrap_or(&""),
            w.get(2).unwrap_or(&""),
            w.get(3).unwrap_or(&"")
        ));
    }
    // Sorted: routes of links that came up together are listed in either
    // order.
    let mut routes = Vec::new();
    for fam in ["-4", "-6"] {
        for l in q("ip", &[fam, "route", "show", "table", "main"]).lines() {
            routes.push(format!("route {}\n", l.trim()));
        }
    }
    routes.sort();
    s.extend(routes);
    for k in [
        "net.ipv4.ip_forward",
        "net.ipv4.conf.nl0.rp_filter",
        "net.ipv6.conf.nl0.hop_limit",
        "net.unix.max_dgram_qlen",
    ] {
        s.push_str(&q("sysctl", &[k]));
    }
    let rules = q("nft", &["list", "ruleset"]);
    let mut skip = false;
    for l in rules.lines() {
        // Our network lock, if any, is not the tree's.
        if l.starts_with("table inet stasis_lock_") {
            skip = true;
        }
        if !skip {
            let l = match l.find("counter packets") {
                Some(i) => format!("{}counter", &l[..i]),
                None => l.to_string(),
            };
            s.push_str(&format!("nft {l}\n"));
        }
        if skip && l == "}" {
            skip = false;
        }
    }
    s
}

fn expect_same(before: &str, after: &str) {
    if before != after {
        let b: Vec<&str> = before.lines().collect();
        let a: Vec<&str> = after.lines().collect();
        let lost: Vec<_> = b.iter().filter(|l| !a.contains(l)).collect();
        let new: Vec<_> = a.iter().filter(|l| !b.contains(l)).collect();
        panic!(
            "network namespace differs after restore\nmissing: {lost:#?}\nnew: {new:#?}\n\
             --- before ---\n{before}--- after ---\n{after}"
        );
    }
}

/// A client in the tree's namespace with an established connection over
/// the veth to a server outside; dumped (killed) with --tcp-established,
/// the namespace gone, restored with its links: the namespace is as it
/// was, the connection finishes with no byte lost and no reset, and new
/// connections get through.
#[test]
fn netns_veth_established_dump_restore() {
    let Some(env) = Env::setup("netns_veth_established_dump_restore") else {
        return;
    };
    let topo = Topo::new();
    let port = "5301";
    let server_ip = topo.v4(1, 0);
    let (mut client, mut server) = std::thread::scope(|s| {
        let h = s.spawn(|| {
            topo.enter_outside();
            Workload::start(&env, WL_TCP, &["peer-server", &server_ip, port], &[])
        });
        std::thread::sleep(Duration::from_millis(300));
        let c = topo.start_inside(&env, WL_TCP, &["client", &server_ip, port]);
        (c, h.join().expect("server start"))
    });
    let before = net_state(client.root_pid());
    let img = env.dir("images");
    env.dump(client.root_pid(), &img, &["--tcp-established"])
        .expect_success("dump of a tree with its own network namespace");
    client.expect_killed_and_reap();
    for f in [
        "netdev-",
        "netns-",
        "ifaddr-",
        "route-",
        "route6-",
        "nftables-",
    ] {
        let found = std::fs::read_dir(&img)
            .expect("images")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(f));
        assert!(found, "no {f}*.img in the images");
    }
    let nft = std::fs::read_dir(&img)
        .expect("images")
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("nftables-"))
        .map(|e| std::fs::read_to_string(e.path()).expect("nftables image"))
        .unwrap_or_default();
    assert!(nft.contains("table inet nltest"), "{nft}");
    assert!(
        !nft.contains("stasis_lock"),
        "the lock table was saved: {nft}"
    );
    topo.wait_outer_gone();
    topo.restore(&env, &mut client, &img, &["--tcp-established"]);
    let after = net_state(client.root_pid());
    expect_same(&before, &after);
    write_atomic(&server.path("go"), "").expect("go");
    client.verify_and_finish("after restore");
    server.verify_and_finish("peer after restore");
    let out = topo.out_path();
    assert_eq!(tcp_counter(&out, "EstabResets"), 0, "the peer saw a reset");
    drop(client);
    drop(server);
    drop(topo);
}

/// A service moves between nodes with its namespace: the server side of
/// an established connection, in the tree's namespace (its address and MAC
/// on the veth), is dumped; its client sits on a third node behind the
/// bridge. The namespace is made again at restore, the veth plugged into
/// the same bridge, and the service address comes back with it (nothing is
/// moved by hand): the client keeps its connection, sees no reset and every
/// byte once.
#[test]
fn netns_service_moves_with_its_namespace() {
    let Some(env) = Env::setup("netns_service_moves_with_its_namespace") else {
        return;
    };
    let mut topo = Topo::new();
    let node = topo.add_node();
    let port = "5302";
    let service = topo.v4(2, 0);
    let (mut server, mut client) = std::thread::scope(|s| {
        let h = s.spawn(|| topo.start_inside(&env, WL_TCP, &["server", &service, port]));
        std::thread::sleep(Duration::from_millis(500));
        let c = s
            .spawn(|| {
                let f = File::open(&node).expect("open client node");
                nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                Workload::start(&env, WL_TCP, &["peer-client", &service, port], &[])
            })
            .join()
            .expect("client start");
        (h.join().expect("server start"), c)
    });
    let before = net_state(server.root_pid());
    let img = env.dir("images");
    env.dump(server.root_pid(), &img, &["--tcp-established"])
        .expect_success("dump of the service with its namespace");
    server.expect_killed_and_reap();
    topo.wait_outer_gone();
    topo.restore(&env, &mut server, &img, &["--tcp-established"]);
    expect_same(&before, &net_state(server.root_pid()));
    write_atomic(&client.path("go"), "").expect("go");
    server.verify_and_finish("service after the move");
    client.verify_and_finish("client through the move");
    assert_eq!(
        tcp_counter(&node, "EstabResets"),
        0,
        "the client saw a reset"
    );
    drop(server);
    drop(client);
    drop(topo);
}

/// The same namespace under a tree with listeners and UDP sockets, dumped
/// with --leave-running: the original goes on (and traffic with it); once
/// it is gone the images restore the namespace again.
#[test]
fn netns_veth_leave_running() {
    let Some(env) = Env::setup("netns_veth_leave_running") else {
        return;
    };
    let topo = Topo::new();
    let mut wl = topo.start_inside(&env, WL_INET, &[]);
    let before = net_state(wl.root_pid());
    topo.check_traffic("before the dump");
    let img = env.dir("images");
    env.dump(wl.root_pid(), &img, &["-R"])
        .expect_success("dump -R of a tree with its own network namespace");
    wl.expect_running("after dump -R");
    topo.check_traffic("original after dump -R");
    expect_same(&before, &net_state(wl.root_pid()));
    wl.verify_and_finish("original after dump -R");
    wl.reset();
    topo.wait_outer_gone();
    topo.restore(&env, &mut wl, &img, &[]);
    expect_same(&before, &net_state(wl.root_pid()));
    topo.check_traffic("after restore");
    wl.verify_and_finish("after restore");
    drop(wl);
    drop(topo);
}

/// Restore options: without `--external macvlan[mv0]:DEV` the images are
/// refused by name; with `--empty-ns net` the namespace gets loopback only
/// (the caller would set up the rest) and the tree runs in it.
#[test]
fn netns_restore_options() {
    let Some(env) = Env::setup("netns_restore_options") else {
        return;
    };
    let topo = Topo::new();
    let mut wl = topo.start_inside(&env, WL_INET, &[]);
    let img = env.dir("images");
    env.dump(wl.root_pid(), &img, &[])
        .expect_success("dump of a tree with its own network namespace");
    wl.expect_killed_and_reap();
    topo.wait_outer_gone();
    let run = env.restore(&img, &env.path("refused.pid"), &[]);
    run.expect_clear_failure(
        "restore of a macvlan without its external device",
        &["macvlan[mv0]"],
    );
    wl.restore_from(&env, &img, &["--empty-ns", "net"]);
    let links = in_ns(
        &format!("/proc/{}/ns/net", wl.root_pid()),
        "ip",
        &["-o", "link", "show"],
    )
    .expect("links");
    assert_eq!(links.lines().count(), 1, "not only loopback: {links}");
    assert!(links.contains("lo:") && links.contains(",UP"), "{links}");
    wl.verify_and_finish("after restore into an empty namespace");
    drop(wl);
    drop(topo);
}

/// A link we cannot make again (a bridge inside the namespace) is refused
/// at dump by name; the tree runs on.
#[test]
fn netns_unsupported_link_refused() {
    let Some(env) = Env::setup("netns_unsupported_link_refused") else {
        return;
    };
    let topo = Topo::new();
    let mut wl = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            ip(&["link", "set", "lo", "up"]).expect("lo up");
            ip(&["link", "add", "nlbrin", "type", "bridge"]).expect("bridge inside");
            Workload::start(&env, WL_INET, &[], &[])
        })
        .join()
        .expect("start")
    });
    let img = env.dir("images");
    let run = env.dump(wl.root_pid(), &img, &[]);
    run.expect_clear_failure(
        "dump of a namespace with a bridge inside",
        &[&wl.root_pid().to_string(), "nlbrin", "bridge"],
    );
    wl.expect_running("after the refused dump");
    wl.verify_and_finish("after the refused dump");
    drop(wl);
    drop(topo);
}
