#!/usr/bin/python3
"""Python side of scripts/onnx_trained.sh: trains a ResNet-style network on Fashion-MNIST with
PyTorch, exports it to ONNX (BN kept), and measures the top-1 of any ONNX file of that network by
loading its initializers back into the PyTorch module (PyTorch's own number, to hold corelocker's
`eval` of the same file, which runs it through OpenCV, against).

  onnx_peer.py train --out model.onnx [--arch small|resnet20] [--pad 32] [--train-subset N]
                     [--epochs 1] [--seed 1] [--threads 2]
  onnx_peer.py eval MODEL.onnx [MODEL.onnx ...] [--arch A] [--pad P]   one JSON line per file

  --arch small     the network of tests/fixtures/make_onnx_fixtures.py (28x28 input)
  --arch resnet20  ResNet-20 with 1x1 projection shortcuts (tests/fixtures/torchscript_model.py,
                   blocks 3, width 16); train it with --pad 32 (corelocker: eval --pad 32).
                   Option-A shortcuts export a Pad whose amounts the graph computes, which
                   OpenCV 4.6 cannot import.
  --pad P          images centred in P x P (black border), as corelocker's --pad
  --pad-after-normalise  the border is 0 after normalising, as corelocker's --pad-after-normalise

Needs Debian's python3-torch and python3-onnx. Measurement tool, not part of the product.
"""
import argparse
import gzip
import importlib.util
import json
import os
import struct

import numpy as np
import onnx
import onnx.numpy_helper
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = "/usr/share/datasets/fashion-mnist"


def fixture_module(name="make_onnx_fixtures"):
    path = os.path.join(HERE, "..", "tests", "fixtures", name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(arch):
    if arch == "resnet20":
        return fixture_module("torchscript_model").SmallResNet(16, blocks=3, shortcut="projection")
    return fixture_module().SmallResNet()


def idx(name, pad=0, after=False):
    with gzip.open(os.path.join(DATA, name)) as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2049:
        return torch.from_numpy(np.frombuffer(data, np.uint8, n, 8).astype(np.int64))
    rows, cols = struct.unpack(">II", data[8:16])
    x = np.frombuffer(data, np.uint8, n * rows * cols, 16).reshape(n, 1, rows, cols)
    x = torch.from_numpy(x.astype(np.float32)) / 255.0
    if after:  # as corelocker's --pad-after-normalise: normalise, then a border of 0
        x = (x - 0.2860) / 0.3530
    if pad > rows:  # as corelocker's --pad: a zero border in [0, 1] (then normalise)
        ph, pw = pad - rows, pad - cols
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    return x if after else (x - 0.2860) / 0.3530


def top1(net, x, y):
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            correct += (net(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item()
    return 100.0 * correct / len(x)


def fit(net, x, y, epochs, train_subset=0):
    """SGD with Nesterov momentum and a one-cycle schedule, batches of 128 (on `train_subset`
    random images when > 0). Returns the number of images trained on."""
    if train_subset > 0:
        keep = torch.randperm(len(x))[:train_subset]
        x, y = x[keep], y[keep]
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            b = perm[i:i + 128]
            opt.zero_grad()
            F.cross_entropy(net(x[b]), y[b]).backward()
            opt.step()
            sched.step()
    net.eval()
    return len(x)


def train(a):
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    net = build(a.arch)
    x, y = idx("train-images-idx3-ubyte.gz", a.pad, a.pad_after_normalise), idx("train-labels-idx1-ubyte.gz")
    trained = fit(net, x, y, a.epochs, a.train_subset)
    torch.onnx.export(net, x[:1], a.out, input_names=["input"], output_names=["logits"], opset_version=13,
                      do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE)
    xt, yt = idx("t10k-images-idx3-ubyte.gz", a.pad, a.pad_after_normalise), idx("t10k-labels-idx1-ubyte.gz")
    print(json.dumps({"file": a.out, "arch": a.arch, "pad": a.pad,
                      "pad_after_normalise": a.pad_after_normalise, "train_images": trained, "epochs": a.epochs,
                      "pytorch_top1": top1(net, xt, yt)}))


def evaluate(a):
    torch.set_num_threads(a.threads)
    xt, yt = idx("t10k-images-idx3-ubyte.gz", a.pad, a.pad_after_normalise), idx("t10k-labels-idx1-ubyte.gz")
    for path in a.models:
        m = onnx.load(path)
        onnx.checker.check_model(m)
        net = build(a.arch)
        state = net.state_dict()
        inits = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in m.graph.initializer}
        for n in m.graph.node:  # the exporter feeds deduplicated initializers through Identity
            if n.op_type == "Identity" and n.input[0] in inits:
                inits[n.output[0]] = inits[n.input[0]]
        missing = [k for k in state if k not in inits and not k.endswith("num_batches_tracked")]
        if missing:
            raise SystemExit(f"{path}: initializers missing for {missing[:5]}")
        net.load_state_dict({k: inits.get(k, v) for k, v in state.items()})
        print(json.dumps({"file": path, "top1": top1(net, xt, yt),
                          "metadata": {p.key: p.value for p in m.metadata_props}}))


def train_args(t):
    """The options of a `train` subcommand (shared with safetensors_peer.py)."""
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--train-subset", type=int, default=0, help="train on N random training images (0: all)")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    train_args(t)
    e = sub.add_parser("eval")
    e.add_argument("models", nargs="+")
    e.add_argument("--threads", type=int, default=2)
    for p in (t, e):
        p.add_argument("--arch", choices=["small", "resnet20"], default="small")
        p.add_argument("--pad", type=int, default=0)
        p.add_argument("--pad-after-normalise", action="store_true",
                       help="pad after normalising (a border of 0 in normalised units)")
    a = ap.parse_args()
    train(a) if a.cmd == "train" else evaluate(a)


if __name__ == "__main__":
    main()
