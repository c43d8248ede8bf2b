//! `yukicomm`: see inside a running yukicomm program, and act on it.
//!
//! It finds the running main processes of the current user (each advertises itself;
//! see `yukicomm_hub::discovery`), or takes one with `--pid` or `--socket`, connects to
//! its hub as an observer (only the same user may), and asks. `status` exits with 1
//! when a process is not healthy, 2 on any error; a closed pipe on the output is not an
//! error.
//!
//! ```text
//! yukicomm status            # a table; --json for scripts
//! yukicomm top               # a live view; q or Ctrl-C quits
//! yukicomm monitor 'orders.*'
//! yukicomm restart worker
//! ```
#![deny(missing_docs)]

mod cli;
mod command;
mod connect;
mod format;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match command::run(&args) {
        Ok(code) => code,
        Err(e) => {
            if e.is_broken_pipe() {
                return ExitCode::SUCCESS;
            }
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "yukicomm: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                let _ = writeln!(err, "  caused by: {s}");
                source = s.source();
            }
            ExitCode::from(2)
        }
    }
}
