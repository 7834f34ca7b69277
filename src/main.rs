//! The `stagehand` binary: a thin shell over the library's `cli` module.

fn main() {
    // Like other command-line tools, end quietly when the reader of our
    // output goes away (`stagehand history | head`) instead of panicking on
    // EPIPE. SAFETY: setting a signal disposition to its default is sound.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // Before any thread starts: SSL_CERT_FILE adds to the system roots.
    stagehand::source::roots::take_ssl_cert_file();
    std::process::exit(stagehand::cli::main());
}
