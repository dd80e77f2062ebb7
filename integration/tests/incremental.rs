//! Incremental images (CRIU's pre-dump layout): pagemap entries flagged
//! PE_PARENT whose pages are in the `parent` image directory.
//! - restore: images made from two full dumps of `wl-mem` (the first with
//!   `-R`), every page of the second that the first holds unchanged moved
//!   to the parent by the test;
//! - `criu pre-dump --track-mem` then `criu dump --track-mem
//!   --prev-images-dir ../pre`: only pages written in between are saved
//!   again (uffd write-protect tracking); `wl-mem` verifies its memory and
//!   `wl-counter` counts on without a gap after the restore.

use std::fs;
use std::io::{BufReader, BufWriter};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use stasis_integration::harness::{process_exists, wait_gone, Env, Spawn, Workload};
use stasis_proto::criu::{PagemapEntry, PagemapHead};
use stasis_proto::image::{magic, Header, ImageReader, ImageWriter};

const PAGE: usize = 4096;
const PE_PARENT: u32 = 1;
const PE_PRESENT: u32 = 4;

/// A pagemap image: its head and (vaddr, nr_pages, flags) entries.
fn read_pagemap(path: &Path) -> (PagemapHead, Vec<(u64, u64, u32)>) {
    let f = fs::File::open(path).expect("open pagemap");
    let mut r = ImageReader::open(
        BufReader::new(f),
        Header::Common(magic::PAGEMAP),
        path.display().to_string(),
    )
    .expect("pagemap header");
    let head: PagemapHead = r.read_entry().expect("read").expect("pagemap head");
    let mut out = Vec::new();
    while let Some(e) = r.read_entry::<PagemapEntry>().expect("read pagemap entry") {
        out.push((
            e.vaddr,
            e.nr_pages.unwrap_or(u64::from(e.compat_nr_pages)),
            e.flags.unwrap_or(PE_PRESENT),
        ));
    }
    (head, out)
}

/// Each present page of a pagemap with its bytes.
fn pages_of(dir: &Path, name: &str) -> Vec<(u64, Vec<u8>)> {
    let (head, ents) = read_pagemap(&dir.join(name));
    let data = fs::read(dir.join(format!("pages-{}.img", head.pages_id))).expect("pages");
    let mut off = 0;
    let mut out = Vec::new();
    for (a, n, flags) in ents {
        assert!(flags & PE_PRESENT != 0, "{name}: a full dump");
        for i in 0..n {
            out.push((a + i * PAGE as u64, data[off..off + PAGE].to_vec()));
            off += PAGE;
        }
    }
    out
}

/// Rewrite the private pagemaps of `b` so that pages equal in `a` are in
/// the parent; returns (pages moved to the parent, pages kept).
fn make_incremental(a: &Path, b: &Path) -> (usize, usize) {
    let (mut moved, mut kept) = (0, 0);
    for e in fs::read_dir(b).expect("read image dir") {
        let name = e.expect("dir entry").file_name().into_string().unwrap();
        if !name.starts_with("pagemap-") || name.starts_with("pagemap-shmem-") {
            continue;
        }
        if !a.join(&name).exists() {
            continue;
        }
        let old: std::collections::HashMap<u64, Vec<u8>> = pages_of(a, &name).into_iter().collect();
        let (head, _) = read_pagemap(&b.join(&name));
        let new = pages_of(b, &name);
        // (vaddr, nr, flags) runs and the bytes of the present ones.
        let mut runs: Vec<(u64, u64, u32)> = Vec::new();
        let mut data = Vec::new();
        for (addr, bytes) in new {
            let flags = if old.get(&addr) == Some(&bytes) {
                moved += 1;
                PE_PARENT
            } else {
                kept += 1;
                data.extend_from_slice(&bytes);
                PE_PRESENT
            };
            match runs.last_mut() {
                Some(r) if r.2 == flags && r.0 + r.1 * PAGE as u64 == addr => r.1 += 1,
                _ => runs.push((addr, 1, flags)),
            }
        }
        let f = fs::File::create(b.join(&name)).expect("rewrite pagemap");
        let mut w = ImageWriter::new(BufWriter::new(f), Header::Common(magic::PAGEMAP))
            .expect("pagemap header");
        w.write_entry(&head).expect("write head");
        for (vaddr, nr, flags) in runs {
            w.write_entry(&PagemapEntry {
                vaddr,
                compat_nr_pages: nr as u32,
                in_parent: None,
                nr_pages: Some(nr),
                flags: Some(flags),
            })
            .expect("write entry");
        }
        w.finish().expect("finish pagemap");
        fs::write(b.join(format!("pages-{}.img", head.pages_id)), data).expect("rewrite pages");
    }
    (moved, kept)
}

#[test]
fn restore_from_incremental_images() {
    let Some(env) = Env::setup("restore_from_incremental_images") else {
        return;
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-mem"), &[], &["child"]);
    let a = env.dir("A");
    let b = env.dir("B");
    env.dump(wl.root_pid(), &a, &["-R"])
        .expect_success("wl-mem: dump -R (parent)");
    wl.expect_running("after dump -R");
    env.dump(wl.root_pid(), &b, &[])
        .expect_success("wl-mem: dump");
    wl.expect_killed_and_reap();
    let (moved, kept) = make_incremental(&a, &b);
    println!("pages in the parent: {moved}, in the child image: {kept}");
    assert!(moved > 0, "most memory did not change between the dumps");
    symlink("../A", b.join("parent")).expect("parent link");
    wl.restore_from(&env, &b, &[]);
    wl.verify_and_finish("after restore from incremental images");
}

#[test]
fn restore_without_the_parent_fails_clearly() {
    let Some(env) = Env::setup("restore_without_the_parent_fails_clearly") else {
        return;
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-small"), &[], &[]);
    let a = env.dir("A");
    let b = env.dir("B");
    env.dump(wl.root_pid(), &a, &["-R"])
        .expect_success("wl-small: dump -R (parent)");
    env.dump(wl.root_pid(), &b, &[])
        .expect_success("wl-small: dump");
    wl.expect_killed_and_reap();
    assert!(make_incremental(&a, &b).0 > 0);
    let run = env.restore(&b, &env.path("pid"), &[]);
    run.expect_clear_failure("restore without parent", &["parent"]);
}

/// Bytes in the pages images of a directory.
fn pages_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("read image dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum()
}

/// The memory tracker a pre-dump left running.
fn tracker(pre: &Path) -> i32 {
    fs::read_to_string(pre.join("stasis-mem-track"))
        .expect("the pre-dump names its memory tracker")
        .trim()
        .parse()
        .expect("tracker pid")
}

#[test]
fn pre_dump_then_dump_saves_only_written_pages() {
    let Some(env) = Env::setup("pre_dump_then_dump_saves_only_written_pages") else {
        return;
    };
    let mut wl = Workload::start(&env, env!("CARGO_BIN_EXE_wl-mem"), &[], &["child"]);
    let pre = env.dir("pre");
    let fin = env.dir("dump");
    env.pre_dump(wl.root_pid(), &pre, &["--track-mem"])
        .expect_success("wl-mem: pre-dump");
    wl.expect_running("after pre-dump");
    let holder = tracker(&pre);
    assert!(process_exists(holder), "the memory tracker runs");
    env.dump(
        wl.root_pid(),
        &fin,
        &["--track-mem", "--prev-images-dir", "../pre"],
    )
    .expect_success("wl-mem: dump on the pre-dump");
    wl.expect_killed_and_reap();
    let (full, inc) = (pages_bytes(&pre), pages_bytes(&fin));
    println!("pre-dump pages: {full} bytes, dump pages: {inc} bytes");
    assert!(
        inc * 20 < full,
        "the dump saves only what changed ({inc} of {full} bytes)"
    );
    wait_gone(&[holder], Duration::from_secs(5)).expect("the dump ends the tracking");
    wl.restore_from(&env, &fin, &[]);
    wl.verify_and_finish("after restore from a dump on a pre-dump");
}

#[test]
fn pre_dump_counter_continues() {
    let Some(env) = Env::setup("pre_dump_counter_continues") else {
        return;
    };
    let mut wl = Workload::start_with(
        &env,
        env!("CARGO_BIN_EXE_wl-counter"),
        &[],
        &[],
        Spawn::default(),
    );
    let log = wl.path("stdout");
    let count = || {
        fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("count "))
            .count()
    };
    let wait = |n: usize| {
        let t = Instant::now();
        while count() < n {
            assert!(t.elapsed() < Duration::from_secs(10), "counter stuck");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(3);
    let pre = env.dir("pre");
    let fin = env.dir("dump");
    env.pre_dump(wl.root_pid(), &pre, &[])
        .expect_success("wl-counter: pre-dump");
    // The counter runs on and writes its memory before the dump.
    let after_pre = count();
    wait(after_pre + 3);
    env.dump(wl.root_pid(), &fin, &["--prev-images-dir", "../pre"])
        .expect_success("wl-counter: dump on the pre-dump");
    wl.expect_killed_and_reap();
    let before = count();
    wl.restore_from(&env, &fin, &[]);
    wait(before + 5);
    let text = fs::read_to_string(&log).expect("counter log");
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let got: Vec<u64> = complete
        .lines()
        .map(|l| {
            l.strip_prefix("count ")
                .and_then(|n| n.parse().ok())
                .expect("count line")
        })
        .collect();
    let want: Vec<u64> = (0..got.len() as u64).collect();
    assert_eq!(got, want, "count 0, 1, 2, ... without gaps or repeats");
    wl.verify_and_finish("after restore");
}
