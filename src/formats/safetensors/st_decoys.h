// Decoy fill of a safetensors lock, drawn with LibTorch (the streaming lock itself is torch-free
// and takes this as StLockOptions::decoys).
#pragma once

#include <cstdint>
#include <vector>

#include "formats/safetensors/safetensors_lock.h"

namespace corelocker {

// StDecoyFill of locking/decoys.h's fill_decoys: the tensors are copied out of the file (F16 and
// BF16 as F32, whose decoys are rounded back), the lock's units are the plan; with tiers, tier r
// is drawn with seed + r and modelled on the units no tier takes, as the LibTorch and ONNX tier
// locks draw theirs. Throws Error for a dtype other than F32, F64, F16, BF16.
std::vector<std::vector<uint8_t>> draw_safetensors_decoys(const std::vector<StDecoyTensor>& tensors,
                                                          Fill fill, size_t tiers, uint64_t seed);

}  // namespace corelocker
