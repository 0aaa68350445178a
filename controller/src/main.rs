//! `vexctl`: thin main over the controller library; maps errors to exit codes.

use std::process::ExitCode;

fn main() -> ExitCode {
    vexfs_controller::cli::main()
}
