#!/usr/bin/python3
"""PyTorch peer of `corelocker bench`: the same architectures, input and training step in
Python PyTorch (Debian python3-torch 1.13), timed the same way. Prints one JSON object.

Usage: torch_peer.py --arch ARCH --channels C --size S --classes N --pad-to P
                     --batch B --steps K --threads T [--opt key=value ...]
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_init(m):
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d):
            n = mod.kernel_size[0] * mod.kernel_size[1] * mod.out_channels
            mod.weight.data.normal_(0, math.sqrt(2.0 / n))


class ResNet(nn.Module):  # resnet20: basic blocks, option-A shortcuts
    def __init__(self, depth, cin, classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(cin, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.blocks = nn.ModuleList()
        self.meta = []
        inp = 16
        for stage, planes in enumerate([16, 32, 64]):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                b = nn.Module()
                b.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
                b.bn1 = nn.BatchNorm2d(planes)
                b.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
                b.bn2 = nn.BatchNorm2d(planes)
                self.blocks.append(b)
                self.meta.append((stride, inp, planes))
                inp = planes
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for b, (stride, inp, planes) in zip(self.blocks, self.meta):
            out = F.relu(b.bn1(b.conv1(x)))
            out = b.bn2(b.conv2(out))
            sc = x
            if stride != 1 or inp != planes:
                sc = x[:, :, ::stride, ::stride]
                extra = planes - inp
                sc = F.pad(sc, (0, 0, 0, 0, extra // 2, extra - extra // 2))
            x = F.relu(out + sc)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Vgg(nn.Module):
    def __init__(self, cin, classes, width):
        super().__init__()
        cfg = [1, 1, 0, 2, 2, 0, 4, 4, 4, 4, 0, 8, 8, 8, 8, 0, 8, 8, 8, 8]
        layers = []
        for m in cfg:
            if m == 0:
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [nn.Conv2d(cin, width * m, 3, padding=1, bias=False), nn.BatchNorm2d(width * m), nn.ReLU(True)]
            cin = width * m
        self.feature = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.feature(x), 1).flatten(1))


class PreResNet(nn.Module):
    def __init__(self, depth, bottleneck, cin, classes):
        super().__init__()
        per = 9 if bottleneck else 6
        n = (depth - 2) // per
        exp = 4 if bottleneck else 1
        self.conv1 = nn.Conv2d(cin, 16, 3, padding=1, bias=False)
        self.blocks = nn.ModuleList()
        inp = 16
        for stage, planes in enumerate([16, 32, 64]):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                if bottleneck:
                    steps = [(inp, planes, 1, 1), (planes, planes, 3, stride), (planes, planes * 4, 1, 1)]
                else:
                    steps = [(inp, planes, 3, stride), (planes, planes, 3, 1)]
                b = nn.Module()
                b.bns = nn.ModuleList([nn.BatchNorm2d(s[0]) for s in steps])
                b.convs = nn.ModuleList([nn.Conv2d(s[0], s[1], s[2], s[3], s[2] // 2, bias=False) for s in steps])
                b.downsample = None
                if stride != 1 or inp != planes * exp:
                    b.downsample = nn.Conv2d(inp, planes * exp, 1, stride, bias=False)
                self.blocks.append(b)
                inp = planes * exp
        self.bn = nn.BatchNorm2d(inp)
        self.fc = nn.Linear(inp, classes)
        conv_init(self)

    def forward(self, x):
        x = self.conv1(x)
        for b in self.blocks:
            out = x
            for bn, conv in zip(b.bns, b.convs):
                out = conv(F.relu(bn(out)))
            x = out + (b.downsample(x) if b.downsample is not None else x)
        x = F.relu(self.bn(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class DenseNet(nn.Module):
    def __init__(self, depth, growth, cin, classes):
        super().__init__()
        n = (depth - 4) // 3
        ch = 16
        self.conv1 = nn.Conv2d(cin, ch, 3, padding=1, bias=False)
        self.units = nn.ModuleList()
        self.trans = []
        for block in range(3):
            for _ in range(n):
                u = nn.Module()
                u.bn = nn.BatchNorm2d(ch)
                u.conv = nn.Conv2d(ch, growth, 3, padding=1, bias=False)
                self.units.append(u)
                self.trans.append(False)
                ch += growth
            if block < 2:
                u = nn.Module()
                u.bn = nn.BatchNorm2d(ch)
                u.conv = nn.Conv2d(ch, ch, 1, bias=False)
                self.units.append(u)
                self.trans.append(True)
        self.bn = nn.BatchNorm2d(ch)
        self.fc = nn.Linear(ch, classes)
        conv_init(self)

    def forward(self, x):
        x = self.conv1(x)
        for u, t in zip(self.units, self.trans):
            out = u.conv(F.relu(u.bn(x)))
            x = F.avg_pool2d(out, 2) if t else torch.cat([x, out], 1)
        x = F.relu(self.bn(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Fcn(nn.Module):
    def __init__(self, inputs, classes, depth, width, norm):
        super().__init__()
        layers = []
        for _ in range(depth):
            layers.append(nn.Linear(inputs, width, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU(True))
            inputs = width
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(inputs, classes)

    def forward(self, x):
        return self.out(self.body(x.flatten(1)))


class Vit(nn.Module):
    def __init__(self, cin, h, w, classes, patch, dim, depth, heads, mlp):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.patch_embed = nn.Conv2d(cin, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, (h // patch) * (w // patch) + 1, dim))
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            b = nn.Module()
            b.norm1 = nn.LayerNorm(dim)
            b.qkv = nn.Linear(dim, 3 * dim)
            b.proj = nn.Linear(dim, dim)
            b.norm2 = nn.LayerNorm(dim)
            b.fc1 = nn.Linear(dim, mlp)
            b.fc2 = nn.Linear(mlp, dim)
            self.blocks.append(b)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        b = x.shape[0]
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(b, 1, self.dim), x], 1) + self.pos_embed
        t, hd = x.shape[1], self.dim // self.heads
        for blk in self.blocks:
            qkv = blk.qkv(blk.norm1(x)).reshape(b, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            attn = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(hd)), -1)
            x = x + blk.proj((attn @ v).transpose(1, 2).reshape(b, t, self.dim))
            x = x + blk.fc2(F.gelu(blk.fc1(blk.norm2(x))))
        return self.head(self.norm(x)[:, 0])


class CnnLstm(nn.Module):
    def __init__(self, cin, h, w, classes, width, hidden):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.lstm = nn.LSTM(2 * width * (w // 4), hidden, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        x = x.permute(0, 2, 1, 3).flatten(2).contiguous()
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class TinyCnn(nn.Module):
    def __init__(self, cin, h, w, classes, width):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc1 = nn.Linear(2 * width * (h // 4) * (w // 4), 64)
        self.fc2 = nn.Linear(64, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def build(arch, cin, h, w, classes, o):
    if arch == "resnet20":
        return ResNet(o.get("depth", 20), cin, classes)
    if arch == "vgg19":
        return Vgg(cin, classes, o.get("width", 64))
    if arch == "preresnet":
        return PreResNet(o.get("depth", 164), o.get("bottleneck", 1) != 0, cin, classes)
    if arch == "densenet":
        return DenseNet(o.get("depth", 40), o.get("growth", 12), cin, classes)
    if arch == "fcn":
        return Fcn(cin * h * w, classes, o.get("depth", 4), o.get("width", 256), o.get("norm", 1) != 0)
    if arch == "vit":
        return Vit(cin, h, w, classes, o.get("patch", 4), o.get("dim", 128), o.get("depth", 6),
                   o.get("heads", 4), o.get("mlp", 256))
    if arch == "cnnlstm":
        return CnnLstm(cin, h, w, classes, o.get("width", 32), o.get("hidden", 128))
    if arch == "tinycnn":
        return TinyCnn(cin, h, w, classes, o.get("width", 8))
    raise SystemExit("unknown arch " + arch)


def preprocess(images, pad_to, mean, std):
    # As corelocker's preprocess_batch without augmentation: [0,1], zero-pad, normalise.
    x = images.float().div_(255.0)
    h, w = x.shape[2], x.shape[3]
    if pad_to > h or pad_to > w:
        ph, pw = max(pad_to - h, 0), max(pad_to - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    c = x.shape[1]
    return x.sub_(torch.tensor(mean).view(1, c, 1, 1)).div_(torch.tensor(std).view(1, c, 1, 1))


def main():
    p = argparse.ArgumentParser()
    for name in ("channels", "size", "classes", "pad-to", "batch", "steps", "threads"):
        p.add_argument("--" + name, type=int, required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--opt", action="append", default=[])
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    opts = {k: int(v) for k, v in (s.split("=", 1) for s in a.opt)}
    h = max(a.size, a.pad_to)
    net = build(a.arch, a.channels, h, h, a.classes, opts)
    params = sum(p.numel() for p in net.parameters())
    mean, std = [0.5] * a.channels, [0.25] * a.channels
    images = torch.randint(0, 256, (a.batch * a.steps, a.channels, a.size, a.size), dtype=torch.uint8)
    labels = torch.randint(0, a.classes, (a.batch * a.steps,))

    # Training step as corelocker's trainer: channels-last, SGD Nesterov momentum, weight decay
    # on weights only, cross-entropy.
    net = net.to(memory_format=torch.channels_last)
    net.train()
    decay = [p for p in net.parameters() if p.dim() > 1]
    no_decay = [p for p in net.parameters() if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=0.01, momentum=0.9, nesterov=True)
    stamps = []
    for s in range(a.steps):
        x = preprocess(images[s * a.batch:(s + 1) * a.batch], a.pad_to, mean, std).contiguous(
            memory_format=torch.channels_last)
        y = labels[s * a.batch:(s + 1) * a.batch]
        opt.zero_grad()
        logits = net(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        loss.item()
        stamps.append(time.perf_counter())
    train_ips = a.batch * (a.steps - 1) / (stamps[-1] - stamps[0])

    # Evaluation as corelocker's evaluate: standard layout, no grad, top-k.
    net = net.to(memory_format=torch.contiguous_format)
    net.eval()
    with torch.no_grad():
        x = preprocess(images[:a.batch], a.pad_to, mean, std)
        net(x).topk(min(3, a.classes), 1)  # warm-up
        t0 = time.perf_counter()
        for s in range(a.steps):
            x = preprocess(images[s * a.batch:(s + 1) * a.batch], a.pad_to, mean, std)
            top = net(x).topk(min(3, a.classes), 1)[1]
            top.eq(labels[s * a.batch:(s + 1) * a.batch].unsqueeze(1)).sum().item()
        eval_ips = a.batch * a.steps / (time.perf_counter() - t0)
    print(json.dumps({"arch": a.arch, "parameters": params, "train_ips": train_ips, "eval_ips": eval_ips,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
