#!/usr/bin/env python3
"""Crash states a real disk can produce: record an install, an upgrade and
an uninstall on a dm-log-writes device in a qemu guest, then rebuild the disk
at every flush and FUA point and at a seeded sample of states between two
flushes, mount each on the host (the file system replays its own journal),
run stagehand's recovery and check the invariants with hashlib.

Run through scripts/blockreplay.sh; docs/proofs.md ("Block-level crash
states") explains the method, what it cannot see, and the results.

A state is built from the log (scripts/blocklog.py) as follows, entries
being in the order the target logged them (a plain write is logged just
before the flush that made it durable, a FUA write when it completed):
* flush/FUA point i: the pristine image plus entries 0..i, in order;
* between flushes F and F' (consecutive flush entries): the point F, every
  FUA write between them, and a seeded random subset of the plain writes
  between them, which the disk had completed but not yet made durable and
  may have kept or lost in any combination. That is the power cut just
  before F' completed.
"""
import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blocklog  # noqa: E402
import powercut  # noqa: E402  (the guest's kernel, cpio, qemu and tree_hash)

REPO = powercut.REPO
MODULES = ["crc32c_generic", "virtio_pci", "virtio_blk", "ext4", "btrfs", "xfs", "dm_mod", "dm_log_writes",
           "dm_flakey"]
# The worlds the targets may hold, and what each operation moves between.
OPS = [("install", "none", "v1"), ("upgrade", "v1", "v2"), ("uninstall", "v2", "none")]
TARGETS = ["app", "lib/p.so", "ext/p.control", "ext/p--1.0.sql"]


def log(msg):
    print(f"blockreplay: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def build_initramfs(path, work, bin_path, rel, moddir, layout):
    cp = powercut.Cpio(path)
    cp.file("bin/busybox", shutil.which("busybox"), 0o755)
    cp.file("init", os.path.join(REPO, "scripts", "blockreplay-init.sh"), 0o755)
    mods = powercut.module_closure(moddir, MODULES)
    for p in sorted(mods):
        cp.file(f"lib/modules/{rel}/{p}", os.path.join(moddir, p), 0o644)
    cp.bytes(f"lib/modules/{rel}/modules.dep", "".join(f"{p}: {' '.join(d)}\n" for p, d in sorted(mods.items())).encode())
    stripped = os.path.join(work, "stagehand.stripped")
    run(["strip", "-o", stripped, bin_path]) if shutil.which("strip") else shutil.copy(bin_path, stripped)
    cp.file("stagehand/stagehand", stripped, 0o755)
    dmsetup = shutil.which("dmsetup") or "/usr/sbin/dmsetup"
    cp.file("dmsetup/dmsetup", dmsetup, 0o755)
    libs = set()
    for b in (bin_path, dmsetup):
        for ln in subprocess.run(["ldd", b], check=True, capture_output=True, text=True).stdout.splitlines():
            parts = ln.split()
            lib = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
            if lib.startswith("/"):
                libs.add(lib)
    for lib in sorted(libs):
        cp.file(lib, os.path.realpath(lib), 0o755)
    cp.tree("payload/layout", layout)
    cp.close()


# ---------------------------------------------------------------------------
# Expected worlds (hashlib over the generator's own files)
# ---------------------------------------------------------------------------
def file_hash(path):
    if not os.path.lexists(path):
        return "none"
    if os.path.islink(path) or not os.path.isfile(path):
        return "not a file"
    with open(path, "rb") as f:
        return "%o " % (os.stat(path).st_mode & 0o7777) + hashlib.sha256(f.read()).hexdigest()


def target_hashes(dest):
    out = {}
    for t in TARGETS:
        p = os.path.join(dest, t)
        if t == "app":
            # An absent directory and an empty one are the same world.
            h = powercut.tree_hash(p)
            out[t] = "none" if h in ("none", hashlib.sha256().hexdigest()) else h
        else:
            out[t] = file_hash(p)
    return out


def expected(payload, work):
    worlds = {"none": {t: "none" for t in TARGETS}}
    for tag in ("v1", "v2"):
        d = os.path.join(work, "expect", tag)
        powercut.expected_world(payload, tag, d)
        worlds[tag] = target_hashes(d)
    return worlds


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------
class Config:
    def __init__(self, fs, layout, work, skip, mib):
        self.fs, self.layout, self.skip = fs, layout, skip
        self.name = f"{fs}-{layout}" + (f"-skip-{skip}" if skip else "")
        self.dir = os.path.join(work, self.name.replace(":", "_").replace("*", "all"))
        self.mnt = os.path.join(self.dir, "mnt")
        self.state = os.path.join(self.mnt, "b" if layout == "split" else "a", "state")
        self.dest = os.path.join(self.mnt, "a", "dest")
        self.size = mib << 20
        self.parts = ["a", "b"] if layout == "split" else ["a"]
        self.pristine = os.path.join(self.dir, "pristine.img")
        self.logimg = os.path.join(self.dir, "log.img")

    def mount(self, img):
        for i, p in enumerate(self.parts):
            d = os.path.join(self.mnt, p)
            os.makedirs(d, exist_ok=True)
            r = subprocess.run(["mount", "-t", self.fs, "-o", f"loop,offset={i * self.size},sizelimit={self.size}",
                                img, d], capture_output=True, text=True)
            if r.returncode != 0:
                self.umount()
                return f"mount {p}: {r.stderr.strip()}"
        return None

    def umount(self):
        for p in reversed(self.parts):
            d = os.path.join(self.mnt, p)
            if os.path.ismount(d):
                run(["umount", d])


def mkfs(fs, img, size):
    with open(img, "wb") as f:
        f.truncate(size)
    cmd = {"ext4": ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard"],
           "xfs": ["mkfs.xfs", "-q", "-f", "-K"], "btrfs": ["mkfs.btrfs", "-q", "-f", "-K"]}[fs]
    run(cmd + [img], stdout=subprocess.DEVNULL)


def prepare(cfg):
    """Fresh file systems back to back in one image, with the empty
    destination directory (the guest installs, upgrades and uninstalls)."""
    os.makedirs(cfg.dir, exist_ok=True)
    with open(cfg.pristine, "wb") as f:
        f.truncate(cfg.size * len(cfg.parts))
    for i, p in enumerate(cfg.parts):
        part = os.path.join(cfg.dir, f"part-{p}.img")
        mkfs(cfg.fs, part, cfg.size)
        run(["dd", f"if={part}", f"of={cfg.pristine}", "bs=1M", f"seek={i * cfg.size >> 20}", "conv=sparse,notrunc",
             "status=none"])
        os.remove(part)
    err = cfg.mount(cfg.pristine)
    if err:
        sys.exit(f"blockreplay: {cfg.name}: {err}")
    try:
        os.makedirs(cfg.dest)
    finally:
        cfg.umount()


def boot(cfg, args, kernel, initrd, extra_images, extra_cmdline):
    """Boots the guest on a copy of CFG's pristine image (plus EXTRA_IMAGES)
    until it reports BLOCKREPLAY-END and powers off; returns the copy's path
    and the finished powercut.Guest (its console lines)."""
    img = os.path.join(cfg.dir, "guest.img")
    run(["cp", "--sparse=always", cfg.pristine, img])
    cmdline = (f"br.mnt={cfg.mnt} br.state={cfg.state} br.fs={cfg.fs} br.sectors={cfg.size // 512} "
               f"br.layout={cfg.layout} {extra_cmdline}")
    g = powercut.Guest(args, kernel, initrd, [img] + extra_images, cmdline)
    try:
        g.wait_for("BLOCKREPLAY-END", args.guest_timeout)
        g.wait_exit(60)
    finally:
        if g.proc.poll() is None:
            g.kill()
    return img, g


def record(cfg, args, kernel, initrd):
    """Boots the guest on a copy of the pristine image; returns the console."""
    with open(cfg.logimg, "wb") as f:
        f.truncate(args.log_mib << 20)
    t = time.monotonic()
    img, g = boot(cfg, args, kernel, initrd, [cfg.logimg], f"br.skip={cfg.skip or ''}")
    os.remove(img)
    ops = [ln.split()[1:] for _, ln in g.lines if ln and ln.startswith("BLOCKREPLAY-OP")]
    return g.console(), ops, time.monotonic() - t


# ---------------------------------------------------------------------------
# States and checks
# ---------------------------------------------------------------------------
def plan_states(lg, samples, rng):
    """The states to check: (kind, base, extra) where base is the index of
    the last entry of the log prefix and extra the entries after it."""
    ents = lg.entries
    flushes = [e.index for e in ents if e.flags & blocklog.FLUSH]
    points = [e.index for e in ents if e.flags & (blocklog.FLUSH | blocklog.FUA)]
    states = [("point", i, []) for i in points]
    intervals = []
    prev = -1
    for f in flushes:
        inside = ents[prev + 1:f]
        writes = [e.index for e in inside if e.is_write and not e.flags & blocklog.FUA]
        fuas = [e.index for e in inside if e.flags & blocklog.FUA]
        if len(writes) >= 2:
            intervals.append((prev, fuas, writes))
        prev = f
    for _ in range(samples if intervals else 0):
        base, fuas, writes = rng.choice(intervals)
        p = rng.random()
        subset = [w for w in writes if rng.random() < p]
        if len(subset) == len(writes):
            subset = subset[:-1]
        states.append(("between", base, sorted(fuas + subset)))
    states.sort(key=lambda s: (s[1], s[0] != "point"))
    return states


class Checker:
    def __init__(self, cfg, args, worlds, digests, lg, ops):
        self.cfg, self.args, self.worlds, self.digests, self.lg = cfg, args, worlds, digests, lg
        marks = lg.marks()
        points = [e.index for e in lg.entries if e.flags & (blocklog.FLUSH | blocklog.FUA)]
        # For each operation: where it started, and the last flush/FUA point
        # before its success mark (stagehand's own fsyncs completed by then).
        self.ops = []
        for name, before, after in OPS:
            start = marks.get(f"{name}-start")
            ok = marks.get(f"{name}-ok")
            synced = max([i for i in points if ok is not None and i < ok], default=-1) if ok is not None else None
            self.ops.append((name, before, after, start, synced))
        self.ops_rc = ops

    def allowed(self, base, hi):
        """The worlds a state may show: its durable prefix ends at BASE,
        its last entry is HI."""
        world = "none"
        allowed = {"none"}
        for name, before, after, start, synced in self.ops:
            if start is not None and start < hi:
                allowed = {before, after}
            if synced is not None and synced <= base:
                world = after
                allowed = {after}
        return allowed, world

    def check(self, kind, base, extra, cur_img):
        img = os.path.join(self.cfg.dir, "state.img")
        run(["cp", "--sparse=always", cur_img, img])
        with open(img, "r+b") as f:
            for i in extra:
                self.lg.apply(f, self.lg.entries[i])
        hi = max([base] + extra)
        allowed, must = self.allowed(base, hi)
        out = {"kind": kind, "base": base, "extra": len(extra)}
        out.update(inspect(self.cfg, self.args, self.worlds, self.digests, img, allowed, must))
        os.remove(img)
        return out


def inspect(cfg, args, worlds, digests, img, allowed, must):
    """Mounts IMG as CFG's file systems (each replays its journal), runs
    recovery, and checks the invariants: nothing pending, the targets all
    one world of ALLOWED (MUST, when only one is), `list` naming what is on
    disk, `verify` clean, no leftovers. Returns {"world", "violations"}."""
    v = []
    out = {"violations": v}
    err = cfg.mount(img)
    if err:
        v.append(f"the file system did not mount: {err}")
        return out
    try:
        sh = [args.bin, "--state-dir", cfg.state]
        st = subprocess.run(sh + ["status", "--json"], capture_output=True, text=True)
        if st.returncode != 0:
            v.append(f"recovery (status --json) exit {st.returncode}: {st.stderr.strip()[:500]}")
        elif json.loads(st.stdout).get("pending"):
            v.append(f"pending after recovery: {json.loads(st.stdout)['pending']}")
        got = target_hashes(cfg.dest)
        world = next((w for w in ("none", "v1", "v2") if worlds[w] == got), "mixed")
        out["world"] = world
        if world == "mixed":
            per = {t: next((w for w in ("none", "v1", "v2") if worlds[w][t] == h), "other")
                   for t, h in got.items()}
            v.append(f"the targets are neither all-old nor all-new: {per}")
        elif world not in allowed:
            v.append(f"the disk holds {world}, allowed {sorted(allowed)}"
                     + (f" (a reported success needs {must})" if len(allowed) == 1 else ""))
        ls = subprocess.run(sh + ["list", "--json"], capture_output=True, text=True)
        if ls.returncode != 0:
            v.append(f"list --json exit {ls.returncode}: {ls.stderr.strip()[:300]}")
        elif world != "mixed":
            listed = [p.get("digest") for p in json.loads(ls.stdout) if p.get("name") == "p"]
            want = [digests[world]] if world in digests else []
            if listed != want:
                v.append(f"{world} on disk but list --json says {listed}")
        # A removal the cleanup could not do for a lasting reason (here: the
        # file system went read-only on the disk's errors) is left, and named
        # with its fix in the history (and by `verify` as a leftover); any
        # other is a leak.
        hist = subprocess.run(sh + ["history", "--json"], capture_output=True, text=True)
        notes = " ".join(h.get("error") or "" for h in json.loads(hist.stdout or "[]"))
        vf = subprocess.run(sh + ["verify", "--json"], capture_output=True, text=True)
        try:
            bad = [m for p in json.loads(vf.stdout)["packages"] for m in p["mismatches"]
                   if not (m["problem"] == "leftover" and f"{m['path']} was left behind" in notes)]
        except (ValueError, KeyError):
            bad = ["(no verify report)"]
        if vf.returncode not in (0, 3) or bad:
            v.append(f"verify exit {vf.returncode}: {bad[:3]} {vf.stderr.strip()[:300]}")
        left = powercut.leftovers(os.path.join(cfg.mnt, "a"), {cfg.state})
        if left:
            unnamed = [p for p in left if f"{p} was left behind" not in notes]
            out["noted_leftovers"] = len(left) - len(unnamed)
            if unnamed:
                v.append(f"leftovers after recovery: {unnamed[:3]}")
    finally:
        cfg.umount()
    return out


def replay(cfg, args, worlds, digests, ops, rng):
    lg = blocklog.Log(cfg.logimg)
    marks = lg.marks()
    for name, _, _ in OPS:
        if f"{name}-ok" not in marks:
            raise RuntimeError(f"{cfg.name}: the log has no mark {name}-ok (ops {ops})")
    states = plan_states(lg, args.samples, rng)
    chk = Checker(cfg, args, worlds, digests, lg, ops)
    cur = os.path.join(cfg.dir, "cur.img")
    run(["cp", "--sparse=always", cfg.pristine, cur])
    applied = -1
    results = []
    with open(cur, "r+b") as f:
        for kind, base, extra in states:
            while applied < base:
                applied += 1
                lg.apply(f, lg.entries[applied])
            f.flush()
            r = chk.check(kind, base, extra, cur)
            results.append(r)
            for msg in r["violations"]:
                log(f"{cfg.name}: {kind} state at entry {base} (+{len(extra)}): VIOLATION: {msg}")
            if r["violations"] and args.stop_at_first:
                break
    os.remove(cur)
    return lg, results


def guest_args(ap):
    """The options every guest run takes (also scripts/blockfault.py's),
    parsed; refuses to go on without root."""
    ap.add_argument("--fs", default="ext4", help="ext4, xfs, btrfs (comma-separated)")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--mib", type=int, default=4)
    ap.add_argument("--image-mib", type=int, default=320, help="size of each file system (XFS wants 300 MiB)")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--cache", required=True)
    ap.add_argument("--accel", choices=["tcg", "kvm"], default="tcg")
    ap.add_argument("--guest-timeout", type=float, default=1800)
    ap.add_argument("--json", help="write every run's summary and violations here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit(f"{ap.prog}: needs root (loop mounts of the disk images)")
    args.kvm = args.accel == "kvm"
    return args


def setup(args, work):
    """The kernel, the initramfs (with the artifact's layout), the worlds'
    expected hashes and the tags' digests: (kernel, initrd, worlds, digests)."""
    t0 = time.monotonic()
    rel, kernel, moddir = powercut.fetch_kernel(os.path.abspath(args.cache))
    payload = os.path.join(work, "payload")
    run([sys.executable, os.path.join(REPO, "scripts", "make-bench-payload.py"), payload,
         "--files", str(args.files), "--mib", str(args.mib)], stdout=subprocess.DEVNULL)
    worlds = expected(payload, work)
    with open(os.path.join(payload, "layout", "index.json")) as f:
        digests = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
                   for m in json.load(f)["manifests"]}
    initrd = os.path.join(work, "initrd.cpio")
    build_initramfs(initrd, work, args.bin, rel, moddir, os.path.join(payload, "layout"))
    log(f"kernel {rel}, initramfs {os.path.getsize(initrd) >> 20} MiB, artifact {args.files} files + 3 mapped, "
        f"{args.mib} MiB; setup {time.monotonic() - t0:.0f} s")
    return kernel, initrd, worlds, digests


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layout", default="same", help="same, split (comma-separated)")
    ap.add_argument("--samples", type=int, default=20, help="states between flushes, per recording")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skips", default="", help="comma-separated STAGEHAND_SKIP_FSYNC values, one recording each")
    ap.add_argument("--no-clean", action="store_true", help="only the recordings with a skipped fsync")
    ap.add_argument("--stop-at-first", action="store_true", help="stop a replay at its first violation")
    ap.add_argument("--log-mib", type=int, default=4096, help="size of the (sparse) log device")
    args = guest_args(ap)
    t0 = time.monotonic()
    work = os.path.abspath(args.work)
    kernel, initrd, worlds, digests = setup(args, work)
    skips = [s for s in args.skips.split(",") if s]
    runs = ([] if args.no_clean else [None]) + skips
    summary, bad = [], 0
    for fs in args.fs.split(","):
        for layout in args.layout.split(","):
            for skip in runs:
                cfg = Config(fs, layout, work, skip, args.image_mib)
                t = time.monotonic()
                prepare(cfg)
                console, ops, rec_s = record(cfg, args, kernel, initrd)
                failed = [o for o in ops if o[1] != "0"]
                if failed or len(ops) != 3:
                    raise RuntimeError(f"{cfg.name}: the guest's operations {ops}:\n{console[-3000:]}")
                rng = random.Random(f"{args.seed}:{cfg.name}")
                lg, results = replay(cfg, args, worlds, digests, ops, rng)
                kinds = {}
                for e in lg.entries:
                    kinds[e.kind()] = kinds.get(e.kind(), 0) + 1
                nv = [r for r in results if r["violations"]]
                pts = sum(1 for r in results if r["kind"] == "point")
                s = {"config": cfg.name, "fs": fs, "layout": layout, "skip": skip, "entries": len(lg.entries),
                     "kinds": kinds, "points": pts, "between": len(results) - pts, "violations": len(nv),
                     "first_violations": [{k: r[k] for k in ("kind", "base", "extra", "violations")} for r in nv[:5]],
                     "worlds": {w: sum(1 for r in results if r.get("world") == w) for w in ("none", "v1", "v2", "mixed")},
                     "record_s": round(rec_s, 1), "replay_s": round(time.monotonic() - t - rec_s, 1)}
                summary.append(s)
                verdict = (f"{len(nv)} violations" if not skip else
                           (f"CAUGHT ({len(nv)} violating states)" if nv else "not caught"))
                print(f"blockreplay {cfg.name}: {len(lg.entries)} log entries ({kinds.get('flush', 0)} flushes, "
                      f"{kinds.get('fua', 0)} FUA), {pts} flush/FUA states + {len(results) - pts} between, {verdict} "
                      f"(worlds {s['worlds']}; record {rec_s:.0f} s, replay {s['replay_s']:.0f} s)", flush=True)
                if not skip:
                    bad += len(nv)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(summary, f, indent=1)
                if not nv and not os.environ.get("KEEP"):
                    shutil.rmtree(cfg.dir, ignore_errors=True)
    print(f"blockreplay: {len(summary)} recordings, {bad} violations without a skipped fsync, "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
