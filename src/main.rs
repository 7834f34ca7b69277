//! The `stagehand` binary: a thin shell over the library's `cli` module.

fn main() {
    std::process::exit(stagehand::cli::main());
}
