// Model fingerprints: BLAKE2b-256 over the name, dtype, shape and bytes of every parameter and
// buffer, visited in name order so that the result does not depend on registration order.
#pragma once

#include <cstdint>
#include <vector>

#include "models/network.h"
#include "util/hash.h"

namespace corelocker {

// Fingerprint of a set of named tensors. Throws Error on duplicate names.
Digest fingerprint(const std::vector<NamedTensor>& tensors);

// The order a fingerprint visits the tensors in (by name). Throws Error on duplicate names.
std::vector<const NamedTensor*> fingerprint_order(const std::vector<NamedTensor>& tensors);

// A fingerprint fed piece by piece, for passes that hash tensors while they change them: begin
// with the number of tensors, then for each tensor of fingerprint_order its header and its bytes
// (contiguous, in any number of pieces). finish() gives what fingerprint() gives.
class FingerprintStream {
 public:
  explicit FingerprintStream(uint64_t tensors);
  // Name, dtype and shape of `t` (contiguous), and its byte count.
  void header(const std::string& name, const torch::Tensor& t);
  void bytes(const void* data, uint64_t size) { h_.update(data, size); }
  Digest finish() { return h_.finish(); }

 private:
  Hasher h_;
};

}  // namespace corelocker
