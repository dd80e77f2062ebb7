//! `stasis`: the command line. `stasis criu ...` (or started as `criu`) is
//! the CRIU-compatible CLI; everything else is the runc-compatible runtime.
#![deny(unsafe_code)]

mod criu;
mod logging;
mod rtlog;
mod runtime;

use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "stasis",
    version,
    about = "Checkpoint/restore for Linux processes and containers"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// CRIU-compatible commands (also what the binary does when named `criu`).
    Criu(criu::CriuCli),
}

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let invoked_as = Path::new(&argv0)
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut args: Vec<_> = std::env::args_os().collect();
    let result = if invoked_as == "criu" {
        // `criu ARGS` == `stasis criu ARGS`.
        args[0] = "criu".into();
        criu::parse_or_exit(args).run()
    } else if args.len() > 2 && args[1] == "criu" {
        // CRIU's own option errors and usage, not clap's.
        args.remove(0);
        criu::parse_or_exit(args).run()
    } else if args.get(1).map(|a| a != "criu").unwrap_or(true) {
        // runc-compatible runtime commands.
        return runtime::main(std::env::args().collect());
    } else {
        match Cli::parse().cmd {
            Cmd::Criu(c) => c.run(),
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, naming the object; details went to the log.
            eprintln!("Error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

fn one_line(e: &anyhow::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        src = c.source();
    }
    s.replace('\n', " ")
}
