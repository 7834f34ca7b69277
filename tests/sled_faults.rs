//! Faults in and under the journal (sled): damaged files, damaged records,
//! a journal from a newer stagehand, a missing or replaced state dir, and
//! SIGKILLs that land inside sled's own writes.
//!
//! For every damage: each command either fails cleanly (non-zero exit, not a
//! crash or panic, stderr naming what is wrong) or works on an intact
//! registry, and none of them deletes or changes installed files (DEST is
//! hashed before and after). Where sled itself silently falls back to an
//! older consistent state, the test says so in its output (that is sled's
//! recovery, which stagehand cannot see) and checks that nothing was
//! touched and that stagehand then refuses to overwrite the unowned files.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::proof::*;

struct Sb {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    state: PathBuf,
    dest: PathBuf,
}

impl Sb {
    fn new() -> Sb {
        let tmp = tempdir();
        let root = fs::canonicalize(tmp.path()).unwrap();
        fs::create_dir_all(root.join("dest")).unwrap();
        Sb { state: root.join("state"), dest: root.join("dest"), root, _tmp: tmp }
    }

    fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Run {
        run_bin(&self.state, &self.root, args, &[])
    }

    fn install(&self, ver: &str) -> Run {
        self.run(&demo_install_args(&self.dest, &demo_source(ver), None))
    }
}

/// Fails unless `run` failed cleanly and its stderr mentions one of `needles`.
#[track_caller]
fn assert_clean_error(run: &Run, needles: &[&str], what: &str) {
    assert!(
        matches!(run.code, Some(c) if c != 0 && c != 101),
        "{what}: expected a clean non-zero exit (no crash, no panic):\n{}",
        run.describe()
    );
    let low = run.stderr.to_lowercase();
    assert!(
        needles.iter().any(|n| low.contains(&n.to_lowercase())),
        "{what}: stderr names none of {needles:?}:\n{}",
        run.describe()
    );
}

#[track_caller]
fn assert_untouched(sb: &Sb, before: &Tree, what: &str) {
    let now = hash_tree(&sb.dest);
    assert!(now == *before, "{what}: installed files changed:\n{}", tree_diff(&now, before, 20));
}

fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        if m.is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push((e.path(), m.len()));
        }
    }
    out
}

/// What the commands said about a damaged journal.
#[derive(Debug, Default)]
struct Tally {
    clean_error: usize,
    intact: usize,
    silently_older: usize,
}

/// Runs the read-only commands and an install attempt on a damaged journal;
/// checks they fail cleanly or see an intact registry, and touch nothing.
fn probe(sb: &Sb, before: &Tree, what: &str, t: &mut Tally) {
    let list = sb.run(&["list", "--json"]);
    let status = sb.run(&["status", "--json"]);
    let verify = sb.run(&["verify", "demo"]);
    assert_untouched(sb, before, what);
    for r in [&list, &status, &verify] {
        assert!(r.signal.is_none() && r.code != Some(101), "{what}: crashed or panicked:\n{}", r.describe());
    }
    if !list.success() {
        assert_clean_error(&list, &["journal", "corrupt"], what);
        assert_clean_error(&status, &["journal", "corrupt"], what);
        t.clean_error += 1;
        // An install on an unreadable journal must refuse, not guess.
        let inst = sb.install("v2");
        assert_clean_error(&inst, &["journal", "corrupt"], what);
        assert_untouched(sb, before, what);
        return;
    }
    let listed = parse_list(&list).unwrap();
    match listed.get("demo") {
        Some(p) => {
            assert_eq!(p.digest, demo_digest("v1"), "{what}: the registry lists another digest");
            assert!(verify.success(), "{what}: verify of an intact registry failed:\n{}", verify.describe());
            t.intact += 1;
        }
        None => {
            // sled recovered an older consistent state: demo is unknown. The
            // files must stay, and stagehand must refuse to overwrite them.
            println!("  {what}: sled opened an older state without the package (silent loss of the registry)");
            t.silently_older += 1;
            let inst = sb.install("v2");
            assert_clean_error(&inst, &["no package owns it", "already exists"], what);
            assert_untouched(sb, before, what);
        }
    }
}

#[test]
fn truncated_and_garbled_sled_files() {
    let sb = Sb::new();
    sb.install("v1").ok();
    let before = hash_tree(&sb.dest);
    let pristine = sb.root.join("pristine-state");
    copy_tree(&sb.state, &pristine);
    let journal = sb.state.join("journal");
    let mut files = files_under(&journal);
    files.sort_by_key(|(_, len)| std::cmp::Reverse(*len));
    let (largest, len) = files[0].clone();
    let rel = largest.strip_prefix(&sb.state).unwrap().to_path_buf();
    println!(
        "journal files: {:?}",
        files.iter().map(|(p, l)| (p.strip_prefix(&sb.state).unwrap(), l)).collect::<Vec<_>>()
    );
    let mut t = Tally::default();
    let mut cases = 0;
    let offsets = [0, 1, 512, len / 4, len / 2, len * 3 / 4, len.saturating_sub(4096), len - 1];
    for off in offsets {
        replace_with_copy(&pristine, &sb.state);
        fs::OpenOptions::new().write(true).open(sb.state.join(&rel)).unwrap().set_len(off).unwrap();
        probe(&sb, &before, &format!("{} truncated to {off} of {len} bytes", rel.display()), &mut t);
        cases += 1;
    }
    // Garbage over 4 KiB at several offsets of the largest file.
    for off in [0, len / 3, len / 2, len.saturating_sub(4096)] {
        replace_with_copy(&pristine, &sb.state);
        let mut f = fs::OpenOptions::new().write(true).open(sb.state.join(&rel)).unwrap();
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut rng = Rng(off ^ 0xdead_beef);
        let junk: Vec<u8> = (0..4096).map(|_| rng.next_u64() as u8).collect();
        f.write_all(&junk[..4096.min((len - off) as usize)]).unwrap();
        drop(f);
        probe(&sb, &before, &format!("{} garbled at {off}", rel.display()), &mut t);
        cases += 1;
    }
    // Every other journal file truncated to zero, one at a time.
    for (p, _) in files.iter().skip(1) {
        replace_with_copy(&pristine, &sb.state);
        let r = p.strip_prefix(&sb.state).unwrap();
        fs::OpenOptions::new().write(true).open(sb.state.join(r)).unwrap().set_len(0).unwrap();
        probe(&sb, &before, &format!("{} truncated to 0", r.display()), &mut t);
        cases += 1;
    }
    println!(
        "sled file damage: {cases} cases: {} clean errors, {} intact registries, {} silent fallbacks to an older \
         state; installed files never changed",
        t.clean_error, t.intact, t.silently_older
    );
    assert!(cases > 0 && t.clean_error + t.intact + t.silently_older == cases);
}

/// Opens STATE/journal with sled directly and edits one value of `tree`.
fn edit_record(state: &Path, tree: &str, edit: impl FnOnce(&mut Vec<u8>)) -> (String, Vec<u8>) {
    let db = sled::open(state.join("journal")).expect("open the journal with sled");
    let t = db.open_tree(tree).unwrap();
    let (k, v) = t.iter().next().expect("a record").unwrap();
    let original = v.to_vec();
    let mut edited = original.clone();
    edit(&mut edited);
    t.insert(&k, edited).unwrap();
    db.flush().unwrap();
    drop(t);
    drop(db);
    wait_sled_unlocked(&state.join("journal"));
    let key = if tree == "packages" {
        String::from_utf8_lossy(&k).into_owned()
    } else {
        u64::from_be_bytes(<[u8; 8]>::try_from(&k[..]).unwrap()).to_string()
    };
    (key, original)
}

fn put_back(state: &Path, tree: &str, original: Vec<u8>) {
    edit_record(state, tree, move |v| *v = original);
}

#[test]
fn flipped_bit_in_a_pending_record_stops_recovery_untouched() {
    let sb = Sb::new();
    sb.install("v1").ok();
    // Crash the upgrade after its commit point: a pending txn record remains.
    let args = demo_install_args(&sb.dest, &demo_source("v2"), None);
    let trace = sb.root.join("trace.txt");
    let snap = sb.root.join("snap");
    fs::create_dir_all(&snap).unwrap();
    copy_tree(&sb.state, &snap.join("state"));
    copy_tree(&sb.dest, &snap.join("dest"));
    run_bin(&sb.state, &sb.root, &args, &[("STAGEHAND_TRACE_POINTS", trace.as_os_str())]).ok();
    replace_with_copy(&snap.join("state"), &sb.state);
    replace_with_copy(&snap.join("dest"), &sb.dest);
    let pairs = read_trace(&trace);
    let commit = pairs.iter().position(|(p, _)| p == "journal.commit").expect("commit point");
    let (pt, n) = pairs[commit..].iter().find(|(p, _)| p.contains(".swap")).expect("a swap point").clone();
    let spec = format!("{pt}:{n}");
    let crashed = run_bin(&sb.state, &sb.root, &args, &[("STAGEHAND_CRASH_AT", OsStr::new(&spec))]);
    assert_eq!(crashed.signal, Some(libc::SIGABRT), "{}", crashed.describe());
    let before = hash_tree(&sb.dest);
    assert!(!leftovers_under(&sb.dest).is_empty(), "the crash left no staging to protect");

    let mut cases = 0;
    for bit in [3usize, 77, 200] {
        let (key, original) = edit_record(&sb.state, "txns", |v| {
            let i = (bit / 8) % v.len();
            v[i] ^= 1 << (bit % 8);
        });
        for cmd in ["status", "list", "repair"] {
            let r = sb.run(&[cmd]);
            assert_clean_error(&r, &[&format!("txns/{key}")], &format!("{cmd} with bit {bit} of txns/{key} flipped"));
            assert_untouched(&sb, &before, &format!("{cmd} on a damaged pending record"));
        }
        let inst = sb.install("v1");
        assert_clean_error(&inst, &[&format!("txns/{key}")], "install over a damaged pending record");
        assert_untouched(&sb, &before, "install over a damaged pending record");
        put_back(&sb.state, "txns", original);
        cases += 1;
    }
    // Repaired: recovery rolls the committed upgrade forward.
    sb.run(&["status"]).ok();
    assert!(leftovers_under(&sb.dest).is_empty());
    let w = hash_tree(&sb.dest);
    assert_eq!(normalize(&w), normalize(&demo_world(&Tree::new(), Some("v2"))));

    // A damaged history record: `history` names it; installed files stay.
    let before = hash_tree(&sb.dest);
    let (key, original) = edit_record(&sb.state, "history", |v| v[10] ^= 0x10);
    let r = sb.run(&["history"]);
    assert_clean_error(&r, &[&format!("history/{key}")], "history with a damaged record");
    assert_untouched(&sb, &before, "history on a damaged record");
    put_back(&sb.state, "history", original);
    sb.run(&["history"]).ok();
    println!(
        "flipped bits: {cases} damaged pending records and 1 damaged history record reported by key; nothing touched"
    );
}

/// The format this stagehand writes (journal-format.md).
const FORMAT: u8 = 5;

/// Sets the journal's `meta/format` byte, checking what it was.
fn set_format(sb: &Sb, expected: u8, new: u8) {
    {
        let db = sled::open(sb.state.join("journal")).unwrap();
        let meta = db.open_tree("meta").unwrap();
        assert_eq!(meta.get("format").unwrap().as_deref(), Some(&[expected][..]), "format {expected} expected");
        meta.insert("format", &[new]).unwrap();
        db.flush().unwrap();
    }
    wait_sled_unlocked(&sb.state.join("journal"));
}

#[test]
fn newer_and_older_journal_formats_are_refused() {
    let sb = Sb::new();
    sb.install("v1").ok();
    let before = hash_tree(&sb.dest);
    for (other, needle) in [(FORMAT + 1, "newer stagehand"), (FORMAT - 1, "older stagehand")] {
        set_format(&sb, FORMAT, other);
        for args in [vec!["list"], vec!["status"], vec!["verify", "demo"], vec!["uninstall", "demo"]] {
            let r = sb.run(&args);
            assert_clean_error(&r, &[needle], &format!("{args:?} on a format-{other} journal"));
            assert!(
                r.stderr.contains(&format!("format {other}")),
                "the error does not name the format:\n{}",
                r.describe()
            );
            assert_untouched(&sb, &before, &format!("format {other}"));
        }
        let inst = sb.install("v2");
        assert_clean_error(&inst, &[needle], &format!("install on a format-{other} journal"));
        assert_untouched(&sb, &before, &format!("install on format {other}"));
        // Refused, not rewritten: putting the byte back makes it readable again.
        set_format(&sb, other, FORMAT);
        sb.run(&["verify", "demo"]).ok();
    }
    println!("newer and older format: 5 commands each refused, naming the format; nothing touched");
}

#[test]
fn missing_or_replaced_state_dir() {
    let sb = Sb::new();
    sb.install("v1").ok();
    let before = hash_tree(&sb.dest);
    let saved = sb.root.join("saved-state");
    copy_tree(&sb.state, &saved);

    // The state dir is gone: stagehand knows of no package and must refuse
    // to take over the files it no longer owns.
    remove_if_exists(&sb.state);
    let list = sb.run(&["list", "--json"]);
    assert!(parse_list(&list).unwrap().is_empty(), "{}", list.describe());
    assert_clean_error(&sb.run(&["verify", "demo"]), &["no package named"], "verify without a state dir");
    assert_clean_error(&sb.run(&["uninstall", "demo"]), &["no package named"], "uninstall without a state dir");
    let inst = sb.install("v2");
    assert_clean_error(&inst, &["no package owns it"], "install over files of a forgotten package");
    assert!(inst.stderr.contains("--adopt"), "the error does not say what to do:\n{}", inst.describe());
    assert_untouched(&sb, &before, "missing state dir");

    // The state dir path is a regular file.
    remove_if_exists(&sb.state);
    fs::write(&sb.state, b"not a directory").unwrap();
    for args in [vec!["list"], vec!["status"]] {
        let r = sb.run(&args);
        assert_clean_error(&r, &[sb.state.to_str().unwrap()], "state dir is a file");
    }
    assert_clean_error(&sb.install("v2"), &[sb.state.to_str().unwrap()], "install with the state dir a file");
    assert_eq!(fs::read(&sb.state).unwrap(), b"not a directory", "the file at the state dir path was changed");
    assert_untouched(&sb, &before, "state dir is a file");

    // A garbage file where the journal directory should be.
    remove_if_exists(&sb.state);
    copy_tree(&saved, &sb.state);
    remove_if_exists(&sb.state.join("journal"));
    fs::write(sb.state.join("journal"), b"\x00garbage\xff").unwrap();
    for args in [vec!["list"], vec!["status"], vec!["repair"]] {
        let r = sb.run(&args);
        assert_clean_error(&r, &["journal"], "garbage file as the journal");
        assert!(r.stderr.contains(sb.state.join("journal").to_str().unwrap()), "path not named:\n{}", r.describe());
    }
    assert_clean_error(&sb.install("v2"), &["journal"], "install with a garbage journal");
    assert_eq!(fs::read(sb.state.join("journal")).unwrap(), b"\x00garbage\xff", "the garbage file was changed");
    assert_untouched(&sb, &before, "garbage journal");

    // Put back: everything works again.
    remove_if_exists(&sb.state);
    copy_tree(&saved, &sb.state);
    sb.run(&["verify", "demo"]).ok();
    println!("state dir: missing, a file, and a garbage journal file each refused cleanly; nothing touched");
}

/// SIGKILL at random instants of a burst of installs and uninstalls of a
/// tiny package, so that many kills land inside sled's own writes and
/// flushes. Records whether sled ever reported corruption on the next open.
#[test]
fn kills_inside_sled_writes() {
    let kills = env_num("STAGEHAND_SLED_KILLS", 50);
    let mut rng = Rng::from_env("STAGEHAND_SLED_KILL_SEED", 0x51ed);
    let sb = Sb::new();
    let layout = sb.root.join("tiny");
    make_file_layout(
        &layout,
        &[("v1", vec![("tiny.txt", b"one\n".to_vec())]), ("v2", vec![("tiny.txt", b"two, longer\n".to_vec())])],
    );
    let target = sb.dest.join("tiny.txt");
    let args = |tag: &str| -> Vec<std::ffi::OsString> {
        let mut m = std::ffi::OsString::from("*.txt=");
        m.push(&sb.dest);
        vec!["install".into(), format!("oci-layout:{}:{tag}", layout.display()).into(), "--map".into(), m]
    };
    let mut op_time = [Duration::MAX; 3];
    for _ in 0..2 {
        for (i, a) in [args("v1"), args("v2"), vec!["uninstall".into(), "tiny".into()]].into_iter().enumerate() {
            let t0 = Instant::now();
            sb.run(&a).ok();
            op_time[i] = op_time[i].min(t0.elapsed());
        }
    }
    let content = |v: Option<&str>| v.map(|v| if v == "v1" { b"one\n".to_vec() } else { b"two, longer\n".to_vec() });
    let mut cur: Option<&str> = None;
    let (mut killed, mut corrupt, mut ended_new) = (0, 0, 0);
    let mut evidence = Vec::new();
    for k in 0..kills {
        let (a, new): (Vec<std::ffi::OsString>, Option<&str>) = match cur {
            None => (args("v1"), Some("v1")),
            Some("v1") => (args("v2"), Some("v2")),
            Some(_) => (vec!["uninstall".into(), "tiny".into()], None),
        };
        // Kill anywhere from process start to a little past the usual end.
        let t = op_time[match (cur, new) {
            (None, _) => 0,
            (_, None) => 2,
            _ => 1,
        }];
        let delay = Duration::from_micros(rng.below(t.as_micros() as u64 * 11 / 10 + 1));
        let (mut child, argv) = spawn_bin(&sb.state, &sb.root, &a, &[]);
        std::thread::sleep(delay);
        let _ = child.kill();
        let run = finish(child, argv);
        if run.signal == Some(libc::SIGKILL) {
            killed += 1;
        } else {
            assert!(run.success(), "kill {k}: failed by itself:\n{}", run.describe());
        }
        let st = sb.run(&["status", "--json"]);
        if !st.success() {
            corrupt += 1;
            let keep = scratch_base().join(format!("sled-corrupt-{}-{k}", std::process::id()));
            copy_tree(&sb.state, &keep);
            evidence.push(format!("kill {k} after {delay:?}: {} (state kept at {})", st.stderr.trim(), keep.display()));
            continue;
        }
        let pending = pending_of(&st.try_json().unwrap()).unwrap();
        assert!(pending.is_empty(), "kill {k}: pending after recovery: {pending:?}");
        assert!(leftovers_under(&sb.dest).is_empty(), "kill {k}: leftovers {:?}", leftovers_under(&sb.dest));
        let on_disk = fs::read(&target).ok();
        let ver = if on_disk == content(cur) {
            cur
        } else if on_disk == content(new) {
            new
        } else {
            panic!("kill {k}: {} holds {on_disk:?}, neither old nor new", target.display());
        };
        let listed = parse_list(&sb.run(&["list", "--json"])).unwrap();
        let want = ver.map(|v| layout_tag_digest(&layout, v));
        assert_eq!(listed.get("tiny").map(|p| p.digest.clone()), want, "kill {k}: registry disagrees with disk");
        if run.success() {
            assert_eq!(ver, new, "kill {k}: finished, yet not new");
        }
        if ver == new {
            ended_new += 1;
        }
        cur = ver;
    }
    println!(
        "sled kills: {kills} SIGKILLs (ops take {op_time:?}), {killed} landed mid-run, {ended_new} ended new; sled \
         reported corruption {corrupt} times"
    );
    for e in &evidence {
        println!("  SLED CORRUPTION: {e}");
    }
    assert!(killed > 0, "no kill landed mid-run");
    assert_eq!(corrupt, 0, "sled reported corruption after a SIGKILL: {evidence:?}");
}

/// Evidence for the report: what sled itself shows after its main file is
/// truncated (trees read directly, stagehand not involved).
#[test]
#[ignore]
fn sled_contents_after_truncation() {
    let sb = Sb::new();
    sb.install("v1").ok();
    let len = fs::metadata(sb.state.join("journal/db")).unwrap().len();
    for off in [0, 512, len / 4, len / 2, len - 1] {
        let copy = sb.root.join(format!("j{off}"));
        copy_tree(&sb.state.join("journal"), &copy);
        fs::OpenOptions::new().write(true).open(copy.join("db")).unwrap().set_len(off).unwrap();
        let db = match sled::open(&copy) {
            Ok(db) => db,
            Err(e) => {
                println!("truncated to {off}/{len}: sled refuses: {e}");
                continue;
            }
        };
        let count = |t: &str| db.open_tree(t).unwrap().len();
        println!(
            "truncated to {off}/{len}: txns {}, history {}, packages {}, next_txn {:?}",
            count("txns"),
            count("history"),
            count("packages"),
            db.open_tree("meta").unwrap().get("next_txn").unwrap().map(|v| v.to_vec())
        );
    }
}
