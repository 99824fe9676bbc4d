// What LibTorch does for safetensors files: the decoys of a lock and the detectors of `detect`
// (the streaming lock and the format itself are torch-free and take these as StTorchParts).
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "formats/safetensors/safetensors_lock.h"
#include "locking/detect.h"
#include "models/structure.h"

namespace corelocker {

// The torch dtype of a safetensors float dtype; throws Error naming `tensor` for another.
torch::ScalarType st_scalar_type(const std::string& dtype, const std::string& tensor);
// A copy of a tensor's values in the file (`data`), F16 and BF16 as F32. Throws as above.
torch::Tensor st_float_copy(const uint8_t* data, const std::string& dtype,
                            const std::vector<uint64_t>& shape, const std::string& tensor);

// StDecoyFill of locking/decoys.h's fill_decoys: the tensors are copied out of the file (F16 and
// BF16 as F32, whose decoys are rounded back), the lock's units are the plan; with tiers, tier r
// is drawn with seed + r and modelled on the units no tier takes, as the LibTorch and ONNX tier
// locks draw theirs. Throws Error for a dtype other than F32, F64, F16, BF16.
std::vector<std::vector<uint8_t>> draw_safetensors_decoys(const std::vector<StDecoyTensor>& tensors,
                                                          Fill fill, size_t tiers, uint64_t seed);

// The layers of a safetensors file as a network's structure, for the locks of locking/ that rank
// by one: its conv and linear layers (st_layers; each one's bias where `<layer>.bias` has one
// value per output) and its BatchNorms (st_batchnorms, each with the layer feeding it), with the
// two layers st_layers leaves alone first and last, so that a structure lock takes what the
// streaming lock takes (except layers a --keep left alone, which no key records).
Structure st_structure(const StHeader& header);

// ModelFormat::detect for a safetensors file: its float tensors (F16 and BF16 as F32; running
// statistics as buffers) against the key, the learned detector's locks ranking st_structure.
// Throws MismatchError when the key is not the file's, and what detect_extracted throws.
void detect_safetensors(const std::string& path, const KeyFile& key, const DetectOptions& options,
                        DetectionReport& report);

// Both, for register_safetensors_format.
StTorchParts safetensors_torch_parts();

}  // namespace corelocker
