"""corelocker from Python: lock, unlock and measure PyTorch models in memory, with the same key
files as the command line.

    import torch, corelocker
    key = corelocker.lock(model, ratio=0.05)         # an nn.Module, locked in place
    key.save("model.clk", passphrase="...")          # the CLI's key format
    torch.save(model.state_dict(), "locked.pt")      # ship the locked weights
    ...
    key = corelocker.load_key("model.clk", passphrase="...")
    with corelocker.unlocked(model, key):            # original weights, in memory only
        y = model(x)                                  # locked again after the block

Everything that ranks, extracts, hashes or encrypts is the C++ library the command line runs
(corelocker._corelocker); this file only converts arguments. The layers a lock may touch are read
from the module's TorchScript graph (torch.jit.script, or torch.jit.trace with example_inputs=),
whose parameters are the module's own tensors: nothing is copied but the key's values.
docs/python.md describes the whole API.
"""
import collections
import contextlib
import copy as _copy
import os
import threading
import warnings
from collections.abc import Mapping

import torch  # before the native module: it loads LibTorch and torch's Python bindings

from .errors import AuthenticationError, Error, FormatError, IoError, KeyMismatch, UsageError
from . import _corelocker as _C
from ._corelocker import Key

__version__ = _C.__version__

__all__ = [
    "lock", "unlock", "unlocked", "fingerprint", "load_key", "key_from_bytes", "Key", "calibrate",
    "Calibration", "reestimate_bn", "prune", "structure", "Error", "UsageError", "FormatError",
    "KeyMismatch", "AuthenticationError", "IoError",
]

# torch.jit.script compiles into process-wide caches; one compilation at a time.
_script_lock = threading.Lock()


def _module_tensors(model):
    """Every parameter and buffer of an nn.Module under its dotted name, as torch.jit.script's
    module lists them (shared submodules and tied weights under each of their names)."""
    out = {}
    for prefix, module in model.named_modules(remove_duplicate=False):
        base = prefix + "." if prefix else ""
        for name, t in module._parameters.items():
            if t is not None:
                out[base + name] = t
        for name, t in module._buffers.items():
            if t is not None:
                out[base + name] = t
    return out


def _source(model):
    """What the native module reads tensors from: a ScriptModule's C++ object, or a dict."""
    if isinstance(model, torch.jit.ScriptModule):
        return model._c
    if isinstance(model, torch.nn.Module):
        return _module_tensors(model)
    if isinstance(model, Mapping):
        return {k: v for k, v in model.items() if isinstance(v, torch.Tensor)}
    raise TypeError(f"expected an nn.Module, a ScriptModule or a state dict, got {type(model).__name__}")


def _what(model):
    return f"module {type(model).__name__}"


def _keys(key):
    keys = [key] if isinstance(key, Key) else list(key)
    if not keys or not all(isinstance(k, Key) for k in keys):
        raise TypeError("expected a corelocker.Key or a list of them (tier keys, in order)")
    return keys


def _trace(model, example_inputs):
    # In evaluation mode, so that tracing's forward pass leaves BatchNorm statistics alone.
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
        with torch.no_grad():
            return torch.jit.trace(model, inputs, check_trace=False)
    finally:
        for m, mode in modes:
            m.training = mode


def _script(model, example_inputs=None):
    """The module as TorchScript, sharing its tensors: the ScriptModule itself, or the nn.Module
    scripted (traced with example_inputs when scripting fails)."""
    if isinstance(model, torch.jit.ScriptModule):
        return model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected an nn.Module or a ScriptModule, got {type(model).__name__}")
    with _script_lock:
        try:
            scripted = torch.jit.script(model)
        except Exception as e:
            if example_inputs is None:
                reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UsageError(
                    f"{_what(model)}: torch.jit.script failed ({reason}); corelocker reads the layers from "
                    "the TorchScript graph: make the module scriptable or pass example_inputs= to trace it") from e
            scripted = _trace(model, example_inputs)
    # A lock must change the caller's tensors, not copies of them.
    mine = _module_tensors(model)
    for name, t in list(scripted.named_parameters()) + list(scripted.named_buffers()):
        if name not in mine or mine[name].data_ptr() != t.data_ptr():
            raise Error(f"{_what(model)}: the TorchScript module does not share tensor '{name}' with it")
    return scripted


def _options(criterion, scope, include_io, ratio, seed, fill, random_units, keep):
    if include_io is not None and not isinstance(include_io, bool):
        raise TypeError("include_io: expected None, True or False")
    if isinstance(keep, str):
        keep = [keep]
    return (criterion or "", scope or "", include_io, float(ratio), int(seed), str(fill), str(random_units),
            [str(p) for p in keep])


def lock(model, ratio=0.05, criterion=None, scope=None, fill="zero", seed=0, *, include_io=None,
         random_units="l1", keep=(), structure=None, example_inputs=None):
    """Locks a model: moves its most significant units into a key and zeroes them (fill="decoy":
    values resampled from the same tensor) in the model.

    model: an nn.Module or ScriptModule, locked in place; returns the Key. Or a state dict: returns
    (locked_copy, key) and leaves the dict alone; `structure=` must then give the nn.Module (or
    ScriptModule) the state dict belongs to, whose forward graph names the layers (its own weights
    are not read).
    criterion: None for the default lock (l1 units ranked over the whole model, first and last
    layers included), or the paper's "l1" | "bn" | "random"; scope: "layer" | "global" to override
    the criterion's; include_io: True / False to override the first/last-layer rule; seed and
    random_units ("l1" | "bn") for criterion="random". keep: glob patterns (a string or a list) of
    layers to leave alone, matched against a layer's name ("fc", "layer1.0.conv1") or its weight's
    ("fc.weight"), as `corelocker lock --keep`; a pattern that matches no layer is a UsageError.
    example_inputs: traced with them when torch.jit.script cannot compile the module. Raises
    UsageError for bad options.
    """
    options = _options(criterion, scope, include_io, ratio, seed, fill, random_units, keep)
    if isinstance(model, Mapping):
        if structure is None:
            raise UsageError("locking a state dict needs structure=: the nn.Module (or ScriptModule) it belongs to, "
                             "whose forward graph names the layers (its own weights are not read)")
        scripted = _script(structure, example_inputs)
        locked = collections.OrderedDict()
        for name, value in model.items():
            if isinstance(value, torch.Tensor):
                locked[name] = value.detach().clone(memory_format=torch.contiguous_format)
            else:
                locked[name] = _copy.deepcopy(value)
        if hasattr(model, "_metadata"):
            locked._metadata = _copy.deepcopy(model._metadata)
        key = _C.lock_tensors(_source(locked), scripted._c, _what(structure), *options)
        return locked, key
    scripted = _script(model, example_inputs)
    return _C.lock_module(scripted._c, _what(model), *options)


def unlock(model, key):
    """Restores the original values in place (an nn.Module, a ScriptModule or a state dict) and
    returns the model. `key`: a Key, or tier keys in order of application. Raises KeyMismatch when
    the key belongs to another model (nothing is changed then)."""
    _C.unlock(_source(model), _keys(key))
    return model


@contextlib.contextmanager
def unlocked(model, key):
    """`with corelocker.unlocked(model, key): ...` runs the block on the original model and puts
    the locked values back on exit, also when the block raises. Costs one key's worth of memory.
    Raises KeyMismatch on entry for a key of another model; Error on exit when the model changed
    inside the block other than through the key's units (for example BatchNorm statistics updated
    by a forward pass in training mode): the key's units are locked again all the same."""
    keys = _keys(key)
    source = _source(model)
    undo = _C.unlock_reversibly(source, keys)
    expected = keys[0].locked_fingerprint
    message = ("model changed inside corelocker.unlocked(): the key's units hold their locked values again, but its "
               "fingerprint is {}..., the locked model's {}... (a parameter or buffer changed, e.g. BatchNorm "
               "statistics in training mode)")
    try:
        yield model
    except BaseException:
        found = _C.relock(source, undo)
        if found != expected:
            warnings.warn(message.format(found[:16], expected[:16]), RuntimeWarning, stacklevel=3)
        raise
    found = _C.relock(source, undo)
    if found != expected:
        raise Error(message.format(found[:16], expected[:16]))


def fingerprint(model):
    """BLAKE2b-256 (hex) over the name, dtype, shape and bytes of every parameter and buffer:
    what `corelocker fingerprint` prints for the same weights saved with torch.jit.save."""
    return _C.fingerprint(_source(model))


def load_key(path, passphrase=None, secret=None):
    """Reads a key file written by Key.save or by the command line. An encrypted key needs its
    passphrase (str) or secret (32 bytes): AuthenticationError when wrong; FormatError for a
    damaged file."""
    return _C.load_key(os.fspath(path), passphrase, secret)


def key_from_bytes(data, passphrase=None, secret=None):
    """A key from the bytes of a key file (Key.to_bytes)."""
    return _C.key_from_bytes(bytes(data), passphrase, secret)


_native_save = Key.save


def _save(self, path, passphrase=None, secret=None, kdf="moderate"):
    """Writes the key file atomically, in the command line's format; encrypted (XChaCha20-Poly1305)
    with a passphrase (Argon2id; kdf: "interactive" | "moderate" | "sensitive") or a 32-byte
    secret. Returns its size in bytes."""
    return _native_save(self, os.fspath(path), passphrase, secret, kdf)


Key.save = _save


class Calibration:
    """What calibrate found: `ratio` (lock at it), the `accuracy` evaluate gave there, `found`
    (inside the target band), `status`, every probe made, and an explanation with the numbers."""

    def __init__(self, d):
        self.found = d["found"]
        self.status = d["status"]
        self.ratio = d["chosen"]["ratio"]
        self.accuracy = d["chosen"]["accuracy"]
        self.units = d["chosen"]["units"]
        self.param_fraction = d["chosen"]["param_fraction"]
        self.probes = d["probes"]
        self.reach = d["reach"]
        self.explanation = d["explanation"]

    def __repr__(self):
        return (f"corelocker.Calibration(status={self.status!r}, ratio={self.ratio:.6g}, "
                f"accuracy={self.accuracy:.2f}, probes={len(self.probes)})")


def calibrate(model, target, evaluate, criterion=None, scope=None, fill="zero", seed=0, *, include_io=None,
              random_units="l1", keep=(), max_evaluations=8, start_ratio=0.005, step=4.0, max_ratio=1.0,
              example_inputs=None):
    """Searches an extraction ratio whose accuracy lies in `target` = (low, high), in percent.

    evaluate(model) is called with the model locked at each probed ratio and returns its accuracy
    in percent (your own data and metric: a validation split, the effective accuracy). The search
    is the command line's `calibrate`; the model ends as it started. Lock with
    corelocker.lock(model, ratio=result.ratio, ...same options...) afterwards.
    """
    low, high = target
    scripted = _script(model, example_inputs)
    options = _options(criterion, scope, include_io, start_ratio, seed, fill, random_units, keep)
    result = _C.calibrate(scripted._c, _what(model), float(low), float(high), lambda: float(evaluate(model)),
                          options[0], options[1], options[2], options[4], options[5], options[6], options[7],
                          int(max_evaluations), float(start_ratio), float(step), float(max_ratio))
    return Calibration(result)


def reestimate_bn(model, loader, max_batches=None):
    """Re-estimates every BatchNorm layer's running statistics as the plain average of the batch
    statistics over `loader` (batches of network input, or (input, label) pairs whose labels are
    ignored): the free attack in the library's effective accuracy. Changes the running statistics
    in place; returns {"layers", "images", "batches"}. The module must be scriptable (a traced graph
    fixes BatchNorm's evaluation mode: Error naming the layer)."""
    scripted = _script(model)
    batches = iter(loader)
    taken = 0

    def next_batch():
        nonlocal taken
        if max_batches is not None and taken >= max_batches:
            return None
        try:
            batch = next(batches)
        except StopIteration:
            return None
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        taken += 1
        return batch

    modes = [(m, m.training) for m in scripted.modules()]
    try:
        return _C.reestimate_bn(scripted._c, _what(model), next_batch)
    finally:
        for m, mode in modes:
            m.training = mode


def prune(model, ratio):
    """Global magnitude pruning (the effective accuracy's other free attack): sets the
    round(ratio * n) smallest-magnitude conv / linear weights to zero, in place. Returns
    {"pruned", "candidates", "already_zero"}."""
    return _C.prune(_script(model)._c, _what(model), float(ratio))


def structure(model, example_inputs=None):
    """The layers a lock ranks, in forward order, as read from the TorchScript graph: dicts with
    name, kind (conv2d | linear | batchnorm | layernorm), weight, bias and producer (the index of
    the conv feeding a BatchNorm, -1 for none)."""
    return _C.structure(_script(model, example_inputs)._c, _what(model))
