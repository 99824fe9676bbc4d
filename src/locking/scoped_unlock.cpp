#include "locking/scoped_unlock.h"

#include <cstring>
#include <unordered_map>

#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "util/error.h"

namespace corelocker {
namespace {

// The [units, unit_size] view of each entry's tensor, after checking name, dtype and shape.
std::vector<torch::Tensor> entry_views(std::vector<NamedTensor>& tensors, const KeyFile& key) {
  std::unordered_map<std::string, const torch::Tensor*> named;
  for (const auto& t : tensors) named[t.name] = &t.tensor;
  std::vector<torch::Tensor> views;
  for (const auto& e : key.entries) {
    auto it = named.find(e.tensor);
    if (it == named.end())
      throw MismatchError("key entry '" + e.tensor + "': model has no such tensor");
    const torch::Tensor& t = *it->second;
    const std::vector<int64_t> shape(e.shape.begin(), e.shape.end());
    if (t.scalar_type() != to_scalar_type(e.dtype) || t.sizes() != c10::IntArrayRef(shape)) {
      throw MismatchError("key entry '" + e.tensor + "': " + to_string(e.dtype) + " " +
                          c10::str(c10::IntArrayRef(shape)) + ", tensor is " +
                          c10::toString(t.scalar_type()) + " " + c10::str(t.sizes()));
    }
    if (!t.is_contiguous()) throw Error("tensor '" + e.tensor + "' is not contiguous");
    views.push_back(t.detach().view({-1, static_cast<int64_t>(e.unit_size)}));
  }
  return views;
}

// Copies the units of `e` between `view` [units, unit size] and `values` (packed, unit after
// unit), one unit at a time: no index tensor beside the key's compact list.
void copy_units(const KeyEntry& e, const torch::Tensor& view, uint8_t* values, bool into_view) {
  const size_t unit_bytes = e.unit_size * dtype_size(e.dtype);
  auto* data = static_cast<uint8_t*>(view.data_ptr());
  size_t next = 0;
  for (const uint64_t u : e.units) {
    uint8_t* unit = data + u * unit_bytes;
    uint8_t* value = values + next++ * unit_bytes;
    if (into_view) {
      std::memcpy(unit, value, unit_bytes);
    } else {
      std::memcpy(value, unit, unit_bytes);
    }
  }
}

}  // namespace

KeyFile unlock_reversibly(std::vector<NamedTensor>& tensors, const KeyFile& key) {
  torch::NoGradGuard no_grad;
  KeyFile undo;
  undo.header = key.header;
  std::swap(undo.header.locked_fingerprint, undo.header.original_fingerprint);
  const std::vector<torch::Tensor> views = entry_views(tensors, key);
  for (size_t i = 0; i < key.entries.size(); ++i) {
    KeyEntry e;
    e.tensor = key.entries[i].tensor;
    e.dtype = key.entries[i].dtype;
    e.shape = key.entries[i].shape;
    e.unit_size = key.entries[i].unit_size;
    e.units = key.entries[i].units;
    e.values.resize(key.entries[i].values.size());
    copy_units(e, views[i], e.values.data(), false);
    undo.entries.push_back(std::move(e));
  }
  restore_units(tensors, key);
  return undo;
}

Digest relock(std::vector<NamedTensor>& tensors, const KeyFile& undo) {
  torch::NoGradGuard no_grad;
  const std::vector<torch::Tensor> views = entry_views(tensors, undo);
  for (size_t i = 0; i < undo.entries.size(); ++i) {
    const KeyEntry& e = undo.entries[i];
    copy_units(e, views[i], const_cast<uint8_t*>(e.values.data()), true);
  }
  return fingerprint(tensors);
}

}  // namespace corelocker
