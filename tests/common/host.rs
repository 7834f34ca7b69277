//! What a test needs from the machine: CI or not (in CI a test that cannot
//! run fails instead of skipping), tools on PATH, root, mounts (tmpfs, a
//! loop-mounted ext4), another user, loopback ports and a hostile HTTP server.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::demo::{repo_root, DEMO};
use super::run::Run;
use super::sandbox::{pending_of, tempdir, Sandbox};
use super::tree::tree_diff;

/// True when running in CI (`CI` set, and not `false`/`0`), where a test
/// that cannot run is a failure, not a skip.
pub fn in_ci() -> bool {
    std::env::var("CI").map(|v| !v.is_empty() && v != "false" && v != "0").unwrap_or(false)
}

/// A test that cannot run here: panics in CI; elsewhere prints a loud
/// SKIPPED banner straight to fd 2 (past the harness's capture).
pub fn skip_unless_ci(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why}; CI is set, so this is a failure, not a skip");
    }
    let bar = "!".repeat(76);
    let _ = std::io::stderr().write_all(format!("\n{bar}\n!!! SKIPPED {test}: {why}\n{bar}\n\n").as_bytes());
}

/// For a test that boots a qemu guest and loop-mounts its disks: true if
/// it runs as root with every tool of `tools` on PATH; else skips loudly
/// (a failure when CI is set), naming the Debian `packages` to install.
pub fn guest_test_ready(test: &str, tools: &[&str], packages: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip_unless_ci(test, "needs root (it loop-mounts the disk images)");
        return false;
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        skip_unless_ci(
            test,
            &format!(
                "{} not installed (Debian packages {packages}; scripts/test.sh installs them)",
                missing.join(", ")
            ),
        );
        return false;
    }
    true
}

/// Whether `tool` is an executable file on `PATH`.
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|d| {
                fs::metadata(d.join(tool)).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// True when running in CI, where a missing prerequisite fails a test
/// instead of skipping it.
pub fn ci() -> bool {
    in_ci()
}

/// True if `tool --version`-style `probe` runs. Outside CI a missing tool
/// skips the calling test loudly; in CI it fails.
pub fn tool_or_skip(test: &str, tool: &str, probe: &[&str]) -> bool {
    if Command::new(tool).args(probe).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok() {
        return true;
    }
    let msg = format!("{test}: {tool} is not installed (scripts/test.sh installs it)");
    assert!(!ci(), "{msg}");
    eprintln!("SKIPPED: {msg}");
    false
}

/// Checks that `tools` are installed. Returns false (after a loud message)
/// if one is missing outside CI; panics if one is missing in CI.
pub fn require(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} not installed (Debian packages docker-registry, skopeo, apache2-utils, openssl; scripts/test.sh installs them)",
        missing.join(", ")
    );
    skip_unless_ci(test, &why);
    false
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Sends `GET path` over plain HTTP/1.0 and returns the status code.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&format!("127.0.0.1:{port}").parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

/// True when running as root. Otherwise says loudly that `what` is skipped,
/// and fails instead when `CI` is set (CI runs as root and must run it),
/// except in scripts/test.sh's unprivileged pass
/// (`STAGEHAND_TEST_UNPRIVILEGED`), which follows the root pass.
pub fn root_or_skip(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none() || std::env::var_os("STAGEHAND_TEST_UNPRIVILEGED").is_some(),
        "{what} needs root, and CI is set: it must run there"
    );
    eprintln!("SKIPPED (needs root): {what}");
    println!("SKIPPED (needs root): {what}");
    false
}

/// A filesystem mounted for a test, unmounted (lazily) when dropped.
pub struct Mount {
    pub at: PathBuf,
}

impl Mount {
    /// Mounts a tmpfs of `size` (e.g. "8m") at `at` (created if missing).
    pub fn tmpfs(at: &Path, size: &str) -> Mount {
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap_or_else(|e| panic!("spawn mount: {e}"));
        assert!(st.success(), "mount tmpfs at {}: {st}", at.display());
        Mount { at: at.to_path_buf() }
    }

    /// Makes a `size_mib` ext4 image in `image` and loop-mounts it at `at`.
    pub fn ext4(image: &Path, size_mib: u64, at: &Path) -> Mount {
        Mount::ext4_with(image, size_mib, at, &[])
    }

    /// An ext4 with 128-byte inodes (`mkfs.ext4 -I 128`): no room for a
    /// birth time, so `statx` reports none, as on other filesystems
    /// without one. Inode numbers are reused, so only they and digests
    /// can tell objects apart there.
    pub fn ext4_without_birth_times(image: &Path, size_mib: u64, at: &Path) -> Mount {
        let m = Mount::ext4_with(image, size_mib, at, &["-I", "128"]);
        let probe = at.join(".btime-probe");
        fs::create_dir(&probe).unwrap();
        let born = fs::metadata(&probe).unwrap().created();
        fs::remove_dir(&probe).unwrap();
        assert!(
            born.is_err(),
            "ext4 -I 128 at {} reports birth times; the test needs a filesystem without",
            at.display()
        );
        m
    }

    /// Like [`Mount::ext4`], with extra `mkfs.ext4` arguments.
    pub fn ext4_with(image: &Path, size_mib: u64, at: &Path, mkfs_args: &[&str]) -> Mount {
        let f = fs::File::create(image).unwrap();
        f.set_len(size_mib << 20).unwrap();
        drop(f);
        let st = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            .args(mkfs_args)
            .arg(image)
            .status()
            .unwrap_or_else(|e| panic!("spawn mkfs.ext4 (e2fsprogs): {e}"));
        assert!(st.success(), "mkfs.ext4 {}: {st}", image.display());
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(at)
            .status()
            .unwrap_or_else(|e| panic!("spawn mount: {e}"));
        assert!(st.success(), "loop-mount {} at {}: {st}", image.display(), at.display());
        Mount { at: at.to_path_buf() }
    }

    /// Free bytes for an ordinary user on the mounted filesystem.
    pub fn free_bytes(&self) -> u64 {
        let c = std::ffi::CString::new(self.at.as_os_str().as_bytes()).unwrap();
        // SAFETY: statvfs writes into the zeroed struct; the path is NUL-terminated.
        let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut v) }, 0, "statvfs {}", self.at.display());
        v.f_bavail as u64 * v.f_frsize as u64
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// The small disk of the full-disk tests (root only): a 24 MiB loop-mounted
/// ext4 holding a sandbox, its state dir and DEST both, with demo v1
/// installed. Dropped in field order: the sandbox, the mount, the image.
pub struct SmallDisk {
    pub sb: Sandbox,
    pub disk: Mount,
    /// Free bytes once v1 is installed.
    pub base_free: u64,
    pub tmp: tempfile::TempDir,
}

impl SmallDisk {
    pub fn with_demo_v1() -> SmallDisk {
        let tmp = tempdir();
        let disk = Mount::ext4(&tmp.path().join("disk.img"), 24, &tmp.path().join("mnt"));
        let sb = Sandbox::at(disk.at.join("sb"));
        sb.install_demo("v1").ok();
        let base_free = disk.free_bytes();
        SmallDisk { sb, disk, base_free, tmp }
    }

    /// Tries to upgrade demo to `source` (a layout reference, its tag v2), which must
    /// fail cleanly; DEST must then be as it was, nothing pending, the free
    /// space back (within 1 MiB) and `verify` clean. Returns the run and the
    /// free bytes after it.
    pub fn failed_upgrade(&self, source: &str) -> (Run, u64) {
        let before = self.sb.world();
        let mut args = self.sb.install_demo_args("v2");
        args[1] = source.into();
        args.extend(["--name".into(), DEMO.into()]);
        let run = self.sb.run(&args);
        run.expect_clean_failure();
        let after_free = self.disk.free_bytes();
        assert!(
            after_free + (1 << 20) >= self.base_free,
            "the failed upgrade kept disk space: {} bytes free before, {after_free} after\n{}",
            self.base_free,
            run.describe()
        );
        let after = self.sb.world();
        assert!(after == before, "a failed upgrade changed DEST:\n{}", tree_diff(&after, &before, 20));
        assert!(pending_of(&self.sb.status_json()).is_empty(), "pending after a failed upgrade");
        self.sb.run(&["verify", DEMO]).ok();
        (run, after_free)
    }
}

/// The uid tests use as an ordinary user when they run as root ("nobody").
pub const NOBODY: u32 = 65534;

/// Gives `path` and everything under it to `uid` (its group too).
pub fn chown_tree(path: &Path, uid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{uid}"))
        .arg(path)
        .status()
        .unwrap_or_else(|e| panic!("spawn chown: {e}"));
    assert!(st.success(), "chown -R {uid} {}: {st}", path.display());
}

/// A hostile HTTP server on loopback (`tests/common/hostile_registry.py`),
/// killed on drop. It logs every request line to [`HostileServer::log`].
pub struct HostileServer {
    child: std::process::Child,
    pub port: u16,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl HostileServer {
    /// Starts the server in `mode`; with `tls` = (cert, key) it speaks https.
    pub fn start(mode: &str, tls: Option<(&Path, &Path)>) -> HostileServer {
        let dir = tempdir();
        let log = dir.path().join("requests.log");
        fs::write(&log, b"").unwrap();
        let script = repo_root().join("tests/common/hostile_registry.py");
        let mut cmd = Command::new("python3");
        cmd.arg(&script).arg(mode).arg(&log);
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("spawn python3");
        let mut line = String::new();
        {
            use std::io::BufRead as _;
            let mut r = std::io::BufReader::new(child.stdout.as_mut().unwrap());
            r.read_line(&mut line).unwrap();
        }
        let port = line.trim().parse().unwrap_or_else(|_| panic!("hostile server printed {line:?}"));
        HostileServer { child, port, log, _dir: dir }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The request lines it received so far.
    pub fn requests(&self) -> Vec<String> {
        fs::read_to_string(&self.log).unwrap().lines().map(str::to_string).collect()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
