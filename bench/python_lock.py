#!/usr/bin/python3
"""What `corelocker.lock` costs in Python on vgg19 (20.0 M parameters, bench/torch_peer.py's
network): time against copy.deepcopy of the state dict, and memory. Prints one JSON object.

    PYTHONPATH=build/python /usr/bin/python3 bench/python_lock.py [--repeat 5] [--threads 2]

Each lock is timed from an unlocked model (unlocked again between runs); the first call also
compiles the module with torch.jit.script (`first_lock_s`), later ones reuse TorchScript's type
cache. Memory is measured in a fresh process (--one-lock): `peak_growth` is the kernel's peak
resident set (VmHWM, reset before the lock) over the resident set before it, `rss_growth` what
the lock left resident, `rss_growth_trimmed` the same after malloc_trim(0) (what stays held, not
what glibc keeps for reuse)."""
import argparse
import copy
import ctypes
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from torch_peer import Vgg  # noqa: E402

import corelocker  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def reset_peak():
    """Starts the kernel's peak resident set (VmHWM) afresh at the current resident set."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def vgg19():
    torch.manual_seed(0)
    return Vgg(3, 10, 64).eval()


def one_lock(args):
    model = vgg19()
    corelocker.structure(model)  # TorchScript compilation outside the measurement
    reset_peak()
    rss0 = rss()
    key = corelocker.lock(model, ratio=args.ratio)
    rss1, peak1 = rss(), peak()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    print(json.dumps({"peak_growth": peak1 - rss0, "rss_growth": rss1 - rss0,
                      "rss_growth_trimmed": rss() - rss0, "key_bytes": key.nbytes}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--one-lock", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one_lock:
        return one_lock(args)
    model = vgg19()
    params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    key = corelocker.lock(model, ratio=args.ratio)
    first = time.perf_counter() - t0
    corelocker.unlock(model, key)
    lock_s, unlock_s, deepcopy_s, script_s, enter_exit_s = [], [], [], [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        copy.deepcopy(model.state_dict())
        deepcopy_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.jit.script(model)
        script_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        key = corelocker.lock(model, ratio=args.ratio)
        lock_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with corelocker.unlocked(model, key):
            pass
        enter_exit_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        corelocker.unlock(model, key)
        unlock_s.append(time.perf_counter() - t0)
    mem = json.loads(subprocess.run([sys.executable, __file__, "--one-lock", "--ratio", str(args.ratio),
                                     "--threads", str(args.threads)], check=True, capture_output=True,
                                    text=True).stdout)
    med = statistics.median
    print(json.dumps({
        "parameters": params, "weights_bytes": 4 * params, "ratio": args.ratio, "threads": args.threads,
        "key_values": key.values, "key_bytes": key.nbytes, "first_lock_s": round(first, 3),
        "deepcopy_state_dict_s": round(med(deepcopy_s), 3), "torch_jit_script_s": round(med(script_s), 3),
        "lock_s": round(med(lock_s), 3), "lock_over_deepcopy": round(med(lock_s) / med(deepcopy_s), 2),
        "unlock_s": round(med(unlock_s), 3), "unlocked_enter_exit_s": round(med(enter_exit_s), 3), **mem,
    }))


if __name__ == "__main__":
    main()
