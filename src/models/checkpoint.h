// corelocker checkpoints: a LibTorch archive (zip, loadable with torch.jit.load) holding the
// tensors as t0, t1, ... and the metadata JSON as the string attribute "corelocker_meta".
// Locked models use the same format, with `meta.lock` set.
#pragma once

#include <memory>
#include <string>

#include "models/model_meta.h"
#include "models/network.h"

namespace corelocker {

struct LoadedModel {
  ModelMeta meta;
  std::shared_ptr<Network> net;
  // False when the file carried no corelocker metadata (a TorchScript file straight from
  // PyTorch): meta's data set and preprocessing are then defaults that the caller may override.
  // True for our checkpoints and for every file corelocker wrote.
  bool meta_stored = true;
};

// Metadata for a new model of `arch` on a data set (input shape, normalisation, classes), with
// every architecture option recorded (defaults, overridden by `options`). Throws UsageError for
// an unknown architecture, data set or option.
ModelMeta new_model_meta(const std::string& arch, const std::string& dataset,
                         const std::map<std::string, int64_t>& options = {});

// Builds a freshly initialised model (seeded from the current torch generator).
LoadedModel create_model(const ModelMeta& meta);

// Loads a checkpoint, rebuilding the network from its metadata and checking that every tensor
// is present with the expected shape and dtype. Throws IoError / FormatError.
LoadedModel load_model(const std::string& path);

// Writes a checkpoint atomically; fills meta.tensors. Throws IoError.
void save_model(const std::string& path, LoadedModel& model);

// Reads only the metadata of a checkpoint. Throws IoError / FormatError.
ModelMeta read_model_meta(const std::string& path);

}  // namespace corelocker
