//! One module per subcommand.

mod channels;
mod control;
mod monitor;
mod status;
mod store;
mod top;

use std::process::ExitCode;

use crate::cli::{Args, Command};
use crate::connect::{self, Error, Observer};

/// Runs the command; the exit code on success.
pub fn run(args: &Args) -> Result<ExitCode, Error> {
    if let Command::List = args.command {
        let dir = yukicomm_hub::discovery::dir();
        let entries =
            yukicomm_hub::discovery::entries().map_err(|e| Error::Discovery(dir.clone(), e))?;
        if entries.is_empty() {
            return Err(Error::NoneFound(dir));
        }
        crate::command::print(&format!("{}\n", connect::list(&entries)))?;
        return Ok(ExitCode::SUCCESS);
    }
    let socket = connect::select(args.pid, args.socket.as_deref())?;
    let mut observer = Observer::connect(&socket)?;
    match &args.command {
        Command::Status { json } => status::run(&mut observer, *json),
        Command::Top { interval_ms } => top::run(&mut observer, *interval_ms),
        Command::Monitor {
            pattern,
            count,
            seconds,
        } => monitor::run(&mut observer, pattern, *count, *seconds),
        Command::Channels { json } => channels::run(&mut observer, *json),
        Command::Store { json } => store::run(&mut observer, *json, false),
        Command::Subscriptions { json } => store::run(&mut observer, *json, true),
        Command::Restart { name } => control::run(&mut observer, name, true),
        Command::Stop { name } => control::run(&mut observer, name, false),
        Command::List => unreachable!("handled above"),
    }
}

/// Writes `text` to standard output.
pub(crate) fn print(text: &str) -> Result<(), Error> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Writes `value` as pretty JSON and a newline.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> Result<(), Error> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print(&text)
}

/// Lays out rows in columns (the first row is the header), left-aligned, two spaces
/// apart; the last column is not padded.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
