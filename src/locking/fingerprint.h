// Model fingerprints: BLAKE2b-256 over the name, dtype, shape and bytes of every parameter and
// buffer, visited in name order so that the result does not depend on registration order.
#pragma once

#include <vector>

#include "models/network.h"
#include "util/hash.h"

namespace corelocker {

// Fingerprint of a set of named tensors. Throws Error on duplicate names.
Digest fingerprint(const std::vector<NamedTensor>& tensors);

}  // namespace corelocker
