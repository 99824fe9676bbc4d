// Internal to the safetensors lock pieces (src/formats/safetensors/st_*.cpp): the helpers the
// fingerprint, the header splice, the lock and the unlock share.
#pragma once

#include <map>
#include <string>

#include "formats/safetensors/safetensors.h"
#include "formats/safetensors/safetensors_lock.h"
#include "keyfile/key_file.h"
#include "util/hash.h"

namespace corelocker::st_detail {

// The key-file dtype of a safetensors float dtype (F32, F64, F16, BF16); throws Error for others.
// In st_lock.cpp.
DType key_dtype(const std::string& st);

// The digest of a tensor's bytes, giving the pages back as it goes. In st_fingerprint.cpp.
Digest tensor_digest(const StFile& f, const StTensor& t, StFingerprintScheme scheme);
// The fingerprint of a header from its tensors' digests (by name): st_fingerprint's final step.
// In st_fingerprint.cpp.
Digest combine(const StHeader& header, const std::map<std::string, Digest>& digests,
               StFingerprintScheme scheme);

// The locked header: the original text with the lock entries spliced in, padded to keep the data
// 8-aligned. In st_header_splice.cpp.
std::string locked_header_text(const StHeader& h, const KeyFile& key, const std::string& scope_text,
                               double ratio);
// The original header text of a locked file (checked against the hash recorded at lock time).
// In st_header_splice.cpp.
std::string original_header_text(const StHeader& h, const std::string& what);

}  // namespace corelocker::st_detail
