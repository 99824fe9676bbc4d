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

torch::Tensor unit_index(const KeyEntry& e) {
  return torch::tensor(std::vector<int64_t>(e.units.begin(), e.units.end()), torch::kInt64);
}

}  // namespace

KeyFile unlock_reversibly(std::vector<NamedTensor>& tensors, const KeyFile& key) {
  torch::NoGradGuard no_grad;
  KeyFile undo;
  undo.header = key.header;
  std::swap(undo.header.locked_fingerprint, undo.header.original_fingerprint);
  const std::vector<torch::Tensor> views = entry_views(tensors, key);
  for (size_t i = 0; i < key.entries.size(); ++i) {
    KeyEntry e = key.entries[i];
    auto values = views[i].index_select(0, unit_index(e)).contiguous();
    e.values.resize(static_cast<size_t>(values.numel()) * values.element_size());
    if (!e.values.empty()) std::memcpy(e.values.data(), values.data_ptr(), e.values.size());
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
    auto values =
        torch::from_blob(const_cast<uint8_t*>(e.values.data()),
                         {static_cast<int64_t>(e.units.size()), static_cast<int64_t>(e.unit_size)},
                         to_scalar_type(e.dtype));
    views[i].index_copy_(0, unit_index(e), values);
  }
  return fingerprint(tensors);
}

}  // namespace corelocker
