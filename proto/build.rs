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

    // file_entry holds one optional field per file kind inline: boxing the
    // big ones nobody restores yet (inet, packet, netlink sockets, bpf
    // maps) halves it (2.2 -> 1.1 KB). A restore keeps every file entry in
    // memory and forks once per process: the copied page tables shrink too.
    prost_build::Config::new()
        .boxed(".criu.file_entry.isk")
        .boxed(".criu.file_entry.psk")
        .boxed(".criu.file_entry.nlsk")
        .boxed(".criu.file_entry.bpf")
        .compile_fds(fds)
        .expect("prost-build code generation");
}
