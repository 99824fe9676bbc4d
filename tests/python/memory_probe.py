#!/usr/bin/python3
"""Measures what a lock costs in memory on a large model, in a process of its own: prints one JSON
line. peak_growth: the kernel's peak resident set (VmHWM, reset before the lock) over the resident
set before it; rss_growth: what the lock left resident; rss_growth_trimmed: the same after
malloc_trim(0) (what is held, not what glibc keeps for reuse); unlocked_*: the same for
`with corelocker.unlocked(model, key)` on the locked model. A lock and unlock run once before
the measurement (TorchScript compilation, LibTorch's thread pools). Linux only.

    memory_probe.py [conv|mlp|vgg19] [MiB] [ratio]

conv: 3x3 convolutions 512 -> 512 (one unit = one 9-weight kernel), mlp: square linear layers
(one unit = one weight), about MiB of float32 weights in all; vgg19: bench/torch_peer.py's
network (20.0 M parameters; MiB ignored). ratio: of the lock (0.05). Used by test_memory.py and by
docs/python.md's measurement."""
import ctypes
import json
import os
import sys
import time

import torch
import torch.nn as nn

import corelocker

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




def main():
    kind = sys.argv[1] if len(sys.argv) > 1 else "conv"
    mib = float(sys.argv[2]) if len(sys.argv) > 2 else 128
    ratio = float(sys.argv[3]) if len(sys.argv) > 3 else 0.05
    torch.manual_seed(0)
    if kind == "vgg19":
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench"))
        from torch_peer import Vgg
        layers = None
        model = Vgg(3, 10, 64).eval()
    elif kind == "conv":
        per = 512 * 512 * 9 * 4
        layers = [nn.Conv2d(512, 512, 3, padding=1, bias=False) for _ in range(max(1, round(mib * 2**20 / per)))]
    else:
        width = 2048
        per = width * width * 4
        layers = [nn.Linear(width, width, bias=False) for _ in range(max(1, round(mib * 2**20 / per)))]
    if layers is not None:
        model = nn.Sequential(*[m for layer in layers for m in (layer, nn.ReLU())]).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    ptrs = [p.data_ptr() for p in model.parameters()]
    # Once outside the measurement: TorchScript's compilation, LibTorch's thread pools.
    corelocker.unlock(model, corelocker.lock(model, ratio=ratio))
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset_peak()
    rss0 = rss()
    t0 = time.perf_counter()
    key = corelocker.lock(model, ratio=ratio)
    seconds = time.perf_counter() - t0
    rss1, peak1 = rss(), peak()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    trimmed = rss() - rss0
    reset_peak()
    rss2 = rss()
    with corelocker.unlocked(model, key):
        inside = peak() - rss2
    unlocked_peak = peak() - rss2
    print(json.dumps({
        "kind": kind, "weights": weights, "key_values_bytes": key.values * 4, "key_bytes": key.nbytes,
        "rss_growth": rss1 - rss0, "rss_growth_trimmed": trimmed, "peak_growth": peak1 - rss0,
        "unlocked_growth_inside": inside, "unlocked_peak_growth": unlocked_peak,
        "lock_seconds": seconds,
        "same_tensors": ptrs == [p.data_ptr() for p in model.parameters()],
        "locked": corelocker.fingerprint(model) == key.locked_fingerprint,
    }))


if __name__ == "__main__":
    main()
