//! `septet`: one binary for every role in the grid — tracker, worker, and
//! the client commands that list peers and take or give back leases.
//!
//! Each subcommand binds or connects and then calls the same library
//! functions the tests and benches use. Errors are one line on stderr and a
//! non-zero exit status.

mod cli;
mod console;
mod job;
mod npy;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
