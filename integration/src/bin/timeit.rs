//! `timeit FILE CMD ARGS...`: run CMD with inherited stdio, write its wall
//! time in milliseconds to FILE, exit with its status. The benchmark uses it
//! instead of `date` around a command, which would add two process starts.

use std::process::{exit, Command};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: timeit FILE CMD [ARGS...]");
        exit(2);
    }
    let t = Instant::now();
    let status = match Command::new(&args[1]).args(&args[2..]).status() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("timeit: {}: {e}", args[1]);
            exit(127);
        }
    };
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    if let Err(e) = std::fs::write(&args[0], format!("{ms:.2}\n")) {
        eprintln!("timeit: {}: {e}", args[0]);
        exit(2);
    }
    exit(status.code().unwrap_or(1));
}
