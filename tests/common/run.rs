//! Running the `stagehand` binary: one command builder with a scrubbed
//! environment (no inherited STAGEHAND_* variables, no colour, no core
//! dumps, the default registry pointed at a closed local port), and what one
//! run did ([`Run`]). Variants: piped stdin and peak RSS ([`run_bin_opts`]),
//! another user ([`run_bin_as`]), a child to kill ([`spawn_bin`]).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_stagehand");

/// Environment variables of the binary that a test must never inherit.
const SCRUBBED_ENV: &[&str] = &[
    "STAGEHAND_STATE_DIR",
    "STAGEHAND_FILE",
    "STAGEHAND_TRACE_POINTS",
    "STAGEHAND_CRASH_AT",
    "STAGEHAND_FAIL_AT",
    "STAGEHAND_SIGNAL_AT",
    "STAGEHAND_STOP_AT",
    "STAGEHAND_RECORD_OPS",
    "STAGEHAND_SKIP_FSYNC",
    "STAGEHAND_SYNC",
    "STAGEHAND_CLEANUP",
    "STAGEHAND_DEFAULT_REGISTRY",
    "DOCKER_CONFIG",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// The binary under test: `STAGEHAND_TEST_BIN` if set (to run a proof
/// against another build, e.g. an older commit, for before/after numbers),
/// else this build's.
pub fn bin() -> OsString {
    std::env::var_os("STAGEHAND_TEST_BIN").unwrap_or_else(|| BIN.into())
}

/// What one run of the binary did.
#[derive(Debug, Clone)]
pub struct Run {
    pub argv: String,
    pub env: String,
    /// Exit code; `None` if the process died by a signal.
    pub code: Option<i32>,
    /// The signal that killed the process, if any.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn of(argv: String, env: String, out: &Output) -> Run {
        Run {
            argv,
            env,
            code: out.status.code(),
            signal: out.status.signal(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// A one-paragraph description for assertion messages.
    pub fn describe(&self) -> String {
        let how = match (self.code, self.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            (None, None) => "unknown status".to_string(),
        };
        format!(
            "`stagehand {}`{} -> {how}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.argv,
            if self.env.is_empty() { String::new() } else { format!(" [env {}]", self.env) },
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    /// Panics unless the run exited 0; returns self for chaining.
    #[track_caller]
    pub fn ok(&self) -> &Self {
        assert!(self.success(), "expected success:\n{}", self.describe());
        self
    }

    /// Panics unless the run exited with `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, Some(code), "expected exit code {code}:\n{}", self.describe());
        self
    }

    /// Panics unless the run failed cleanly: a non-zero exit code (not a
    /// signal) and something on stderr.
    #[track_caller]
    pub fn expect_clean_failure(&self) -> &Self {
        assert!(matches!(self.code, Some(c) if c != 0), "expected a non-zero exit (not a crash):\n{}", self.describe());
        assert!(!self.stderr.trim().is_empty(), "expected an error message on stderr:\n{}", self.describe());
        self
    }

    /// A clean failure: non-zero exit (not a signal) and stderr containing every `needle`.
    #[track_caller]
    pub fn fails_with(&self, needles: &[&str]) -> &Self {
        assert!(matches!(self.code, Some(c) if c != 0), "expected a clean failure:\n{}", self.describe());
        for n in needles {
            assert!(self.stderr.contains(n), "stderr lacks {n:?}:\n{}", self.describe());
        }
        self
    }

    /// stdout parsed as JSON, or what it was instead.
    pub fn try_json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.stdout).map_err(|e| format!("stdout is not JSON ({e}):\n{}", self.describe()))
    }

    /// stdout parsed as JSON; panics otherwise.
    #[track_caller]
    pub fn json(&self) -> serde_json::Value {
        self.try_json().unwrap_or_else(|e| panic!("{e}"))
    }
}

fn describe_args<S: AsRef<OsStr>>(args: &[S], env: &[(&str, &OsStr)]) -> (String, String) {
    (
        args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>().join(" "),
        env.iter().map(|(k, v)| format!("{k}={}", v.to_string_lossy())).collect::<Vec<_>>().join(" "),
    )
}

/// Scrubs the environment of `cmd` and adds `env` on top.
fn scrub(cmd: &mut Command, env: &[(&str, &OsStr)]) {
    for k in SCRUBBED_ENV {
        cmd.env_remove(k);
    }
    cmd.env("NO_COLOR", "1");
    // A reference without a registry must never reach the internet from a
    // test: point the default registry at a closed local port.
    cmd.env("STAGEHAND_DEFAULT_REGISTRY", "127.0.0.1:9");
    // What a command replaced is removed before it exits, so a test reads
    // the disk as the command left it; `tests/cleanup.rs` tests the default
    // (a process of its own removes it) by setting `background`.
    cmd.env("STAGEHAND_CLEANUP", "wait");
    for (k, v) in env {
        cmd.env(k, v);
    }
}

/// A `stagehand --state-dir STATE ARGS...` command in `cwd` with a scrubbed
/// environment plus `env`, no stdin, and core dumps disabled (crash runs
/// abort on purpose).
pub fn command<S: AsRef<OsStr>>(state: &Path, cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--state-dir").arg(state);
    cmd.args(args);
    scrub(&mut cmd, env);
    cmd.current_dir(cwd);
    cmd.stdin(Stdio::null());
    no_core_dumps(&mut cmd, None);
    cmd
}

/// Disables core dumps in the child, and sets its umask if given.
fn no_core_dumps(cmd: &mut Command, umask: Option<u32>) {
    // SAFETY: setrlimit and umask are async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            if let Some(m) = umask {
                libc::umask(m as libc::mode_t);
            }
            Ok(())
        });
    }
}

/// Runs `stagehand --state-dir STATE ARGS...` (see [`command`]).
pub fn run_bin<S: AsRef<OsStr>>(state: &Path, cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> Run {
    let out = command(state, cwd, args, env).output().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    let (argv, env) = describe_args(args, env);
    Run::of(argv, env, &out)
}

/// Runs `cmd` with `input` on its stdin (else /dev/null).
pub fn output_with_stdin(cmd: &mut Command, input: Option<&[u8]>) -> Output {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    if let (Some(bytes), Some(mut pipe)) = (input, child.stdin.take()) {
        pipe.write_all(bytes).expect("write stdin");
    }
    child.wait_with_output().expect("wait")
}

/// [`run_bin`] with `input` fed on stdin and the environment changed by
/// `adjust` after scrubbing (for helpers that set HOME or unset a default).
pub fn run_bin_with<S: AsRef<OsStr>>(
    state: &Path,
    cwd: &Path,
    args: &[S],
    env: &[(&str, &OsStr)],
    input: Option<&[u8]>,
    adjust: &dyn Fn(&mut Command),
) -> Run {
    let mut cmd = command(state, cwd, args, env);
    adjust(&mut cmd);
    let out = output_with_stdin(&mut cmd, input);
    let (argv, env) = describe_args(args, env);
    Run::of(argv, env, &out)
}

/// Starts the binary with stdout/stderr piped; see [`finish`].
pub fn spawn_bin<S: AsRef<OsStr>>(state: &Path, cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> (Child, String) {
    let mut cmd = command(state, cwd, args, env);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    (child, describe_args(args, env).0)
}

/// Waits for a child started by [`spawn_bin`].
pub fn finish(child: Child, argv: String) -> Run {
    let out = child.wait_with_output().expect("wait");
    Run::of(argv, String::new(), &out)
}

/// Sends SIGCONT to a stopped writer when dropped, so a failing assertion
/// does not leave it stopped.
pub struct Resume(pub u32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to our own child.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

/// Waits until process `pid` is stopped (state `T` in /proc/PID/stat).
pub fn wait_stopped(pid: u32) {
    let t0 = std::time::Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
        if state == Some(Some('T')) {
            return;
        }
        assert!(t0.elapsed().as_secs() < 60, "the writer never stopped at its kill point: {stat}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// How [`run_bin_opts`] runs the binary, beyond [`run_bin`].
#[derive(Debug, Clone, Default)]
pub struct RunOpts {
    /// The child's umask.
    pub umask: Option<u32>,
    /// Run as uid/gid 65534 (nobody) through `setpriv` (the test must be root).
    pub as_nobody: bool,
    /// Bytes on stdin (else /dev/null).
    pub stdin: Option<Vec<u8>>,
}

/// [`run_bin`] with [`RunOpts`]; also returns the child's peak RSS in KiB
/// and its wall time, measured by `wait4` on the child itself.
#[allow(clippy::zombie_processes)] // reaped by wait4, which also gives its rusage
pub fn run_bin_opts<S: AsRef<OsStr>>(
    state: &Path,
    cwd: &Path,
    args: &[S],
    env: &[(&str, &OsStr)],
    opts: &RunOpts,
) -> (Run, u64, Duration) {
    let mut cmd = if opts.as_nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid", "65534", "--regid", "65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    cmd.arg("--state-dir").arg(state);
    cmd.args(args);
    scrub(&mut cmd, env);
    cmd.current_dir(cwd);
    cmd.stdin(if opts.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    no_core_dumps(&mut cmd, opts.umask);
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    if let (Some(bytes), Some(mut stdin)) = (opts.stdin.clone(), child.stdin.take()) {
        stdin.write_all(&bytes).unwrap();
    }
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid, "wait4: {}", std::io::Error::last_os_error());
    let elapsed = start.elapsed();
    let stdout = t_out.join().unwrap();
    let stderr = t_err.join().unwrap();
    let (argv, env) = describe_args(args, env);
    let run = Run {
        argv,
        env,
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    };
    (run, usage.ru_maxrss as u64, elapsed)
}

/// Like [`run_bin`], as user `uid` (with HOME set to `cwd`) when the test
/// runs as root; as the current user otherwise.
pub fn run_bin_as<S: AsRef<OsStr>>(uid: u32, state: &Path, cwd: &Path, args: &[S], env: &[(&str, &OsStr)]) -> Run {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return run_bin(state, cwd, args, env);
    }
    let mut all: Vec<(&str, &OsStr)> = env.to_vec();
    all.push(("HOME", cwd.as_os_str()));
    let uid_s = uid.to_string();
    let mut argv: Vec<OsString> = vec![
        format!("--reuid={uid_s}").into(),
        format!("--regid={uid_s}").into(),
        "--clear-groups".into(),
        "--".into(),
        BIN.into(),
        "--state-dir".into(),
        state.into(),
    ];
    argv.extend(args.iter().map(|a| a.as_ref().to_os_string()));
    let mut cmd = Command::new("setpriv");
    cmd.args(&argv);
    scrub(&mut cmd, &all);
    cmd.current_dir(cwd).stdin(Stdio::null());
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn setpriv: {e}"));
    let argv = format!("(as uid {uid}) {}", describe_args(args, &[]).0);
    Run::of(argv, String::new(), &out)
}

/// Reads a kill-point trace file (`STAGEHAND_TRACE_POINTS`) into
/// (point, occurrence) pairs, in order.
pub fn read_trace(path: &Path) -> Vec<(String, u32)> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let c = counts.entry(l.to_string()).or_insert(0);
            *c += 1;
            (l.to_string(), *c)
        })
        .collect()
}

/// Runs `stagehand ARGS...` with no `--state-dir`, HOME set to `home` and no
/// STAGEHAND_STATE_DIR or XDG_STATE_HOME: the state dir is the default one
/// under `home`.
pub fn run_bin_default_state<S: AsRef<OsStr>>(home: &Path, args: &[S]) -> Run {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    scrub(&mut cmd, &[("HOME", home.as_os_str())]);
    cmd.env_remove("XDG_STATE_HOME");
    cmd.current_dir(home).stdin(Stdio::null());
    no_core_dumps(&mut cmd, None);
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    let (argv, env) = describe_args(args, &[("HOME", home.as_os_str())]);
    Run::of(argv, env, &out)
}
