// Decoy fill of a safetensors lock, drawn with LibTorch (formats/safetensors/st_torch.h).
#include <cstring>
#include <string>

#include "formats/safetensors/st_torch.h"
#include "locking/decoys.h"
#include "util/error.h"

namespace corelocker {

torch::ScalarType st_scalar_type(const std::string& dtype, const std::string& tensor) {
  if (dtype == "F32") return torch::kFloat32;
  if (dtype == "F64") return torch::kFloat64;
  if (dtype == "F16") return torch::kFloat16;
  if (dtype == "BF16") return torch::kBFloat16;
  throw Error("safetensors tensor '" + tensor + "' has dtype " + dtype +
              ", not one of F32, F64, F16, BF16");
}

torch::Tensor st_float_copy(const uint8_t* data, const std::string& dtype,
                            const std::vector<uint64_t>& shape, const std::string& tensor) {
  const torch::ScalarType type = st_scalar_type(dtype, tensor);
  const std::vector<int64_t> sizes(shape.begin(), shape.end());
  // The file's bytes are only read: the copy (or the conversion) is what callers change.
  const torch::Tensor in = torch::from_blob(const_cast<uint8_t*>(data), sizes, type);
  return type == torch::kFloat16 || type == torch::kBFloat16 ? in.to(torch::kFloat32) : in.clone();
}

namespace {

// The plan of the units whose tier is `tier` (every unit when tier < 0).
ExtractionPlan plan_of(const std::vector<StDecoyTensor>& tensors, int tier) {
  ExtractionPlan plan;
  for (const auto& t : tensors) {
    std::vector<uint64_t> units;
    for (size_t i = 0; i < t.units.size(); ++i) {
      if (tier < 0 || t.tier.at(i) == tier) units.push_back(t.units[i]);
    }
    if (units.empty()) continue;
    plan.units += static_cast<int64_t>(units.size());
    plan.entries.push_back(
        {t.name, static_cast<int64_t>(t.unit_size), UnitList(units.begin(), units.end())});
  }
  return plan;
}

}  // namespace

std::vector<std::vector<uint8_t>> draw_safetensors_decoys(const std::vector<StDecoyTensor>& tensors,
                                                          Fill fill, size_t tiers, uint64_t seed) {
  torch::NoGradGuard no_grad;
  std::vector<NamedTensor> copies;
  for (const auto& t : tensors)
    copies.push_back({t.name, st_float_copy(t.data, t.dtype, t.shape, t.name), false});
  if (tiers <= 1) {
    fill_decoys(copies, plan_of(tensors, -1), nullptr, fill, seed);
  } else {
    const ExtractionPlan all = plan_of(tensors, -1);
    for (size_t r = 0; r < tiers; ++r) {
      const ExtractionPlan step = plan_of(tensors, static_cast<int>(r));
      if (!step.entries.empty()) fill_decoys(copies, step, &all, fill, seed + r);
    }
  }
  std::vector<std::vector<uint8_t>> out(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const StDecoyTensor& t = tensors[i];
    if (t.units.empty()) continue;
    const torch::Tensor values = copies[i].tensor.to(st_scalar_type(t.dtype, t.name)).contiguous();
    const uint64_t unit_bytes = t.unit_size * values.element_size();
    const auto* from = static_cast<const uint8_t*>(values.data_ptr());
    out[i].resize(t.units.size() * unit_bytes);
    for (size_t u = 0; u < t.units.size(); ++u)
      std::memcpy(out[i].data() + u * unit_bytes, from + t.units[u] * unit_bytes, unit_bytes);
  }
  return out;
}

}  // namespace corelocker
