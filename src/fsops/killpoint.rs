//! Named kill points: the hooks through which tests crash or fail the process.
//!
//! Every journal write and every filesystem mutation calls [`hit`] with a
//! stable name (`journal.commit`, `fsops.rename.swap`, …) before it runs.
//! Driven by the environment, read once per process:
//!
//! - `STAGEHAND_TRACE_POINTS=FILE`: append each point reached to FILE.
//! - `STAGEHAND_CRASH_AT=POINT[:N]`: abort the Nth time POINT is reached.
//!   `abort()` runs no destructors and flushes nothing, as SIGKILL would.
//! - `STAGEHAND_FAIL_AT=POINT[:N]=EIO|ENOSPC|EACCES`: return that error from
//!   the Nth hit instead of performing the operation.
//! - `STAGEHAND_SIGNAL_AT=POINT[:N]`: raise SIGINT at the Nth hit (tests of Ctrl-C).
//! - `STAGEHAND_STOP_AT=POINT[:N]`: raise SIGSTOP at the Nth hit: a writer
//!   held mid-transaction, for tests of readers (SIGCONT resumes it).
//!
//! With none of these set, [`hit`] is a counter increment and a comparison.
//! This module never touches anything but the trace file.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Mutex, OnceLock};

/// Environment variable: append reached points to this file.
pub const ENV_TRACE: &str = "STAGEHAND_TRACE_POINTS";
/// Environment variable: abort at `POINT[:N]`.
pub const ENV_CRASH: &str = "STAGEHAND_CRASH_AT";
/// Environment variable: fail at `POINT[:N]=ERRNO`.
pub const ENV_FAIL: &str = "STAGEHAND_FAIL_AT";
/// Environment variable (tests): raise SIGINT at `POINT[:N]`, to test Ctrl-C deterministically.
pub const ENV_SIGNAL: &str = "STAGEHAND_SIGNAL_AT";
/// Environment variable (tests): stop the process (SIGSTOP) at `POINT[:N]`.
pub const ENV_STOP: &str = "STAGEHAND_STOP_AT";

#[derive(Debug)]
struct Trigger {
    point: String,
    nth: u64,
}

#[derive(Debug, Default)]
struct Config {
    trace: Option<std::fs::File>,
    crash: Option<Trigger>,
    signal: Option<Trigger>,
    stop: Option<Trigger>,
    fail: Option<(Trigger, i32)>,
    active: bool,
}

#[derive(Default)]
struct State {
    counts: HashMap<String, u64>,
}

fn parse_trigger(spec: &str) -> Option<Trigger> {
    let spec = spec.trim();
    if spec.is_empty() {
        return None;
    }
    match spec.rsplit_once(':') {
        Some((point, n)) if !point.is_empty() => match n.parse::<u64>() {
            Ok(nth) if nth >= 1 => Some(Trigger { point: point.to_string(), nth }),
            _ => None,
        },
        _ => Some(Trigger { point: spec.to_string(), nth: 1 }),
    }
}

fn parse_errno(name: &str) -> Option<i32> {
    match name.trim() {
        "EIO" => Some(libc::EIO),
        "ENOSPC" => Some(libc::ENOSPC),
        "EACCES" => Some(libc::EACCES),
        _ => None,
    }
}

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let mut cfg = Config::default();
        if let Some(path) = std::env::var_os(ENV_TRACE) {
            cfg.trace = std::fs::OpenOptions::new().create(true).append(true).open(path).ok();
        }
        if let Ok(spec) = std::env::var(ENV_CRASH) {
            cfg.crash = parse_trigger(&spec);
        }
        if let Ok(spec) = std::env::var(ENV_SIGNAL) {
            cfg.signal = parse_trigger(&spec);
        }
        if let Ok(spec) = std::env::var(ENV_STOP) {
            cfg.stop = parse_trigger(&spec);
        }
        if let Ok(spec) = std::env::var(ENV_FAIL) {
            if let Some((trigger, errno)) = spec.rsplit_once('=') {
                if let (Some(t), Some(e)) = (parse_trigger(trigger), parse_errno(errno)) {
                    cfg.fail = Some((t, e));
                }
            }
        }
        cfg.active = cfg.trace.is_some()
            || cfg.crash.is_some()
            || cfg.fail.is_some()
            || cfg.signal.is_some()
            || cfg.stop.is_some();
        cfg
    })
}

fn state() -> &'static Mutex<State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE.get_or_init(|| Mutex::new(State::default()))
}

/// Passes the kill point `name`. Returns an injected error if the
/// environment asks for one here; aborts the process if asked to crash.
/// True when any kill point is armed (traced, or set to crash, fail or
/// signal): a test that replays a run to its N-th point is running.
pub fn armed() -> bool {
    config().active
}

pub fn hit(name: &str) -> io::Result<()> {
    let cfg = config();
    if !cfg.active {
        return Ok(());
    }
    let count = {
        let mut st = match state().lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let c = st.counts.entry(name.to_string()).or_insert(0);
        *c += 1;
        *c
    };
    if let Some(mut file) = cfg.trace.as_ref() {
        // One write call per line so concurrent appenders do not interleave.
        let _ = file.write_all(format!("{name}\n").as_bytes());
    }
    if let Some(t) = &cfg.crash {
        if t.point == name && t.nth == count {
            std::process::abort();
        }
    }
    if let Some(t) = &cfg.signal {
        if t.point == name && t.nth == count {
            // SAFETY: raise only sends a signal to this process.
            unsafe { libc::raise(libc::SIGINT) };
        }
    }
    if let Some(t) = &cfg.stop {
        if t.point == name && t.nth == count {
            // SAFETY: raise only sends a signal to this process.
            unsafe { libc::raise(libc::SIGSTOP) };
        }
    }
    if let Some((t, errno)) = &cfg.fail {
        if t.point == name && t.nth == count {
            return Err(io::Error::from_raw_os_error(*errno));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_parse() {
        let t = parse_trigger("journal.commit:3").expect("parses");
        assert_eq!((t.point.as_str(), t.nth), ("journal.commit", 3));
        let t = parse_trigger("fsops.rename.swap").expect("parses");
        assert_eq!((t.point.as_str(), t.nth), ("fsops.rename.swap", 1));
        assert!(parse_trigger("x:0").is_none());
        assert!(parse_trigger("").is_none());
        assert_eq!(parse_errno("ENOSPC"), Some(libc::ENOSPC));
        assert_eq!(parse_errno("EWHAT"), None);
    }
}
