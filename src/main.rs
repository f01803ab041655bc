use std::process::ExitCode;

fn main() -> ExitCode {
    datx::cli::main()
}
