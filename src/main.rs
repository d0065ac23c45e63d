//! The `segmenta` binary: subcommands in `cli/`, all work in the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    if !matches!(
        args.command,
        cli::Command::Serve(_) | cli::Command::Bench(_) | cli::Command::Client(_)
    ) {
        quiet_on_closed_pipe();
    }
    cli::init_logging(args.verbose);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// A command whose output is piped into `head` ends quietly when the pipe
/// closes, as other command-line tools do. Rust ignores SIGPIPE, so every
/// later `println!` would panic instead. Not for `serve`, `bench` and
/// `client`, which talk over sockets: their vectored writes (`writev`)
/// would raise SIGPIPE on a connection the other side closed, where the
/// error must be reported.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring a signal's default action before any thread is
    // started; no handler of ours is replaced.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The error and its causes on one line.
fn one_line(e: &anyhow::Error) -> String {
    error_chain(e.as_ref()).replace('\n', " ")
}

/// An error and its causes, joined with ": ", leaving out a cause whose
/// text the line already holds (wrappers and transport errors often quote
/// their source: "tcp connect error: tcp connect error"). tonic's
/// "transport error" says little alone.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}
