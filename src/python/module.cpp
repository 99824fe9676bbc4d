// corelocker._corelocker: the native half of the Python module. It turns Python arguments (a
// TorchScript module's C++ object, dicts of tensors, keys) into the library's types and calls the
// library with the GIL released; the public API, in PyTorch's conventions, is the package
// python/corelocker/__init__.py (docs/python.md). Nothing here ranks, extracts or hashes on its
// own: that is the library's job, shared with the command line.
//
// Tensors cross without copies: a module's parameters are the tensors the library changes in
// place. The library's exceptions become corelocker.errors' classes with the same message.
#include <sodium.h>
#include <torch/extension.h>

#include <cstring>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "attacks/attacks.h"
#include "attacks/effective.h"
#include "control/calibrate.h"
#include "keyfile/key_file.h"
#include "locking/defaults.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "locking/scoped_unlock.h"
#include "locking/selection.h"
#include "models/torchscript.h"
#include "util/error.h"
#include "util/hash.h"

namespace py = pybind11;

namespace corelocker::python {
namespace {

// A key with, when this process made it, what the lock measured.
struct Key {
  KeyFile file;
  std::optional<LockStats> stats;
};
using KeyPtr = std::shared_ptr<Key>;

// Python's exception classes (corelocker.errors), kept for the life of the process.
struct ErrorTypes {
  PyObject* error = nullptr;
  PyObject* usage = nullptr;
  PyObject* format = nullptr;
  PyObject* mismatch = nullptr;
  PyObject* auth = nullptr;
  PyObject* io = nullptr;
};
ErrorTypes& error_types() {
  static ErrorTypes types;
  return types;
}

// What a model argument holds: the parameters and buffers of a TorchScript module (its C++
// object, `script_module._c`) or the tensors of a dict that Python built (an nn.Module's, a state
// dict). Must be called with the GIL held.
std::vector<NamedTensor> tensors_of(const py::handle& source) {
  std::vector<NamedTensor> out;
  if (py::isinstance<py::dict>(source)) {
    for (auto item : py::reinterpret_borrow<py::dict>(source)) {
      out.push_back(
          {py::cast<std::string>(item.first), py::cast<torch::Tensor>(item.second), false});
    }
  } else {
    const auto module = py::cast<torch::jit::Module>(source);
    for (const auto& p : module.named_parameters(/*recurse=*/true))
      out.push_back({p.name, p.value, false});
    for (const auto& b : module.named_buffers(/*recurse=*/true))
      out.push_back({b.name, b.value, true});
  }
  for (const auto& t : out) {
    if (!t.tensor.device().is_cpu()) {
      throw UsageError("tensor '" + t.name + "' is on " + t.tensor.device().str() +
                       ": corelocker locks CPU tensors (move the model with .cpu() first)");
    }
  }
  return out;
}

LockOptions lock_options(const std::string& criterion, const std::string& scope,
                         std::optional<bool> include_io, double ratio, uint64_t seed,
                         const std::string& fill, const std::string& random_units,
                         const std::vector<std::string>& keep) {
  LockOptions o = lock_options_for(resolve_units(criterion, scope, include_io.value_or(false),
                                                 include_io.has_value() && !*include_io),
                                   ratio);
  o.seed = seed;
  o.fill = parse_fill(fill);
  if (random_units != "l1" && random_units != "bn") {
    throw UsageError("random_units '" + random_units + "': expected l1 or bn");
  }
  o.random_bn_units = random_units == "bn";
  o.keep = keep;
  return o;
}

KeyCredentials credentials(const std::optional<std::string>& passphrase,
                           const std::optional<py::bytes>& secret, const std::string& kdf) {
  KeyCredentials c;
  set_kdf_preset(c, kdf);
  if (passphrase && secret) throw UsageError("give a passphrase or a secret, not both");
  if (passphrase) {
    if (passphrase->empty()) throw UsageError("the passphrase is empty");
    c.passphrase = *passphrase;
    c.kind = Encryption::kPassphrase;
  } else if (secret) {
    std::string bytes = *secret;
    if (bytes.size() != c.secret.size()) {
      throw UsageError("secret has " + std::to_string(bytes.size()) + " bytes, expected 32");
    }
    std::memcpy(c.secret.data(), bytes.data(), bytes.size());
    sodium_memzero(bytes.data(), bytes.size());
    c.kind = Encryption::kSecret;
  }
  return c;
}

KeyPtr lock_module(const py::handle& module_c, const std::string& what,
                   const std::string& criterion, const std::string& scope,
                   std::optional<bool> include_io, double ratio, uint64_t seed,
                   const std::string& fill, const std::string& random_units,
                   const std::vector<std::string>& keep) {
  const auto module = py::cast<torch::jit::Module>(module_c);
  const LockOptions o =
      lock_options(criterion, scope, include_io, ratio, seed, fill, random_units, keep);
  py::gil_scoped_release nogil;
  LoadedModel model = wrap_torchscript(module, what);
  LockOutcome outcome = lock_model(model, o);
  return std::make_shared<Key>(Key{std::move(outcome.key), outcome.stats});
}

// Locks `tensors` (a copy Python made of a state dict) with the structure of `structure_c`.
KeyPtr lock_tensors(const py::dict& tensors_py, const py::handle& structure_c,
                    const std::string& what, const std::string& criterion, const std::string& scope,
                    std::optional<bool> include_io, double ratio, uint64_t seed,
                    const std::string& fill, const std::string& random_units,
                    const std::vector<std::string>& keep) {
  std::vector<NamedTensor> tensors = tensors_of(tensors_py);
  const auto module = py::cast<torch::jit::Module>(structure_c);
  const LockOptions o =
      lock_options(criterion, scope, include_io, ratio, seed, fill, random_units, keep);
  py::gil_scoped_release nogil;
  LoadedModel model = wrap_torchscript(module, what);
  const Structure& structure = model.net->structure();
  const UnitSelection selection = select_units(tensors, structure, o);
  const ExtractionPlan& plan = selection.plan;
  auto key = std::make_shared<Key>();
  key->file = extract_units(tensors, plan, o);
  LockStats s;
  s.units = plan.units;
  s.candidates = selection.candidates;
  s.values = static_cast<int64_t>(key->file.value_count());
  s.parameters = parameter_count(*model.net);
  key->stats = s;
  return key;
}

std::vector<const KeyFile*> files_of(const std::vector<KeyPtr>& keys) {
  std::vector<const KeyFile*> out;
  for (const auto& k : keys) {
    if (!k) throw UsageError("key is None");
    out.push_back(&k->file);
  }
  return out;
}

void unlock(const py::handle& source, const std::vector<KeyPtr>& keys) {
  std::vector<NamedTensor> tensors = tensors_of(source);
  const auto files = files_of(keys);
  py::gil_scoped_release nogil;
  for (const KeyFile* k : files) restore_units(tensors, *k);
}

// Applies `keys` in order; returns the keys that undo them, in the order to apply them.
std::vector<KeyPtr> unlock_reversibly_py(const py::handle& source,
                                         const std::vector<KeyPtr>& keys) {
  std::vector<NamedTensor> tensors = tensors_of(source);
  const auto files = files_of(keys);
  std::vector<KeyPtr> undo;
  py::gil_scoped_release nogil;
  try {
    for (const KeyFile* k : files)
      undo.insert(undo.begin(), std::make_shared<Key>(Key{unlock_reversibly(tensors, *k), {}}));
  } catch (...) {
    for (const auto& u : undo) relock(tensors, u->file);  // the keys applied so far
    throw;
  }
  return undo;
}

std::string relock_py(const py::handle& source, const std::vector<KeyPtr>& undo) {
  std::vector<NamedTensor> tensors = tensors_of(source);
  const auto files = files_of(undo);
  py::gil_scoped_release nogil;
  Digest fp{};
  for (const KeyFile* k : files) fp = relock(tensors, *k);
  return to_hex(fp);
}

std::string fingerprint_py(const py::handle& source) {
  const std::vector<NamedTensor> tensors = tensors_of(source);
  py::gil_scoped_release nogil;
  return to_hex(fingerprint(tensors));
}

py::dict probe_dict(const Probe& p) {
  py::dict d;
  d["ratio"] = p.ratio;
  d["units"] = p.units;
  d["param_fraction"] = p.param_fraction;
  d["accuracy"] = p.top1;
  return d;
}

// Searches a ratio whose `evaluate()` (Python, called with the model locked at the probe's
// ratio; a percentage) lies in [low, high]. The model ends as it started.
py::dict calibrate_py(const py::handle& module_c, const std::string& what, double low, double high,
                      const py::function& evaluate, const std::string& criterion,
                      const std::string& scope, std::optional<bool> include_io, uint64_t seed,
                      const std::string& fill, const std::string& random_units,
                      const std::vector<std::string>& keep, int max_evaluations, double start_ratio,
                      double step, double max_ratio) {
  const auto module = py::cast<torch::jit::Module>(module_c);
  const LockOptions o =
      lock_options(criterion, scope, include_io, start_ratio, seed, fill, random_units, keep);
  std::ostringstream band_text;
  band_text.precision(17);
  band_text << low << "-" << high;
  const Band band = parse_band(band_text.str());
  CalibrationOptions copt;
  copt.max_evaluations = max_evaluations;
  copt.start_ratio = start_ratio;
  copt.step = step;
  copt.max_ratio = max_ratio;
  Calibration c;
  {
    py::gil_scoped_release nogil;
    LoadedModel model = wrap_torchscript(module, what);
    auto tensors = named_tensors(*model.net);
    const Structure& structure = model.net->structure();
    const Ranking ranking = rank_units(tensors, structure, o);
    const int64_t parameters = parameter_count(*model.net);
    const Evaluator probe = [&](double ratio) {
      LockOptions at = o;
      at.ratio = ratio;
      const ExtractionPlan plan = plan_at(ranking, tensors, structure, ratio);
      const KeyFile key = extract_units(tensors, plan, at);
      double accuracy = 0.0;
      try {
        py::gil_scoped_acquire gil;
        accuracy = py::cast<double>(evaluate());
      } catch (...) {
        restore_units(tensors, key);
        throw;
      }
      restore_units(tensors, key);
      const double fraction =
          parameters ? static_cast<double>(key.value_count()) / static_cast<double>(parameters)
                     : 0.0;
      return Probe{ratio, plan.units, fraction, accuracy, 0.0, accuracy};
    };
    c = search_band(group_sizes(ranking), probe, band, copt);
  }
  py::dict d;
  d["status"] = to_string(c.status);
  d["found"] = c.found();
  d["chosen"] = probe_dict(c.chosen);
  py::list probes;
  for (const auto& p : c.probes) probes.append(probe_dict(p));
  d["probes"] = probes;
  d["reach"] = py::make_tuple(c.reach_low, c.reach_high);
  d["explanation"] = c.explanation;
  return d;
}

// Re-estimates BatchNorm statistics on the batches `next_batch()` returns (None at the end).
py::dict reestimate_bn_py(const py::handle& module_c, const std::string& what,
                          const py::function& next_batch) {
  const auto module = py::cast<torch::jit::Module>(module_c);
  ReestimateResult r;
  {
    py::gil_scoped_release nogil;
    LoadedModel model = wrap_torchscript(module, what);
    r = reestimate_batchnorm(model, [&]() -> torch::Tensor {
      py::gil_scoped_acquire gil;
      py::object batch = next_batch();
      if (batch.is_none()) return {};
      auto x = py::cast<torch::Tensor>(batch);
      if (!x.device().is_cpu())
        throw UsageError("batch is on " + x.device().str() + ": corelocker runs models on the CPU");
      return x;
    });
  }
  py::dict d;
  d["layers"] = r.layers;
  d["images"] = r.images;
  d["batches"] = r.batches;
  return d;
}

py::dict prune_py(const py::handle& module_c, const std::string& what, double ratio) {
  const auto module = py::cast<torch::jit::Module>(module_c);
  PruneResult r;
  {
    py::gil_scoped_release nogil;
    LoadedModel model = wrap_torchscript(module, what);
    r = prune_smallest(model, ratio);
  }
  py::dict d;
  d["pruned"] = r.pruned;
  d["candidates"] = r.candidates;
  d["already_zero"] = r.already_zero;
  return d;
}

// The layers the library reads from the module's graph, in forward order (for users checking
// what a lock will touch, and for the tests).
py::list structure_py(const py::handle& module_c, const std::string& what) {
  const auto module = py::cast<torch::jit::Module>(module_c);
  LoadedModel model = wrap_torchscript(module, what);
  py::list out;
  for (const auto& l : model.net->structure()) {
    py::dict d;
    d["name"] = l.name;
    d["kind"] = to_string(l.kind);
    d["weight"] = l.weight;
    d["bias"] = l.bias;
    d["producer"] = l.producer;
    out.append(d);
  }
  return out;
}

std::string hex_of(const Digest& d) { return to_hex(d); }

py::list entries_of(const KeyFile& k) {
  py::list out;
  for (const auto& e : k.entries) {
    py::dict d;
    d["tensor"] = e.tensor;
    d["dtype"] = to_string(e.dtype);
    d["shape"] = py::tuple(py::cast(e.shape));
    d["unit_size"] = e.unit_size;
    d["units"] = e.units.size();
    out.append(d);
  }
  return out;
}

py::object stats_of(const Key& k) {
  if (!k.stats) return py::none();
  py::dict d;
  d["units"] = k.stats->units;
  d["candidates"] = k.stats->candidates;
  d["values"] = k.stats->values;
  d["parameters"] = k.stats->parameters;
  d["param_fraction"] = k.stats->param_fraction();
  return d;
}

std::string key_repr(const Key& k) {
  const auto& h = k.file.header;
  std::ostringstream s;
  s << "corelocker.Key(criterion='" << to_string(h.criterion) << "', scope='" << to_string(h.scope)
    << "', fill='" << to_string(h.fill) << "', ratio=" << h.ratio << ", units=" << h.units
    << ", values=" << k.file.value_count();
  if (h.tiers > 1) s << ", tier=" << h.tier << "/" << h.tiers;
  s << ", locked='" << to_hex(h.locked_fingerprint).substr(0, 16) << "...', original='"
    << to_hex(h.original_fingerprint).substr(0, 16) << "...')";
  return s.str();
}

void translate(std::exception_ptr p) {
  const ErrorTypes& t = error_types();
  try {
    if (p) std::rethrow_exception(p);
  } catch (const MismatchError& e) {
    PyErr_SetString(t.mismatch, e.what());
  } catch (const AuthError& e) {
    PyErr_SetString(t.auth, e.what());
  } catch (const UsageError& e) {
    PyErr_SetString(t.usage, e.what());
  } catch (const FormatError& e) {
    PyErr_SetString(t.format, e.what());
  } catch (const IoError& e) {
    PyErr_SetString(t.io, e.what());
  } catch (const Error& e) {
    PyErr_SetString(t.error, e.what());
  }
}

}  // namespace
}  // namespace corelocker::python

PYBIND11_MODULE(_corelocker, m) {
  using namespace corelocker;
  using namespace corelocker::python;
  m.doc() = "corelocker's native module; use the package `corelocker` (docs/python.md)";
  m.attr("__version__") = CORELOCKER_VERSION;

  py::module_ errors = py::module_::import("corelocker.errors");
  ErrorTypes& t = error_types();
  t.error = py::object(errors.attr("Error")).release().ptr();
  t.usage = py::object(errors.attr("UsageError")).release().ptr();
  t.format = py::object(errors.attr("FormatError")).release().ptr();
  t.mismatch = py::object(errors.attr("KeyMismatch")).release().ptr();
  t.auth = py::object(errors.attr("AuthenticationError")).release().ptr();
  t.io = py::object(errors.attr("IoError")).release().ptr();
  py::register_local_exception_translator(translate);

  py::class_<Key, KeyPtr>(m, "Key",
                          "An access key: the extracted units' positions and original values")
      .def_property_readonly(
          "criterion", [](const Key& k) { return std::string(to_string(k.file.header.criterion)); })
      .def_property_readonly(
          "scope", [](const Key& k) { return std::string(to_string(k.file.header.scope)); })
      .def_property_readonly(
          "fill", [](const Key& k) { return std::string(to_string(k.file.header.fill)); })
      .def_property_readonly("include_io", [](const Key& k) { return k.file.header.include_io; })
      .def_property_readonly("ratio", [](const Key& k) { return k.file.header.ratio; })
      .def_property_readonly("ratio_after", [](const Key& k) { return k.file.header.ratio_after; })
      .def_property_readonly("seed", [](const Key& k) { return k.file.header.seed; })
      .def_property_readonly("units", [](const Key& k) { return k.file.header.units; })
      .def_property_readonly("values", [](const Key& k) { return k.file.value_count(); })
      .def_property_readonly("tier", [](const Key& k) { return k.file.header.tier; })
      .def_property_readonly("tiers", [](const Key& k) { return k.file.header.tiers; })
      .def_property_readonly("version", [](const Key& k) { return k.file.header.version; })
      .def_property_readonly("encryption",
                             [](const Key& k) {  // how the file it came from was stored
                               switch (k.file.header.encryption) {
                                 case Encryption::kPassphrase:
                                   return "passphrase";
                                 case Encryption::kSecret:
                                   return "secret";
                                 default:
                                   return "none";
                               }
                             })
      .def_property_readonly("key_id",
                             [](const Key& k) {
                               return to_hex(k.file.header.key_id.data(),
                                             k.file.header.key_id.size());
                             })
      .def_property_readonly("locked_fingerprint",
                             [](const Key& k) { return hex_of(k.file.header.locked_fingerprint); })
      .def_property_readonly(
          "original_fingerprint",
          [](const Key& k) { return hex_of(k.file.header.original_fingerprint); })
      .def_property_readonly("nbytes", [](const Key& k) { return serialize_key(k.file).size(); })
      .def_property_readonly("entries", [](const Key& k) { return entries_of(k.file); })
      .def_property_readonly("stats", [](const Key& k) { return stats_of(k); })
      .def(
          "save",
          [](const Key& k, const std::string& path, std::optional<std::string> passphrase,
             std::optional<py::bytes> secret, const std::string& kdf) {
            const KeyCredentials c = credentials(passphrase, secret, kdf);
            py::gil_scoped_release nogil;
            return write_key_file(path, k.file, c);
          },
          py::arg("path"), py::arg("passphrase") = py::none(), py::arg("secret") = py::none(),
          py::arg("kdf") = "moderate")
      .def(
          "to_bytes",
          [](const Key& k, std::optional<std::string> passphrase, std::optional<py::bytes> secret,
             const std::string& kdf) {
            const KeyCredentials c = credentials(passphrase, secret, kdf);
            std::vector<uint8_t> bytes;
            {
              py::gil_scoped_release nogil;
              bytes = serialize_key(k.file, c);
            }
            return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
          },
          py::arg("passphrase") = py::none(), py::arg("secret") = py::none(),
          py::arg("kdf") = "moderate")
      .def("__repr__", &key_repr);

  m.def(
      "load_key",
      [](const std::string& path, std::optional<std::string> passphrase,
         std::optional<py::bytes> secret) {
        const KeyCredentials c = credentials(passphrase, secret, "moderate");
        py::gil_scoped_release nogil;
        return std::make_shared<Key>(Key{read_key_file(path, c), {}});
      },
      py::arg("path"), py::arg("passphrase") = py::none(), py::arg("secret") = py::none());
  m.def(
      "key_from_bytes",
      [](const py::bytes& data, std::optional<std::string> passphrase,
         std::optional<py::bytes> secret) {
        const KeyCredentials c = credentials(passphrase, secret, "moderate");
        const std::string bytes = data;
        py::gil_scoped_release nogil;
        return std::make_shared<Key>(Key{
            parse_key(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "key bytes", c),
            {}});
      },
      py::arg("data"), py::arg("passphrase") = py::none(), py::arg("secret") = py::none());
  m.def("lock_module", &lock_module);
  m.def("lock_tensors", &lock_tensors);
  m.def("unlock", &unlock);
  m.def("unlock_reversibly", &unlock_reversibly_py);
  m.def("relock", &relock_py);
  m.def("fingerprint", &fingerprint_py);
  m.def("calibrate", &calibrate_py);
  m.def("reestimate_bn", &reestimate_bn_py);
  m.def("prune", &prune_py);
  m.def("structure", &structure_py);
}
