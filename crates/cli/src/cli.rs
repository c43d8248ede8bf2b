//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// See inside a running yukicomm program: its processes, channels, store and
/// subscriptions; restart or stop a child.
#[derive(Debug, Parser)]
#[command(name = "yukicomm", version)]
pub struct Args {
    /// The main process to ask, by pid (default: the only one running for this user).
    #[arg(long, global = true, conflicts_with = "socket")]
    pub pid: Option<u32>,
    /// The main process to ask, by its hub's socket.
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Processes and their state; exits with 1 if one is not healthy (backoff, failed,
    /// or exited with a failure).
    Status {
        /// Print the whole report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A live view, updated about once a second; q or Ctrl-C quits.
    Top {
        /// Milliseconds between updates.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Print messages on channels and topics matching PATTERN, sampled (the program
    /// must allow it: YUKICOMM_MONITOR=1 or HubConfig::monitor).
    Monitor {
        /// A glob (`*`, `?`) over channel names and topics.
        pattern: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// The channels: type, ends, holders, receivers, backlog.
    Channels {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The shared store: keys, memory, rates, journal.
    Store {
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Subscriptions and watches: buffer use and missed messages.
    Subscriptions {
        /// Print them as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the main process to restart a child.
    Restart {
        /// The child's name.
        name: String,
    },
    /// Ask the main process to stop a child.
    Stop {
        /// The child's name.
        name: String,
    },
    /// List the running programs of this user.
    List,
}
