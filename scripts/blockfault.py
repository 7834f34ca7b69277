#!/usr/bin/env python3
"""Write errors at the block level: the upgrade of the block-replay guest
runs into a disk that fails every write (dm-flakey, error_writes) under the
targets, under the state dir (journal and blob cache), or under both.

Each run boots the guest of scripts/blockreplay.py with br.fault: it
installs v1 on healthy disks, turns device a (targets) or b (the state dir,
split layout) into dm-flakey that fails every write from UP seconds after
its table was loaded (or from the moment stagehand reaches a named kill
point, `@POINT[:N]`), upgrades to v2, then gives the device its linear
table back (the disk returns) and unmounts. The host then mounts the image
(the file system replays its journal), runs stagehand's recovery and checks
what scripts/blockreplay.py checks of a replayed state. Besides:
* the upgrade exits 0 or 1 (an error, never a panic or a signal), and a
  failure says `stagehand: error:`;
* after recovery the targets hold all v1 or all v2, v2 if the upgrade
  reported success (its data was durable before it did).

Run through scripts/blockreplay.sh with BLOCKFAULT_UPS set; docs/proofs.md
("Block-level crash states", item "Write errors") has the results.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blockreplay as br  # noqa: E402

# (layout, device): the device a under the targets (and, in the same layout,
# the state dir), or b under the state dir alone.
PLACES = [("same", "a"), ("split", "a"), ("split", "b")]


def boot(cfg, args, kernel, initrd, dev, up):
    """Boots the guest on a copy of the pristine image; returns the image
    and what the guest reported: ({op: exit code}, error lines, console)."""
    img, g = br.boot(cfg, args, kernel, initrd, [], f"br.skip={args.skip} br.fault={dev} br.up={up}")
    lines = [ln for _, ln in g.lines if ln]
    ops = {ln.split()[1]: int(ln.split()[2]) for ln in lines if ln.startswith("BLOCKREPLAY-OP ")}
    errs = [ln[len("BLOCKREPLAY-ERR "):] for ln in lines if ln.startswith("BLOCKREPLAY-ERR ")]
    return img, ops, errs, g.console()


def one(fs, layout, dev, up, args, work, kernel, initrd, worlds, digests):
    cfg = br.Config(fs, layout, work, None, args.image_mib)
    when = f"at-{up[1:].replace(':', '-')}" if up.startswith("@") else f"up{up}"
    cfg.name = f"{fs}-{layout}-{dev}-{when}"
    cfg.dir = os.path.join(work, cfg.name)
    cfg.pristine = os.path.join(cfg.dir, "pristine.img")
    br.prepare(cfg)
    img, ops, errs, console = boot(cfg, args, kernel, initrd, dev, up)
    if ops.get("install") != 0 or "upgrade" not in ops:
        raise RuntimeError(f"{cfg.name}: the guest's operations {ops}:\n{console[-3000:]}")
    rc = ops["upgrade"]
    v = []
    if any(ln.startswith("BLOCKREPLAY-CLOCK never reached") for ln in console.splitlines()):
        v.append(f"the upgrade never reached {up[1:]}: no errors were injected (a point that no longer exists?)")
    if rc not in (0, 1):
        v.append(f"the upgrade exited {rc}, not 0 or 1 (a panic or a signal): {errs}")
    if rc == 1 and not any("stagehand: error:" in e for e in errs):
        v.append(f"the failing upgrade said no error: {errs}")
    if any("panicked" in e for e in errs):
        v.append(f"the upgrade panicked: {errs}")
    allowed = {"v2"} if rc == 0 else {"v1", "v2"}
    # The disk as the guest left it, before the host's mount replays the
    # file systems' journals into it: kept beside a violating run.
    raw = os.path.join(cfg.dir, "as-left.img")
    shutil.copyfile(img, raw)
    r = br.inspect(cfg, args, worlds, digests, img, allowed, "v2")
    r["violations"] = v + r["violations"]
    error = next((e for e in errs if "stagehand: error:" in e), errs[-1] if errs else "")
    out = {"config": cfg.name, "fs": fs, "layout": layout, "device": dev, "up": up, "upgrade_exit": rc,
           "error": error[:400], "stderr_tail": errs, "world": r.get("world"),
           "noted_leftovers": r.get("noted_leftovers", 0), "violations": r["violations"]}
    if r["violations"]:
        # The evidence: the kernel's messages and stagehand's log, with the
        # time the errors started, and the disk as the guest left it.
        with open(os.path.join(cfg.dir, "console.txt"), "w") as f:
            f.write(console)
    elif not os.environ.get("KEEP"):
        shutil.rmtree(cfg.dir, ignore_errors=True)
    else:
        os.remove(raw)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ups", default="0,1,2,3,4,6",
                    help="when the errors start: seconds of healthy writes, or @POINT[:N], where stagehand "
                         "reaches that kill point")
    ap.add_argument("--skip", default="", help="STAGEHAND_SKIP_FSYNC in the guest (to show what a fix changes)")
    ap.add_argument("--places", default="same:a,split:a,split:b", help="LAYOUT:DEVICE pairs (device a or b)")
    args = br.guest_args(ap)
    t0 = time.monotonic()
    work = os.path.abspath(args.work)
    kernel, initrd, worlds, digests = br.setup(args, work)
    places = [tuple(p.split(":")) for p in args.places.split(",")]
    summary, bad = [], 0
    for fs in args.fs.split(","):
        for layout, dev in places:
            for up in args.ups.split(","):
                t = time.monotonic()
                s = one(fs, layout, dev, up, args, work, kernel, initrd, worlds, digests)
                summary.append(s)
                bad += len(s["violations"])
                for msg in s["violations"]:
                    br.log(f"{s['config']}: VIOLATION: {msg}")
                what = "succeeded" if s["upgrade_exit"] == 0 else f"exit {s['upgrade_exit']}: {s['error'][:160]}"
                noted = f", {s['noted_leftovers']} leftovers named in history" if s["noted_leftovers"] else ""
                print(f"blockfault {s['config']}: upgrade {what}; after recovery {s['world']}{noted}, "
                      f"{len(s['violations'])} violations ({time.monotonic() - t:.0f} s)", flush=True)
                if args.json:
                    with open(args.json, "w") as f:
                        json.dump(summary, f, indent=1)
    failed = sum(1 for s in summary if s["upgrade_exit"] != 0)
    print(f"blockfault: {len(summary)} runs, {failed} upgrades failed on the errors, {bad} violations, "
          f"{time.monotonic() - t0:.0f} s", flush=True)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
