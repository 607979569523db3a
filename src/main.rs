//! The `warrant` binary: parses nothing itself and hands the command line
//! to `warrant::cli`, which builds what each command needs.

fn main() -> std::process::ExitCode {
    warrant::cli::main()
}
