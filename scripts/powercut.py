#!/usr/bin/env python3
"""Real power cuts of a qemu guest running a stagehand upgrade.

Run through scripts/powercut.sh (which installs the Debian packages this
needs); docs/proofs.md explains the model and the invariants. In short:

* a tiny guest: Debian's kernel (extracted from the linux-image .deb, never
  installed), busybox-static as /init (scripts/powercut-init.sh), the
  stagehand binary under test with the shared libraries it links, and the
  OCI layout of a 2,000-file artifact (scripts/make-bench-payload.py: one
  tar layer installed with --to, three files installed with --map);
* raw disk images: vda ext4 (the targets), vdb (the state dir's own disk
  when the configuration has one: ext4 or btrfs);
* one clean boot per configuration installs v1 and powers off; its images
  are the pristine copy every cut starts from;
* each cut boots a copy, the guest upgrades to v2 and the host SIGKILLs
  qemu at a random instant after the upgrade started, or right after the
  guest printed that the upgrade succeeded;
* the host then loop-mounts the images at the guest's own paths, runs
  recovery (`stagehand status --json`), hashes the trees with hashlib and
  checks the invariants.

qemu's disks use cache=writeback: the guest sees a volatile write cache
and issues its flushes, qemu writes into the host's page cache, and a
SIGKILL of qemu loses exactly what the guest kernel had not yet written to
its virtual disks (its page cache, its unsubmitted requests). What the
virtual disk had completed survives, as on a disk with power-loss
protection; reordering inside a drive's volatile cache is not modelled.
cache=unsafe is not used: it drops the guest's flushes, so it models
nothing that the guest asked for.
"""
import argparse
import concurrent.futures
import fcntl
import hashlib
import json
import lzma
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CONFIGS = {
    # name: (file system of the state dir's own disk, or None; state dir)
    "ext4-same": (None, "a/state"),
    "ext4-split": ("ext4", "b/state"),
    "btrfs-state": ("btrfs", "b/state"),
}
MODULES = ["crc32c_generic", "virtio_pci", "virtio_blk", "ext4", "btrfs"]


def log(msg):
    print(f"powercut: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


# ---------------------------------------------------------------------------
# The guest: kernel, modules, initramfs
# ---------------------------------------------------------------------------
def fetch_kernel(cache):
    """Debian's linux-image-amd64 kernel, extracted (dpkg -x) into CACHE.
    Tests that boot the guest run in parallel: the first one fetches and
    extracts while the others wait on CACHE/.lock (on a fresh machine two
    extractions into one directory broke each other)."""
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return fetch_kernel_locked(cache)


def fetch_kernel_locked(cache):
    deps = subprocess.run(["apt-cache", "depends", "linux-image-amd64"], check=True,
                          capture_output=True, text=True).stdout
    pkg = next((ln.split()[1] for ln in deps.splitlines()
                if ln.strip().startswith("Depends: linux-image-") and ln.split()[1][12:13].isdigit()), None)
    if pkg is None:
        sys.exit("powercut: apt-cache knows no linux-image-amd64 (run apt-get update)")
    rel = pkg[len("linux-image-"):]
    root = os.path.join(cache, rel)
    vmlinuz = os.path.join(root, "boot", f"vmlinuz-{rel}")
    if not os.path.exists(os.path.join(root, "lib", "modules", rel, "modules.dep")):
        debs = [f for f in os.listdir(cache) if f.startswith(pkg + "_") and f.endswith(".deb")]
        if not debs:
            log(f"downloading {pkg}")
            run(["apt-get", "download", "-qq", pkg], cwd=cache, stderr=subprocess.DEVNULL)
            debs = [f for f in os.listdir(cache) if f.startswith(pkg + "_") and f.endswith(".deb")]
        shutil.rmtree(root, ignore_errors=True)
        run(["dpkg", "-x", os.path.join(cache, debs[0]), root])
        run(["busybox", "depmod", "-b", root, rel])
    return rel, pvh_kernel(vmlinuz), os.path.join(root, "lib", "modules", rel)


def pvh_kernel(vmlinuz):
    """The uncompressed ELF vmlinux inside VMLINUZ (Debian's is XZ). qemu
    boots it through its PVH entry: no firmware and no decompression, which
    under TCG halves the boot. Falls back to VMLINUZ itself."""
    out = vmlinuz.replace("vmlinuz-", "vmlinux-")
    if not os.path.exists(out):
        with open(vmlinuz, "rb") as f:
            data = f.read()
        i = data.find(b"\xfd7zXZ\x00")
        if i < 0:
            return vmlinuz
        elf = lzma.LZMADecompressor().decompress(data[i:])
        if elf[:4] != b"\x7fELF":
            return vmlinuz
        with open(out + ".tmp", "wb") as f:
            f.write(elf)
        os.replace(out + ".tmp", out)
    return out


def module_closure(moddir, wanted):
    deps = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for ln in f:
            path, _, rest = ln.partition(":")
            deps[path] = rest.split()
    by_name = {os.path.basename(p).split(".ko")[0].replace("-", "_"): p for p in deps}
    out, todo = set(), [by_name[m] for m in wanted]
    while todo:
        p = todo.pop()
        if p not in out:
            out.add(p)
            todo.extend(deps[p])
    return {p: deps[p] for p in out}


class Cpio:
    """A newc cpio archive (the initramfs format), written by hand."""

    def __init__(self, path):
        self.f = open(path, "wb")
        self.ino = 1
        self.dirs = set()

    def _entry(self, name, mode, data=b""):
        name_b = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(name_b), 0]
        self.ino += 1
        hdr = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.f.write(hdr + name_b + b"\0" * (-(len(hdr) + len(name_b)) % 4))
        self.f.write(data + b"\0" * (-len(data) % 4))

    def dir(self, name):
        name = name.strip("/")
        if not name or name in self.dirs:
            return
        self.dir(os.path.dirname(name))
        self.dirs.add(name)
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name, src, mode=None):
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        with open(src, "rb") as f:
            data = f.read()
        perm = mode if mode is not None else stat.S_IMODE(os.stat(src).st_mode)
        self._entry(name, stat.S_IFREG | perm, data)

    def bytes(self, name, data, mode=0o644):
        name = name.strip("/")
        self.dir(os.path.dirname(name))
        self._entry(name, stat.S_IFREG | mode, data)

    def tree(self, name, src):
        for dp, dns, fns in os.walk(src):
            dns.sort()
            rel = os.path.relpath(dp, src)
            self.dir(os.path.join(name, rel) if rel != "." else name)
            for fn in sorted(fns):
                self.file(os.path.join(name, rel, fn), os.path.join(dp, fn))

    def close(self):
        self._entry("TRAILER!!!", 0)
        self.f.close()


def build_initramfs(path, work, bin_path, rel, moddir, payload_layout):
    cp = Cpio(path)
    cp.file("bin/busybox", shutil.which("busybox"), 0o755)
    cp.file("init", os.path.join(REPO, "scripts", "powercut-init.sh"), 0o755)
    mods = module_closure(moddir, MODULES)
    for p in sorted(mods):
        cp.file(f"lib/modules/{rel}/{p}", os.path.join(moddir, p), 0o644)
    dep = "".join(f"{p}: {' '.join(d)}\n" for p, d in sorted(mods.items()))
    cp.bytes(f"lib/modules/{rel}/modules.dep", dep.encode())
    stripped = os.path.join(work, "stagehand.stripped")
    if shutil.which("strip"):
        run(["strip", "-o", stripped, bin_path])
    else:
        shutil.copy(bin_path, stripped)
    cp.file("stagehand/stagehand", stripped, 0o755)
    out = subprocess.run(["ldd", bin_path], check=True, capture_output=True, text=True).stdout
    for ln in out.splitlines():
        parts = ln.split()
        lib = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if lib.startswith("/"):
            cp.file(lib, os.path.realpath(lib), 0o755)
    cp.tree("payload/layout", payload_layout)
    cp.close()


class Guest:
    """One qemu run; its console lines are timestamped as they arrive."""

    def __init__(self, args, kernel, initrd, images, cmdline):
        accel = ["-accel", "kvm", "-cpu", "host"] if args.kvm else ["-accel", "tcg", "-cpu", "max"]
        cmd = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none",
               "-machine", "q35", *accel, "-m", "1024", "-smp", "1", "-no-reboot",
               "-serial", "stdio", "-kernel", kernel, "-initrd", initrd,
               "-append", "console=ttyS0 quiet panic=-1 " + cmdline]
        for img in images:
            cmd += ["-drive", f"file={img},format=raw,if=virtio,cache=writeback"]
        self.lines = []
        self.cond = threading.Condition()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self.cond:
                self.lines.append((time.monotonic(), line))
                self.cond.notify_all()
        with self.cond:
            self.lines.append((time.monotonic(), None))
            self.cond.notify_all()

    def wait_for(self, prefix, timeout):
        """Time at which a console line starting with PREFIX arrived, and the line."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, ln in self.lines:
                    if ln is None:
                        raise RuntimeError(f"guest exited before '{prefix}':\n{self.console()}")
                    if "POWERCUT-FAIL" in ln or "BLOCKREPLAY-FAIL" in ln:
                        raise RuntimeError(f"guest failed: {ln}\n{self.console()}")
                    if ln.startswith(prefix):
                        return t, ln
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no '{prefix}' within {timeout} s:\n{self.console()}")
                self.cond.wait(left)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.reader.join()

    def wait_exit(self, timeout):
        self.proc.wait(timeout)
        self.reader.join()

    def console(self):
        return "\n".join(ln for _, ln in self.lines if ln is not None)


# ---------------------------------------------------------------------------
# Independent checks (hashlib; nothing of stagehand's code)
# ---------------------------------------------------------------------------
def tree_hash(root):
    """sha256 over every file's and symlink's path, type, permission bits
    and content under ROOT (directories count only through what they hold)."""
    if not os.path.isdir(root):
        return "none"
    h = hashlib.sha256()
    entries = []
    for dp, dns, fns in os.walk(root):
        for fn in fns + [d for d in dns if os.path.islink(os.path.join(dp, d))]:
            full = os.path.join(dp, fn)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                entries.append((rel, "l", os.readlink(full)))
            else:
                with open(full, "rb") as f:
                    entries.append((rel, "f %o" % stat.S_IMODE(st.st_mode), hashlib.sha256(f.read()).hexdigest()))
    for e in sorted(entries):
        h.update(("\0".join(e) + "\n").encode())
    return h.hexdigest()


def expected_world(payload, tag, out):
    """The destination tree a clean install of TAG gives, built by copying
    the generator's own files (not by installing them)."""
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(os.path.join(payload, f"tree-{tag}"), os.path.join(out, "app"))
    for name, sub in (("p.so", "lib"), ("p.control", "ext"), ("p--1.0.sql", "ext")):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
        shutil.copy(os.path.join(payload, f"files-{tag}", name), os.path.join(out, sub, name))
    return tree_hash(out)


def leftovers(root, skip):
    found = []
    for dp, dns, fns in os.walk(root):
        dns[:] = [d for d in dns if os.path.join(dp, d) not in skip]
        found += [os.path.join(dp, n) for n in dns + fns if ".stagehand-" in n]
    return found


# ---------------------------------------------------------------------------
# The campaign
# ---------------------------------------------------------------------------
class Config:
    def __init__(self, name, args, base):
        self.name = name
        self.statefs, state_rel = CONFIGS[name]
        self.dir = os.path.join(base, name)
        self.mnt = os.path.join(self.dir, "mnt")
        self.state = os.path.join(self.mnt, state_rel)
        self.dest = os.path.join(self.mnt, "a", "dest")
        self.disks = ["a"] + (["b"] if self.statefs else [])
        self.cuts = []
        self.upgrade_s = None
        self.boot_s = []

    def images(self, kind):
        return [os.path.join(self.dir, f"{kind}-{d}.img") for d in self.disks]

    def cmdline(self, mode):
        return f"pc.mode={mode} pc.mnt={self.mnt} pc.statefs={self.statefs or 'none'} pc.state={self.state}"

    def fs_of(self, disk):
        return "ext4" if disk == "a" else self.statefs

    def mount(self, kind):
        for d, img in zip(self.disks, self.images(kind)):
            os.makedirs(os.path.join(self.mnt, d), exist_ok=True)
            run(["mount", "-t", self.fs_of(d), "-o", "loop", img, os.path.join(self.mnt, d)])

    def umount(self):
        for d in reversed(self.disks):
            p = os.path.join(self.mnt, d)
            if os.path.ismount(p):
                run(["umount", p])


def mkfs(fs, img, mib):
    with open(img, "wb") as f:
        f.truncate(mib << 20)
    if fs == "ext4":
        run(["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img])
    else:
        run(["mkfs.btrfs", "-q", "-f", img], stdout=subprocess.DEVNULL)


def install_args(cfg, layout, tag):
    """The install the guest's /init runs too (scripts/powercut-init.sh)."""
    d = cfg.dest
    return ["--state-dir", cfg.state, "--quiet", "install", f"oci-layout:{layout}:{tag}", "--name", "p",
            "--to", f"{d}/app", "--map", f"*.so={d}/lib", "--map", f"*.control={d}/ext",
            "--map", f"*.sql={d}/ext"]


def prepare(cfg, args, layout, hashes):
    """The pristine images every cut starts from: fresh file systems with v1
    installed (on the host, at the guest's paths) and cleanly unmounted."""
    os.makedirs(cfg.dir, exist_ok=True)
    for d, img in zip(cfg.disks, cfg.images("pristine")):
        mkfs(cfg.fs_of(d), img, args.image_mib)
    cfg.mount("pristine")
    try:
        os.makedirs(cfg.dest)
        # v1's layout blobs go into the cache before it exits, not in a
        # process it leaves behind (the file systems are unmounted next).
        run([args.bin, *install_args(cfg, layout, "v1")], env=dict(os.environ, STAGEHAND_CLEANUP="wait"))
        got = tree_hash(cfg.dest)
    finally:
        cfg.umount()
    if got != hashes["v1"]:
        sys.exit(f"powercut: {cfg.name}: a clean install of v1 does not hash as v1")


def copy_images(cfg, src_kind, dst_kind):
    for s, d in zip(cfg.images(src_kind), cfg.images(dst_kind)):
        run(["cp", "--sparse=always", "--reflink=auto", s, d])


def one_cut(cfg, k, args, kernel, initrd, hashes, digests, rng):
    copy_images(cfg, "pristine", "cut")
    after_success = cfg.upgrade_s is None or rng.random() < args.after_success
    g = Guest(args, kernel, initrd, cfg.images("cut"), cfg.cmdline("cut"))
    try:
        t_start, _ = g.wait_for("POWERCUT-START", args.boot_timeout)
        cfg.boot_s.append(t_start - g.started)
        if after_success:
            t_done, _ = g.wait_for("POWERCUT-DONE", args.boot_timeout + 600)
            if cfg.upgrade_s is None:
                cfg.upgrade_s = t_done - t_start
            time.sleep(rng.uniform(0, 0.05))
        else:
            time.sleep(rng.uniform(0, cfg.upgrade_s * 1.1))
        delay = time.monotonic() - t_start
    finally:
        g.kill()
    done = [ln for _, ln in g.lines if ln and ln.startswith("POWERCUT-DONE")]
    reported = bool(done) and done[0].split()[1] == "0"
    cut = {"cut": k, "delay_s": round(delay, 3), "aimed_after_success": after_success,
           "reported_success": reported, "violations": []}
    v = cut["violations"]
    if done and not reported:
        v.append(f"the upgrade failed by itself: {done[0]}\n{g.console()}")
    copy_images(cfg, "cut", "precut")  # kept for inspection if the cut violates
    cfg.mount("cut")
    try:
        st = subprocess.run([args.bin, "--state-dir", cfg.state, "status", "--json"],
                            capture_output=True, text=True)
        if st.returncode != 0:
            v.append(f"recovery (status --json) exit {st.returncode}: {st.stderr.strip()}")
        else:
            status = json.loads(st.stdout)
            if status.get("pending"):
                v.append(f"pending after recovery: {status['pending']}")
            cut["recovery"] = [r.get("outcome") for r in status.get("recovered") or []]
        left = leftovers(os.path.join(cfg.mnt, "a"), {cfg.state, os.path.join(cfg.mnt, "a", "lost+found")})
        if left:
            v.append(f"leftovers after recovery: {left[:3]}")
        h = tree_hash(cfg.dest)
        world = next((t for t in ("v1", "v2") if hashes[t] == h), "mixed")
        cut["world"] = world
        if world == "mixed":
            per = {t: tree_hash(os.path.join(cfg.dest, t)) for t in ("app", "lib", "ext")}
            v.append(f"the targets are neither all-v1 nor all-v2: {per}")
        if reported and world != "v2":
            v.append(f"the guest reported success but the disk holds {world}")
        ls = subprocess.run([args.bin, "--state-dir", cfg.state, "list", "--json"],
                            capture_output=True, text=True)
        if ls.returncode != 0:
            v.append(f"list --json exit {ls.returncode}: {ls.stderr.strip()}")
        elif world in digests:
            listed = [p for p in json.loads(ls.stdout) if p.get("name") == "p"]
            got = [p.get("digest") for p in listed]
            if got != [digests[world]]:
                v.append(f"{world} on disk but list --json says {got}")
        if v:
            hist = subprocess.run([args.bin, "--state-dir", cfg.state, "history", "--json"],
                                  capture_output=True, text=True)
            cut["history"] = hist.stdout[-2000:]
            cut["state_files"] = sorted(os.listdir(cfg.state)) if os.path.isdir(cfg.state) else None
    finally:
        cfg.umount()
    if v and len([c for c in cfg.cuts if c["violations"]]) < 3:
        for s, d in zip(cfg.images("precut"), cfg.images(f"violation{k}")):
            os.replace(s, d)
        with open(os.path.join(cfg.dir, f"violation{k}.console"), "w") as f:
            f.write(g.console())
    return cut


class Scheduler:
    """Hands out cuts to the worker threads: a configuration's cuts run one
    after the other (they share its images and mount points), and a free
    worker takes the idle configuration with the fewest cuts, so all
    configurations advance together. After the budget only configurations
    without a cut get one."""

    def __init__(self, cfgs, args, t0):
        self.cfgs, self.args, self.t0 = cfgs, args, t0
        self.lock = threading.Lock()
        self.busy = set()
        self.started = {c.name: 0 for c in cfgs}
        self.said_budget = False
        self.stop = False

    def take(self):
        with self.lock:
            over = bool(self.args.budget) and time.monotonic() - self.t0 > self.args.budget
            if over and not self.said_budget:
                self.said_budget = True
                log(f"budget of {self.args.budget:.0f} s spent: no new cuts")
            free = [c for c in self.cfgs if not self.stop and c.name not in self.busy and self.started[c.name] < self.args.cuts
                    and not (over and self.started[c.name] > 0)]
            if not free:
                return None
            c = min(free, key=lambda c: self.started[c.name])
            self.busy.add(c.name)
            k = self.started[c.name]
            self.started[c.name] += 1
            return c, k

    def done(self, cfg):
        with self.lock:
            self.busy.discard(cfg.name)


def worker(sched, rngs, args, kernel, initrd, hashes, digests, start):
    while True:
        # A configuration's cuts run in one worker at a time; when none is
        # free, every one left is being cut by another worker, which goes on.
        got = sched.take()
        if got is None:
            return
        cfg, k = got
        try:
            cut = one_cut(cfg, k, args, kernel, initrd, hashes, digests, rngs[cfg.name])
        except BaseException:
            sched.stop = True  # a broken harness stops the run: no worker takes another cut
            raise
        finally:
            sched.done(cfg)
        cfg.cuts.append(cut)
        if k == 0:
            log(f"{cfg.name}: boot {cfg.boot_s[0]:.1f} s, upgrade {cfg.upgrade_s:.1f} s in the guest")
        for msg in cut["violations"]:
            log(f"{cfg.name}: cut {k} (at {cut['delay_s']} s): VIOLATION: {msg}")
        if (k + 1) % 5 == 0:
            log(f"{cfg.name}: {k + 1} cuts, {sum(1 for c in cfg.cuts if c['violations'])} violations, "
                f"{time.monotonic() - start:.0f} s")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cuts", type=int, default=10, help="cuts per configuration")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--mib", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--image-mib", type=int, default=256,
                    help="size of each disk image (mkfs.btrfs wants at least ~110 MiB)")
    ap.add_argument("--budget", type=float, default=0, help="stop starting cuts after this many seconds (0: none)")
    ap.add_argument("--after-success", type=float, default=0.25,
                    help="share of cuts aimed right after the guest reported success")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--cache", required=True, help="where the kernel .deb is kept between runs")
    ap.add_argument("--boot-timeout", type=float, default=300)
    ap.add_argument("--accel", choices=["tcg", "kvm"], default="tcg",
                    help="kvm only where nested KVM really boots a guest (here it hangs)")
    ap.add_argument("--jobs", type=int, default=0,
                    help="configurations cut at the same time, each with its own guest (0: one per core)")
    ap.add_argument("--json", help="write every cut's outcome here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("powercut: needs root (loop mounts of the disk images)")
    args.kvm = args.accel == "kvm"
    t0 = time.monotonic()
    work = os.path.abspath(args.work)
    rel, kernel, moddir = fetch_kernel(os.path.abspath(args.cache))
    payload = os.path.join(work, "payload")
    run([sys.executable, os.path.join(REPO, "scripts", "make-bench-payload.py"), payload,
         "--files", str(args.files), "--mib", str(args.mib)], stdout=subprocess.DEVNULL)
    hashes = {t: expected_world(payload, t, os.path.join(work, "expect", t)) for t in ("v1", "v2")}
    with open(os.path.join(payload, "layout", "index.json")) as f:
        digests = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"]
                   for m in json.load(f)["manifests"]}
    initrd = os.path.join(work, "initrd.cpio")
    build_initramfs(initrd, work, args.bin, rel, moddir, os.path.join(payload, "layout"))
    log(f"kernel {rel}, {'KVM' if args.kvm else 'TCG'}, initramfs {os.path.getsize(initrd) >> 20} MiB, "
        f"artifact {args.files} files + 3 mapped, {args.mib} MiB; setup {time.monotonic() - t0:.0f} s")
    cfgs = [Config(n, args, work) for n in args.configs.split(",") if n]
    for c in cfgs:
        t = time.monotonic()
        prepare(c, args, os.path.join(payload, "layout"), hashes)
        log(f"{c.name}: v1 installed, pristine images ready ({time.monotonic() - t:.1f} s)")
    start = time.monotonic()
    jobs = max(1, min(len(cfgs), args.jobs or os.cpu_count() or 1))
    log(f"{len(cfgs)} configurations, {jobs} at a time")
    # Each configuration has its own seeded generator, so its kill instants
    # do not depend on how the workers interleave.
    rngs = {c.name: random.Random(f"{args.seed}:{c.name}") for c in cfgs}
    sched = Scheduler(cfgs, args, t0)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for f in [pool.submit(worker, sched, rngs, args, kernel, initrd, hashes, digests, start)
                  for _ in range(jobs)]:
            f.result()
    total_v = 0
    for c in cfgs:
        nv = sum(1 for x in c.cuts if x["violations"])
        total_v += nv
        rs = sum(1 for x in c.cuts if x["reported_success"])
        new = sum(1 for x in c.cuts if x.get("world") == "v2")
        old = sum(1 for x in c.cuts if x.get("world") == "v1")
        boot = sum(c.boot_s) / max(1, len(c.boot_s))
        print(f"powercut {c.name}: {len(c.cuts)} cuts, {nv} violations, {rs} reported-success "
              f"(after recovery v1 {old}, v2 {new}; boot {boot:.1f} s, upgrade {c.upgrade_s:.1f} s)", flush=True)
    print(f"powercut: {sum(len(c.cuts) for c in cfgs)} cuts, {total_v} violations, "
          f"{time.monotonic() - t0:.0f} s ({'KVM' if args.kvm else 'TCG'})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({c.name: c.cuts for c in cfgs}, f, indent=1)
    if total_v:
        log(f"violating cuts' images and consoles kept under {work}")
    sys.exit(1 if total_v else 0)


if __name__ == "__main__":
    main()
