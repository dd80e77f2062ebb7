//! Compiles `protos/*.proto` (package `criu`) with protox + prost-build;
//! no system `protoc` is needed. Output: `$OUT_DIR/criu.rs`.

use std::path::PathBuf;

fn main() {
    let dir = PathBuf::from("protos");
    println!("cargo:rerun-if-changed=protos");
    println!("cargo:rerun-if-changed=build.rs");

    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read protos/")
        .map(|e| e.expect("read protos/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();

    let fds = match protox::compile(&files, [&dir]) {
        Ok(fds) => fds,
        Err(e) => panic!("protox failed: {e:?}"),
    };

    // file_entry holds one optional field per file kind: inline, they make
    // it 2.2 KB, boxed 0.2 KB. A restore keeps every file entry in memory
    // (a fork copies its page tables once per process), so all are boxed.
    let mut cfg = prost_build::Config::new();
    for kind in [
        "reg", "isk", "nsf", "psk", "nlsk", "efd", "epfd", "sgfd", "tunf", "tfd", "ify", "ffy",
        "ext", "usk", "fifo", "pipe", "tty", "memfd", "bpf", "pidfd",
    ] {
        cfg.boxed(format!(".criu.file_entry.{kind}"));
    }
    cfg.compile_fds(fds).expect("prost-build code generation");
}
