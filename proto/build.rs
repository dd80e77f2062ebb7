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

    prost_build::Config::new()
        .compile_fds(fds)
        .expect("prost-build code generation");
}
