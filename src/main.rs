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
    quiet_device_select_layer();
    cli::init_logging(args.verbose);
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_closed_stdout(&e) => {
            end_by_sigpipe();
            ExitCode::FAILURE
        }
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

/// Whether a command failed only because its reader went away: a
/// `client` or `bench` command (which keep SIGPIPE ignored) writing into
/// `| head`. Only a write marked [`cli::StdoutClosed`] counts: a socket's
/// broken pipe is an error to report.
fn is_closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.is::<cli::StdoutClosed>()
            || cause
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<cli::StdoutClosed>())
    })
}

/// Ends the process as the signal would have, so a shell sees the same
/// status (141) as for any other command cut off by `head`.
fn end_by_sigpipe() {
    #[cfg(unix)]
    // SAFETY: the default action ends the process at once; nothing runs
    // after it that could rely on the signal being ignored.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
}

/// Mesa's Vulkan device-select layer, loaded by the Vulkan loader wherever
/// Mesa is installed, connects to a Wayland display when it lists GPUs and
/// prints "error: XDG_RUNTIME_DIR is invalid" on a headless server, where
/// Segmenta runs. Segmenta picks its adapter itself, so the layer's
/// ordering is not needed; a user's own `NODEVICE_SELECT` is kept.
fn quiet_device_select_layer() {
    let set = |name| std::env::var_os(name).is_some();
    // A user's own choice of device (MESA_VK_DEVICE_SELECT) needs the layer.
    if !set("XDG_RUNTIME_DIR") && !set("NODEVICE_SELECT") && !set("MESA_VK_DEVICE_SELECT") {
        // Still single-threaded: no thread can read the environment meanwhile.
        std::env::set_var("NODEVICE_SELECT", "1");
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
