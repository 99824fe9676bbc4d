#include "distributed/agreement.h"

#include <nlohmann/json.hpp>

#include "locking/fingerprint.h"
#include "util/hash.h"

namespace corelocker {

void agree_on_data(Collective& group, const std::string& what, const Dataset& data) {
  nlohmann::json j = {{"dataset", data.name}, {"images", data.size()}};
  if (data.size() > 0) {
    const torch::Tensor images = data.images.contiguous(), labels = data.labels.contiguous();
    const Digest di = hash_bytes(images.data_ptr(), images.numel() * images.element_size());
    const Digest dl = hash_bytes(labels.data_ptr(), labels.numel() * labels.element_size());
    j["images_digest"] = to_hex(di).substr(0, 16);
    j["labels_digest"] = to_hex(dl).substr(0, 16);
  }
  group.agree(what, j.dump());
}

void agree_on_model(Collective& group, const std::string& what, const LoadedModel& model) {
  group.agree(what, to_hex(fingerprint(named_tensors(*model.net))));
}

}  // namespace corelocker
