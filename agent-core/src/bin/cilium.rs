//! `cilium`: the command-line client of the agent.

fn main() -> std::process::ExitCode {
    agent_core::cli::main()
}
