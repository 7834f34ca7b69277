//! Ctrl-C and SIGTERM: the first signal asks the running transaction to stop
//! at the next step boundary (rolling back before the commit point,
//! finishing after it); the second exits at once and leaves the rest to the
//! recovery that the next command runs.
//!
//! The handler only counts signals (async-signal-safe: one atomic add, and
//! `_exit` on the second); the installer polls [`requested`].

use std::sync::atomic::{AtomicUsize, Ordering};

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

/// Exit status for "stopped by a signal" (128 + SIGINT).
pub const EXIT_INTERRUPTED: i32 = 130;

extern "C" fn on_signal(_sig: libc::c_int) {
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        // SAFETY: _exit is async-signal-safe; no destructors, no flush:
        // exactly a crash, which the journal is built to survive.
        unsafe { libc::_exit(EXIT_INTERRUPTED) };
    }
}

/// Installs the SIGINT and SIGTERM handlers (the CLI calls this once).
pub fn install_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with a plain handler and an empty mask
        // is valid; the handler does only async-signal-safe work.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = libc::SA_RESTART;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// True once a first signal has arrived.
pub fn requested() -> bool {
    SIGNALS.load(Ordering::SeqCst) > 0
}
