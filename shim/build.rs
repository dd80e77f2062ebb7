//! Link `stasis` as a position-dependent executable: a PIE carries ~19,000
//! relative relocations that ld.so applies at every start, about a third
//! of a small dump's CPU time; non-PIE resolves them at link time.
fn main() {
    println!("cargo:rustc-link-arg-bin=stasis=-no-pie");
}
