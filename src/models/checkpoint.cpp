#include "models/checkpoint.h"

#include <fstream>

#include "data/dataset.h"
#include "models/torchscript.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {
namespace {

constexpr const char* kMetaKey = "corelocker_meta";

torch::serialize::InputArchive open_archive(const std::string& path) {
  if (!file_exists(path)) throw IoError("cannot open model '" + path + "': no such file");
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw FormatError(
        "model '" + path +
        "': not a corelocker checkpoint or TorchScript file (LibTorch could not read it: " +
        std::string(e.what_without_backtrace()) + ")");
  }
  return archive;
}

ModelMeta read_meta(torch::serialize::InputArchive& archive, const std::string& path) {
  c10::IValue value;
  if (!archive.try_read(kMetaKey, value) || !value.isString()) {
    throw FormatError("model '" + path + "': no corelocker metadata (attribute '" + kMetaKey +
                      "')");
  }
  return meta_from_json(value.toStringRef(), "model '" + path + "'");
}

}  // namespace

ModelMeta new_model_meta(const std::string& arch, const std::string& dataset,
                         const std::map<std::string, int64_t>& options) {
  const DatasetInfo info = dataset_info(dataset);
  const ArchInfo a = architecture(arch);
  ModelMeta meta;
  meta.arch = a.name;
  meta.options = resolve_options(a, options);
  use_dataset(info, meta);
  // CIFAR-style networks take 28x28 inputs padded to 32x32; the others take the image as is.
  meta.preprocess.pad_to = a.pad_to;
  return meta;
}

LoadedModel create_model(const ModelMeta& meta) {
  LoadedModel m{meta, build_network(meta), /*meta_stored=*/true};
  m.meta.tensors.clear();
  for (const auto& t : named_tensors(*m.net)) m.meta.tensors.push_back(t.name);
  return m;
}

LoadedModel load_model(const std::string& path) {
  auto archive = open_archive(path);
  c10::IValue probe;
  // No corelocker metadata attribute: a TorchScript module the owner brought (or one we locked).
  if (!archive.try_read(kMetaKey, probe)) return load_torchscript(path);
  LoadedModel m{read_meta(archive, path), nullptr, /*meta_stored=*/true};
  m.net = build_network(m.meta);
  auto tensors = named_tensors(*m.net);
  if (tensors.size() != m.meta.tensors.size()) {
    throw FormatError("model '" + path + "': holds " + std::to_string(m.meta.tensors.size()) +
                      " tensors, architecture '" + m.meta.arch + "' has " +
                      std::to_string(tensors.size()));
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < tensors.size(); ++i) {
    auto& t = tensors[i];
    if (m.meta.tensors[i] != t.name) {
      throw FormatError("model '" + path + "': tensor " + std::to_string(i) + " is '" +
                        m.meta.tensors[i] + "', architecture expects '" + t.name + "'");
    }
    torch::Tensor stored;
    try {
      archive.read("t" + std::to_string(i), stored, t.is_buffer);
    } catch (const c10::Error& e) {
      throw FormatError("model '" + path + "': tensor '" + t.name + "' missing or unreadable");
    }
    if (!stored.defined() || stored.sizes() != t.tensor.sizes() ||
        stored.scalar_type() != t.tensor.scalar_type()) {
      throw FormatError("model '" + path + "': tensor '" + t.name + "' has shape " +
                        (stored.defined() ? c10::str(stored.sizes()) : "none") + ", expected " +
                        c10::str(t.tensor.sizes()));
    }
    t.tensor.copy_(stored);
  }
  return m;
}

void save_model(const std::string& path, LoadedModel& model) {
  if (model.meta.arch == kTorchScriptArch) return save_torchscript(path, model);
  auto tensors = named_tensors(*model.net);
  model.meta.tensors.clear();
  torch::serialize::OutputArchive archive;
  for (size_t i = 0; i < tensors.size(); ++i) {
    model.meta.tensors.push_back(tensors[i].name);
    archive.write("t" + std::to_string(i), tensors[i].tensor.detach(), tensors[i].is_buffer);
  }
  archive.write(kMetaKey, c10::IValue(meta_to_json(model.meta)));
  PendingFile pending(path);
  try {
    archive.save_to(pending.temp_path());
  } catch (const c10::Error& e) {
    throw IoError("cannot write model '" + path + "': " + e.what_without_backtrace());
  }
  pending.commit();
}

ModelMeta read_model_meta(const std::string& path) {
  auto archive = open_archive(path);
  c10::IValue probe;
  if (!archive.try_read(kMetaKey, probe)) return load_torchscript(path).meta;
  return read_meta(archive, path);
}

}  // namespace corelocker
