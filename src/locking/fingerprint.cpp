#include "locking/fingerprint.h"

#include <algorithm>

#include "util/error.h"

namespace corelocker {

Digest fingerprint(const std::vector<NamedTensor>& tensors) {
  std::vector<const NamedTensor*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const NamedTensor* a, const NamedTensor* b) { return a->name < b->name; });
  Hasher h;
  const std::string domain = "corelocker-fingerprint-v1";
  h.update_str(domain);
  h.update_u64(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    const auto& t = *order[i];
    if (i > 0 && order[i - 1]->name == t.name) throw Error("fingerprint: duplicate tensor '" + t.name + "'");
    auto c = t.tensor.detach().cpu().contiguous();
    h.update_str(t.name);
    h.update_str(c10::toString(c.scalar_type()));
    h.update_u64(static_cast<uint64_t>(c.dim()));
    for (auto d : c.sizes()) h.update_u64(static_cast<uint64_t>(d));
    const uint64_t nbytes = static_cast<uint64_t>(c.numel()) * c.element_size();
    h.update_u64(nbytes);
    h.update(c.data_ptr(), nbytes);
  }
  return h.finish();
}

}  // namespace corelocker
