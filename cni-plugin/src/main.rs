//! `cilium-cni`: reads the `CNI_*` environment and the network config on stdin, runs the
//! plugin and prints its reply on stdout (the protocol only); notes go to stderr.

use std::io::{self, IsTerminal, Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let stdin = io::stdin();
    // Runtimes always pipe a config; on a terminal (someone typing `CNI_COMMAND=VERSION
    // cilium-cni`) do not wait for one.
    let input: Box<dyn Read> = if stdin.is_terminal() {
        Box::new(io::empty())
    } else {
        Box::new(stdin.lock())
    };
    let reply = cilium_cni::run(|name| std::env::var_os(name), input);
    for line in &reply.log {
        eprintln!("cilium-cni: {line}");
    }
    if let Some(out) = &reply.stdout {
        let mut stdout = io::stdout().lock();
        if let Err(e) = writeln!(stdout, "{out}").and_then(|()| stdout.flush()) {
            eprintln!("cilium-cni: cannot write the reply to stdout: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::from(reply.exit_code)
}
