#include "locking/fingerprint.h"

#include <algorithm>

#include "util/error.h"

namespace corelocker {

std::vector<const NamedTensor*> fingerprint_order(const std::vector<NamedTensor>& tensors) {
  std::vector<const NamedTensor*> order;
  order.reserve(tensors.size());
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const NamedTensor* a, const NamedTensor* b) { return a->name < b->name; });
  for (size_t i = 1; i < order.size(); ++i) {
    if (order[i - 1]->name == order[i]->name)
      throw Error("fingerprint: duplicate tensor '" + order[i]->name + "'");
  }
  return order;
}

FingerprintStream::FingerprintStream(uint64_t tensors) {
  const std::string domain = "corelocker-fingerprint-v1";
  h_.update_str(domain);
  h_.update_u64(tensors);
}

void FingerprintStream::header(const std::string& name, const torch::Tensor& t) {
  h_.update_str(name);
  h_.update_str(c10::toString(t.scalar_type()));
  h_.update_u64(static_cast<uint64_t>(t.dim()));
  for (auto d : t.sizes()) h_.update_u64(static_cast<uint64_t>(d));
  h_.update_u64(static_cast<uint64_t>(t.numel()) * t.element_size());
}

Digest fingerprint(const std::vector<NamedTensor>& tensors) {
  const auto order = fingerprint_order(tensors);
  FingerprintStream fp(order.size());
  for (const NamedTensor* t : order) {
    auto c = t->tensor.detach().cpu().contiguous();
    fp.header(t->name, c);
    fp.bytes(c.data_ptr(), static_cast<uint64_t>(c.numel()) * c.element_size());
  }
  return fp.finish();
}

}  // namespace corelocker
