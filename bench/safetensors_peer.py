#!/usr/bin/python3
"""Python side of a safetensors lock measured on a model PyTorch trained: trains a ResNet-20 on
Fashion-MNIST and saves its state dict as a safetensors file (the layout safetensors.torch writes:
names and shapes of the state dict), and measures any safetensors file of that network by loading
it back into the PyTorch module: top-1 on the test set, and the effective top-1 after the attack
that needs no labels (BatchNorm statistics re-estimated on unlabelled training images).

  safetensors_peer.py train --out model.safetensors [--train-subset N] [--epochs 1] [--seed 1]
  safetensors_peer.py eval FILE [FILE ...] [--reestimate-images 500]   one JSON line per file
  safetensors_peer.py scale --zero Z --decoy D --factor S --out F   decoys scaled by S

The network is tests/fixtures/torchscript_model.py's SmallResNet (width 16, 3 blocks a stage,
1x1 projection shortcuts). Needs Debian's python3-torch (the safetensors package is not in
Debian; the few lines below read and write the published format). Measurement tool, not part of
the product.
"""
import argparse
import importlib.util
import json
import os
import struct

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = {torch.float32: ("F32", np.float32), torch.int64: ("I64", np.int64)}


def peer(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ONNX_PEER = peer("onnx_peer")  # data, training and top-1, shared with the ONNX measurements
idx, top1 = ONNX_PEER.idx, ONNX_PEER.top1


def build():
    return ONNX_PEER.build("resnet20")


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
    trained = ONNX_PEER.fit(net, x, y, a.epochs, a.train_subset)
    save(net.state_dict(), a.out)
    xt, yt = idx("t10k-images-idx3-ubyte.gz"), idx("t10k-labels-idx1-ubyte.gz")
    print(json.dumps({"file": a.out, "train_images": trained, "epochs": a.epochs,
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
                          "lock": {k: v for k, v in meta.items()
                                   if k in ("corelocker.criterion", "corelocker.scope", "corelocker.ratio")}}))


def scale(a):
    """`zero + factor * (decoy - zero)` per float tensor: the decoys of a lock scaled, where the
    zero-fill and the decoy lock took the same units (the same criterion, scope and ratio)."""
    zero, _ = load(a.zero)
    decoy, _ = load(a.decoy)
    if zero.keys() != decoy.keys():
        raise SystemExit(f"{a.zero} and {a.decoy} hold different tensors")
    save({k: z + a.factor * (decoy[k] - z) if z.is_floating_point() else z for k, z in zero.items()},
         a.out)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    ONNX_PEER.train_args(sub.add_parser("train"))
    e = sub.add_parser("eval")
    e.add_argument("files", nargs="+")
    e.add_argument("--reestimate-images", type=int, default=500)
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("scale")
    s.add_argument("--zero", required=True)
    s.add_argument("--decoy", required=True)
    s.add_argument("--factor", type=float, required=True)
    s.add_argument("--out", required=True)
    a = ap.parse_args()
    {"train": train, "eval": evaluate, "scale": scale}[a.cmd](a)


if __name__ == "__main__":
    main()
