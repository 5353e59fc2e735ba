//! The `vmm` command line.

use clap::Parser;

/// A lightweight Arm64 virtual machine monitor on KVM.
#[derive(Parser, Debug)]
#[command(name = "vmm", version = vmm::VERSION, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "vmm {}: booting guests arrives with the next release; see `vmm --help`.",
        vmm::VERSION
    );
    std::process::exit(2);
}
