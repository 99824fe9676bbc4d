#!/usr/bin/python3
"""Python side of a safetensors lock measured on a model PyTorch trained: trains a ResNet-20 on
Fashion-MNIST and saves its state dict as a safetensors file (the layout safetensors.torch writes:
names and shapes of the state dict), and measures any safetensors file of that network by loading
it back into the PyTorch module: top-1 on the test set, and the effective top-1 after the attack
that needs no labels (BatchNorm statistics re-estimated on unlabelled training images).

  safetensors_peer.py train --out model.safetensors [--train-subset N] [--epochs 1] [--seed 1]
  safetensors_peer.py eval FILE [FILE ...] [--reestimate-images 500]   one JSON line per file

The network is tests/fixtures/torchscript_model.py's SmallResNet (width 16, 3 blocks a stage,
1x1 projection shortcuts). Needs Debian's python3-torch (the safetensors package is not in
Debian; the few lines below read and write the published format). Measurement tool, not part of
the product.
"""
import argparse
import gzip
import importlib.util
import json
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = "/usr/share/datasets/fashion-mnist"
DTYPES = {torch.float32: ("F32", np.float32), torch.int64: ("I64", np.int64)}


def build():
    path = os.path.join(HERE, "..", "tests", "fixtures", "torchscript_model.py")
    spec = importlib.util.spec_from_file_location("torchscript_model", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.SmallResNet(16, blocks=3, shortcut="projection")


def idx(name):
    with gzip.open(os.path.join(DATA, name)) as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2049:
        return torch.from_numpy(np.frombuffer(data, np.uint8, n, 8).astype(np.int64))
    rows, cols = struct.unpack(">II", data[8:16])
    x = np.frombuffer(data, np.uint8, n * rows * cols, 16).reshape(n, 1, rows, cols)
    return (torch.from_numpy(x.astype(np.float32)) / 255.0 - 0.2860) / 0.3530


def save(state, path):
    header, blobs, at = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in state.items():
        dtype, np_type = DTYPES[t.dtype]
        b = t.detach().contiguous().numpy().astype(np_type).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-(8 + len(text)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    state = {}
    for name, d in header.items():
        np_type = {"F32": np.float32, "I64": np.int64}[d["dtype"]]
        b, e = d["data_offsets"]
        state[name] = torch.from_numpy(np.frombuffer(data[8 + n + b:8 + n + e], np_type).copy()).reshape(d["shape"])
    return state, meta


def top1(net, x, y):
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            correct += (net(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item()
    return 100.0 * correct / len(x)


def reestimate(net, x):
    """BatchNorm statistics recomputed from unlabelled images (cumulative average)."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, len(x), 100):
            net(x[i:i + 100])
    net.eval()


def train(a):
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    net = build()
    x, y = idx("train-images-idx3-ubyte.gz"), idx("train-labels-idx1-ubyte.gz")
    if a.train_subset > 0:
        keep = torch.randperm(len(x))[:a.train_subset]
        x, y = x[keep], y[keep]
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = a.epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    for _ in range(a.epochs):
        net.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
            sched.step()
    save(net.state_dict(), a.out)
    xt, yt = idx("t10k-images-idx3-ubyte.gz"), idx("t10k-labels-idx1-ubyte.gz")
    print(json.dumps({"file": a.out, "train_images": len(x), "epochs": a.epochs,
                      "pytorch_top1": top1(net, xt, yt)}))


def evaluate(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xt, yt = idx("t10k-images-idx3-ubyte.gz"), idx("t10k-labels-idx1-ubyte.gz")
    xu = idx("train-images-idx3-ubyte.gz")
    xu = xu[torch.randperm(len(xu))[:a.reestimate_images]]
    for path in a.files:
        state, meta = load(path)
        net = build()
        net.load_state_dict(state)
        plain = top1(net, xt, yt)
        reestimate(net, xu)
        print(json.dumps({"file": path, "top1": plain, "effective_top1": top1(net, xt, yt),
                          "reestimate_images": a.reestimate_images,
                          "lock": {k: v for k, v in meta.items() if k.startswith("corelocker.")
                                   and k in ("corelocker.criterion", "corelocker.scope",
                                             "corelocker.ratio")}}))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--train-subset", type=int, default=0, help="train on N random training images (0: all)")
    e = sub.add_parser("eval")
    e.add_argument("files", nargs="+")
    e.add_argument("--reestimate-images", type=int, default=500)
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    train(a) if a.cmd == "train" else evaluate(a)


if __name__ == "__main__":
    main()
