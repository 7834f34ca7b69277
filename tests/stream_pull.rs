//! A registry install extracts while it downloads; these tests check that
//! the crash guarantees did not weaken. Against a real Debian
//! `docker-registry` on loopback (artifacts pushed with `skopeo`), behind a
//! throttling proxy so a download lasts long enough to be interrupted, an
//! upgrade from v1 to v2 of an artifact with a plain tar layer, a gzip tar
//! layer (both into one `--to` directory) and a title-annotated file layer
//! (its own `--map` file target):
//!
//! - staging really overlaps the download (a crash at a staged file's write
//!   finds files staged while the blob is still partial);
//! - SIGKILL at spread instants of the install, and STAGEHAND_CRASH_AT at
//!   every kill point from the last blob completing in the cache to the
//!   commit point: after recovery the destination is all-v1 or all-v2
//!   (hashed here, against trees computed from the test's own inputs), and
//!   the same install run again finishes, resuming a partial blob when the
//!   kill left one;
//! - a blob tampered at its very end (everything extracted before the
//!   mismatch shows) is refused naming its digest, and v1 stays;
//! - connections dropped halfway resume within the install (with a range
//!   request, or by skipping what the partial holds when the registry
//!   ignores ranges), or, when they keep dropping, fail with v1 intact and
//!   the partial kept, and the next run resumes it.
//!
//! Skipped with a loud message if the tools are missing, except in CI.

mod common;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::Instant;

use common::registry::*;

const TOOLS: &[&str] = &["docker-registry", "skopeo"];
const MT_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_TAR_GZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The throttle: ~28 MiB per version takes about a second.
const RATE: u64 = 24 * 1024 * 1024;

/// One version's inputs and the tree it must install, computed here.
struct Version {
    world: Tree,
    tree_digest: String,
}

/// Adds version `tag` to `layout`: a 16 MiB plain tar of 64 files, a gzip
/// tar of 20 text files, and a 12 MiB file layer `big.bin`.
fn add_version(layout: &mut LayoutBuilder, tag: &str, seed: u64) -> Version {
    let tree: Vec<(String, Vec<u8>)> = (0..64u64)
        .map(|i| (format!("tree/d{}/f{i:03}.bin", i % 4), pseudo_random(256 * 1024, seed * 1000 + i)))
        .collect();
    let texts: Vec<(String, Vec<u8>)> =
        (0..20).map(|i| (format!("gz/f{i:02}.txt"), format!("{tag} text {i}\n").repeat(3000).into_bytes())).collect();
    let big = pseudo_random(12 * 1024 * 1024, seed + 7);
    let tree_desc = layout.blob(MT_TAR, &tar_of(&tree));
    let gz_desc = layout.blob(MT_TAR_GZ, &gzip(&tar_of(&texts)));
    let mut big_desc = layout.blob("application/octet-stream", &big);
    big_desc["annotations"] = serde_json::json!({"org.opencontainers.image.title": "big.bin"});
    let m = layout.manifest(&[tree_desc.clone(), gz_desc, big_desc]);
    layout.tag(tag, &m);

    let mut world = Tree::new();
    for d in ["app", "app/tree", "app/gz", "lib"] {
        world.insert(d.into(), Node::Dir);
    }
    for (path, data) in tree.iter().chain(&texts) {
        if let Some((dir, _)) = path.rsplit_once('/') {
            world.insert(format!("app/{dir}"), Node::Dir);
        }
        world.insert(format!("app/{path}"), file_node(data));
    }
    world.insert("lib/big.bin".into(), file_node(&big));
    Version { world, tree_digest: tree_desc["digest"].as_str().expect("digest").to_string() }
}

/// A regular file of mode 0644 holding `data`, as the tree hasher sees it.
fn file_node(data: &[u8]) -> Node {
    Node::File { sha256: sha256_hex(data), exec: false, len: data.len() as u64 }
}

/// A registry holding `stream:v1` and `stream:v2`, a sandbox with v1
/// installed from it, and a saved copy of that sandbox to restore.
struct Setup {
    tmp: tempfile::TempDir,
    reg: Registry,
    sb: Sandbox,
    v1: Version,
    v2: Version,
}

impl Setup {
    fn new(name: &str) -> Setup {
        let tmp = tempdir(name);
        let reg = Registry::start(&tmp.path().join("registry"), None);
        let mut layout = LayoutBuilder::new(&tmp.path().join("layout"));
        let v1 = add_version(&mut layout, "v1", 1);
        let v2 = add_version(&mut layout, "v2", 2);
        for tag in ["v1", "v2"] {
            skopeo_push(&layout.dir, tag, &format!("{}/stream:{tag}", reg.host()), None, false);
        }
        let sb = Sandbox::at(&tmp.path().join("sb"));
        let s = Setup { tmp, reg, sb, v1, v2 };
        s.sb.run(&s.args(s.reg.port, "v1")).ok();
        assert_eq!(s.sb.world(), s.v1.world, "v1 from the registry");
        let pristine = s.tmp.path().join("pristine");
        fs::create_dir(&pristine).expect("mkdir");
        copy_tree(&s.sb.state, &pristine.join("state"));
        copy_tree(&s.sb.dest, &pristine.join("dest"));
        s
    }

    fn args(&self, port: u16, tag: &str) -> Vec<String> {
        let d = self.sb.dest.display();
        vec![
            "install".into(),
            format!("127.0.0.1:{port}/stream:{tag}"),
            "--name".into(),
            "stream".into(),
            "--to".into(),
            format!("{d}/app"),
            "--map".into(),
            format!("big.bin={d}/lib"),
            "--plain-http".into(),
        ]
    }

    /// Back to v1 installed, its blobs cached, nothing of v2 anywhere.
    fn restore(&self) {
        let pristine = self.tmp.path().join("pristine");
        remove_tree(&self.sb.state);
        remove_tree(&self.sb.dest);
        copy_tree(&pristine.join("state"), &self.sb.state);
        copy_tree(&pristine.join("dest"), &self.sb.dest);
    }

    /// After a crash: recovery (by `status`) leaves no pending transaction,
    /// the destination is all-v1 or all-v2 with `list` agreeing, nothing of
    /// stagehand's is left beside the targets, and every cached blob hashes
    /// to its name. Returns true for v2.
    fn check_recovered(&self, what: &str) -> bool {
        let status = self.sb.run(&["status", "--json"]);
        status.ok();
        let pending = status.json()["pending"].as_array().expect("pending").len();
        assert_eq!(pending, 0, "[{what}] pending after recovery:\n{}", status.describe());
        let world = self.sb.world();
        let leftovers: Vec<&String> = world.keys().filter(|k| k.contains(".stagehand-")).collect();
        assert!(leftovers.is_empty(), "[{what}] leftovers: {leftovers:?}");
        assert_cache_consistent(&self.sb.state);
        let listed = self.sb.listed().get("stream").cloned().unwrap_or_default();
        let tag = |t: &str| layout_tag_digest(&self.tmp.path().join("layout"), t);
        if world == self.v1.world {
            assert_eq!(listed, tag("v1"), "[{what}] the files are v1, list is not");
            false
        } else if world == self.v2.world {
            assert_eq!(listed, tag("v2"), "[{what}] the files are v2, list is not");
            true
        } else {
            let odd: Vec<_> = world.iter().filter(|(k, v)| self.v1.world.get(*k) != Some(v)).take(5).collect();
            panic!("[{what}] destination is neither all-v1 nor all-v2; first differences from v1: {odd:?}");
        }
    }

    /// Runs the v2 install again; it must finish. If the crash left a
    /// partial blob with bytes in it, the run must resume it.
    fn rerun_resumes(&self, port: u16, what: &str) {
        let had_partial = partials(&self.sb.state).iter().any(|(_, n)| *n > 0);
        let r = self.sb.run(&[self.args(port, "v2"), vec!["-v".into()]].concat());
        r.ok();
        if had_partial {
            assert!(r.stderr.contains("resuming a partial download"), "[{what}] no resume:\n{}", r.describe());
        }
        assert_eq!(self.sb.world(), self.v2.world, "[{what}] the rerun did not reach v2");
        assert!(partials(&self.sb.state).is_empty(), "[{what}] {:?}", partials(&self.sb.state));
        assert_cache_consistent(&self.sb.state);
    }
}

/// Regular files under the staging paths beside the targets.
fn staged_files(dest: &Path) -> usize {
    hash_tree(dest)
        .iter()
        .filter(|(k, v)| {
            k.split('/').any(|c| c.contains(".stagehand-") && c.ends_with(".staging")) && matches!(v, Node::File { .. })
        })
        .count()
}

#[test]
fn streamed_upgrade_survives_kills_at_any_instant() {
    if !require("streamed_upgrade_survives_kills_at_any_instant", TOOLS) {
        return;
    }
    let started = Instant::now();
    let s = Setup::new("stream-kill");
    let proxy = SlowProxy::start(s.reg.port, RATE);
    let args = s.args(proxy.port, "v2");

    // Extraction overlaps the download: at the 8th file written under the
    // staging path, the 16 MiB tar blob is still a partial download.
    let crashed = s.sb.run_env(&args, &[("STAGEHAND_CRASH_AT", "fsops.write.staging:8")], None);
    assert_eq!(crashed.signal, Some(libc::SIGABRT), "expected a crash:\n{}", crashed.describe());
    assert!(staged_files(&s.sb.dest) >= 7, "files staged before the crash: {:?}", hash_tree(&s.sb.dest));
    let tree_hex = &s.v2.tree_digest[7..];
    assert!(!s.sb.state.join("blobs/sha256").join(tree_hex).exists(), "the tar blob finished before staging began");
    assert!(partials(&s.sb.state).iter().any(|(n, size)| n == tree_hex && *size > 0), "{:?}", partials(&s.sb.state));
    assert!(!s.check_recovered("crash while staging"), "before the commit point: v1");
    s.rerun_resumes(proxy.port, "crash while staging");

    // The points from the last blob landing in the cache to the commit point.
    s.restore();
    let trace = s.tmp.path().join("trace");
    s.sb.run_env(&args, &[("STAGEHAND_TRACE_POINTS", trace.to_str().expect("utf8"))], None).ok();
    let mut seen: Vec<(String, u32)> = Vec::new();
    for line in fs::read_to_string(&trace).expect("trace").lines() {
        let n = seen.iter().filter(|(p, _)| p == line).count() as u32 + 1;
        seen.push((line.to_string(), n));
    }
    let last_blob =
        seen.iter().rposition(|(p, _)| p == "fsops.rename.cache").expect("a blob was renamed into the cache");
    let commit = seen.iter().position(|(p, _)| p == "journal.commit").expect("journal.commit");
    assert!(last_blob < commit, "every blob completes before the commit point: {seen:?}");
    let window = &seen[last_blob..=commit];
    // Points on the staging thread may interleave with the last rename in
    // another run; from the staged record on, every blob must be cached.
    let staged_at = window.iter().position(|(p, _)| p == "journal.staged").expect("journal.staged");
    // Each distinct point of the window at its first and last hit (a
    // tar's worth of file writes adds nothing over two of them).
    let picked: Vec<usize> = (0..window.len())
        .filter(|&i| {
            let same = |j: &usize| window[*j].0 == window[i].0;
            (0..window.len()).find(same) == Some(i) || (0..window.len()).rev().find(same) == Some(i)
        })
        .collect();
    for &i in &picked {
        let (point, nth) = &window[i];
        s.restore();
        let spec = format!("{point}:{nth}");
        let crashed = s.sb.run_env(&args, &[("STAGEHAND_CRASH_AT", &spec)], None);
        assert_eq!(crashed.signal, Some(libc::SIGABRT), "[{spec}] expected a crash:\n{}", crashed.describe());
        let tree_cached = s.sb.state.join("blobs/sha256").join(tree_hex).exists();
        assert!(tree_cached || i < staged_at, "[{spec}] the blob must be in the cache before the staged record");
        assert!(!s.check_recovered(&spec), "[{spec}] a crash before the commit point rolls back");
        s.rerun_resumes(proxy.port, &spec);
    }

    // SIGKILL at instants spread over the whole install.
    s.restore();
    let t0 = Instant::now();
    s.sb.run(&args).ok();
    let full = t0.elapsed();
    let (mut old, mut new, mut mid_blob) = (0, 0, 0);
    for i in 0..8u32 {
        s.restore();
        let at = full.mul_f64((f64::from(i) + 0.5) / 8.5);
        let mut child = spawn_bin(&s.sb.state, &args, &[], false);
        thread::sleep(at);
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let status = child.wait().expect("wait");
        let what = format!("SIGKILL at {:?} of {:?}", at, full);
        if partials(&s.sb.state).iter().any(|(_, n)| *n > 0) {
            mid_blob += 1;
        }
        if s.check_recovered(&what) {
            new += 1;
        } else {
            old += 1;
        }
        eprintln!("{what}: {status:?}");
        s.rerun_resumes(proxy.port, &what);
    }
    eprintln!(
        "streamed upgrade: {} of the {} crash points after the last blob, 8 SIGKILLs ({mid_blob} mid-blob, {old} ended v1, {new} ended v2), {:.1}s",
        picked.len(),
        window.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(mid_blob > 0, "no SIGKILL landed in the middle of a download (the install took {full:?})");
}

#[test]
fn tampered_end_of_a_streamed_blob_is_refused() {
    if !require("tampered_end_of_a_streamed_blob_is_refused", TOOLS) {
        return;
    }
    let s = Setup::new("stream-tamper");
    // The last byte of v2's tar layer (end-of-archive padding): every file
    // is extracted before the digest can be checked.
    let data = s.reg.blob_data(&s.v2.tree_digest);
    let original = fs::read(&data).expect("registry blob");
    let mut evil = original.clone();
    *evil.last_mut().expect("bytes") ^= 0x01;
    fs::write(&data, &evil).expect("tamper");
    let r = s.sb.run(&s.args(s.reg.port, "v2"));
    r.fails_with(&["digest mismatch", &s.v2.tree_digest, "rolled back"]);
    assert!(!s.check_recovered("tampered"), "v1 stays");
    assert!(!s.sb.state.join("blobs/sha256").join(&s.v2.tree_digest[7..]).exists(), "a bad blob entered the cache");
    assert!(partials(&s.sb.state).iter().all(|(n, _)| n != &s.v2.tree_digest[7..]), "a bad partial was kept");
    fs::write(&data, &original).expect("repair");
    s.sb.run(&s.args(s.reg.port, "v2")).ok();
    assert_eq!(s.sb.world(), s.v2.world);
}

#[test]
fn dropped_connections_resume_or_fail_cleanly() {
    if !require("dropped_connections_resume_or_fail_cleanly", TOOLS) {
        return;
    }
    let s = Setup::new("stream-drop");
    let verbose = |port: u16| [s.args(port, "v2"), vec!["-v".into()]].concat();

    // One connection cut at 3 MiB: the install resumes it with a range request.
    let proxy = SlowProxy::dropping(s.reg.port, RATE, 1, 3 << 20, false);
    let r = s.sb.run(&verbose(proxy.port));
    r.ok();
    assert_eq!(proxy.cuts_left.load(std::sync::atomic::Ordering::SeqCst), 0, "the proxy never cut");
    assert!(r.stderr.contains("blob transfer broke off"), "{}", r.describe());
    assert!(r.stderr.lines().any(|l| l.contains("range=bytes=") && !l.contains("range=bytes=0-")), "{}", r.describe());
    assert!(s.check_recovered("one cut"), "v2 installed");
    drop(proxy);

    // The same, from a registry that ignores ranges: the bytes the partial
    // holds (and staging has read) are skipped in the full body.
    s.restore();
    let proxy = SlowProxy::dropping(s.reg.port, RATE, 1, 3 << 20, true);
    let r = s.sb.run(&verbose(proxy.port));
    r.ok();
    assert!(r.stderr.contains("ignored the range request"), "{}", r.describe());
    assert!(s.check_recovered("ranges ignored"), "v2 installed");
    drop(proxy);

    // Every connection cut at 2 MiB: the install gives up with nothing moved.
    s.restore();
    let proxy = SlowProxy::dropping(s.reg.port, RATE, 1000, 2 << 20, false);
    let r = s.sb.run(&s.args(proxy.port, "v2"));
    r.fails_with(&["stopped after", "run the same command again to resume", "rolled back"]);
    assert!(!s.check_recovered("always cut"), "v1 stays");
    assert!(partials(&s.sb.state).iter().any(|(_, n)| *n > 0), "the partial is kept: {:?}", partials(&s.sb.state));
    drop(proxy);
    // A working registry again: the next run resumes the partial.
    s.rerun_resumes(s.reg.port, "after the cuts");
}
