// BatchNorm layers of a safetensors file and the layers that feed them, decided by name
// (formats/safetensors/safetensors_lock.h), and the choice of the BatchNorm channels a lock takes
// (st_lock_internal.h).
#include <algorithm>
#include <cctype>
#include <map>
#include <string>
#include <vector>

#include "formats/safetensors/safetensors_lock.h"
#include "formats/safetensors/st_lock_internal.h"
#include "formats/safetensors/st_select.h"
#include "util/error.h"

namespace corelocker {
namespace {

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isdigit(static_cast<unsigned char>(c)) != 0;
  });
}

// The module paths the naming rule gives for the layer feeding the BatchNorm at `path`.
std::vector<std::string> producer_candidates(const std::string& path) {
  const size_t dot = path.find_last_of('.');
  const std::string parent = dot == std::string::npos ? "" : path.substr(0, dot + 1);
  const std::string last = dot == std::string::npos ? path : path.substr(dot + 1);
  if (all_digits(last)) {
    // A numbered sequence (torch.nn.Sequential): the conv or linear layer just before.
    if (last.size() > 19) return {};
    const unsigned long long k = std::stoull(last);
    if (k == 0) return {};
    return {parent + std::to_string(k - 1)};
  }
  if (last.rfind("bn", 0) == 0 && (last.size() == 2 || all_digits(last.substr(2)))) {
    const std::string n = last.substr(2);
    return {parent + "conv" + n, parent + "fc" + n, parent + "linear" + n};
  }
  return {};
}

}  // namespace

StBatchNorms st_batchnorms(const StHeader& header) {
  std::map<std::string, const StTensor*> by_name;
  for (const auto& t : header.tensors) by_name[t.name] = &t;
  auto vector_of = [&](const std::string& name, uint64_t n) -> const StTensor* {
    auto it = by_name.find(name);
    if (it == by_name.end()) return nullptr;
    const StTensor& t = *it->second;
    if (!st_is_float(t.dtype) || t.shape.size() != 1 || (n != 0 && t.shape[0] != n)) return nullptr;
    return &t;
  };
  StBatchNorms out;
  const std::string suffix = ".weight";
  for (const auto& t : header.tensors) {
    if (t.name.size() <= suffix.size() ||
        t.name.compare(t.name.size() - suffix.size(), suffix.size(), suffix) != 0)
      continue;
    const StTensor* gamma = vector_of(t.name, 0);
    if (gamma == nullptr || gamma->shape[0] == 0) continue;
    const uint64_t c = gamma->shape[0];
    const std::string path = t.name.substr(0, t.name.size() - suffix.size());
    if (vector_of(path + ".bias", c) == nullptr ||
        vector_of(path + ".running_mean", c) == nullptr ||
        vector_of(path + ".running_var", c) == nullptr)
      continue;
    out.layers.push_back({path, t.name, path + ".bias", c, "", ""});
  }
  // Pairing: the first name the rule gives that fits; names that exist but none fits mean the
  // file does not follow the rule.
  for (auto& bn : out.layers) {
    const StTensor* first_misfit = nullptr;
    for (const auto& candidate : producer_candidates(bn.path)) {
      auto it = by_name.find(candidate + ".weight");
      if (it == by_name.end()) continue;
      const StTensor& w = *it->second;
      if (st_is_float(w.dtype) && (w.shape.size() == 4 || w.shape.size() == 2) &&
          w.shape[0] == bn.channels) {
        bn.producer = w.name;
        break;
      }
      if (first_misfit == nullptr) first_misfit = &w;
    }
    if (bn.producer.empty() && first_misfit != nullptr && out.unpaired.empty()) {
      std::string shape;
      for (const uint64_t d : first_misfit->shape)
        shape += (shape.empty() ? "" : "x") + std::to_string(d);
      out.unpaired = "BatchNorm '" + bn.path + "' has " + std::to_string(bn.channels) +
                     " channels but '" + first_misfit->name + "' (" + first_misfit->dtype + " [" +
                     shape + "]), the layer its name pairs it with, does not give " +
                     std::to_string(bn.channels) +
                     " outputs: the names do not follow conv -> BatchNorm (a pre-activation "
                     "network names bnN before convN), so no BatchNorm is paired";
    }
    if (!bn.producer.empty()) {
      const std::string base = bn.producer.substr(0, bn.producer.size() - suffix.size());
      if (vector_of(base + ".bias", bn.channels) != nullptr) bn.producer_bias = base + ".bias";
    }
  }
  if (!out.unpaired.empty()) {
    for (auto& bn : out.layers) {
      bn.producer.clear();
      bn.producer_bias.clear();
    }
  }
  return out;
}

namespace st_detail {

std::vector<std::vector<std::vector<uint64_t>>> select_bn_channels(
    const StFile& file, const std::vector<const StBatchNorm*>& norms, const StLockOptions& options,
    const std::vector<double>& ratios) {
  std::map<std::string, const StTensor*> by_name;
  for (const auto& t : file.header.tensors) by_name[t.name] = &t;
  struct Candidate {
    uint32_t key;
    uint32_t norm;
    uint64_t channel;
  };
  // Scope layer: a group a BatchNorm; global: one group. Candidates in file order.
  std::vector<std::vector<Candidate>> groups(options.scope == Scope::kLayer ? norms.size() : 1);
  for (size_t i = 0; i < norms.size(); ++i) {
    const StBatchNorm& bn = *norms[i];
    UnitKeys keys;
    keys.keys.reserve(bn.channels);
    if (options.criterion == Criterion::kRandom) {
      random_keys(options.seed, layer_salt(bn.weight), 0, bn.channels, 0, 0, keys);
    } else {
      const StTensor& gamma = *by_name.at(bn.weight);
      score_chunk(key_dtype(gamma.dtype), file.tensor_data(gamma), 0, bn.channels, 1, 0, keys);
    }
    auto& group = groups[options.scope == Scope::kLayer ? i : 0];
    for (const auto& [key, channel] : keys.keys)
      group.push_back({key, static_cast<uint32_t>(i), channel});
  }
  std::vector<std::vector<std::vector<uint64_t>>> taken(
      ratios.size(), std::vector<std::vector<uint64_t>>(norms.size()));
  for (auto& group : groups) {
    // Higher key first; on equal keys the earlier channel in file order.
    std::stable_sort(group.begin(), group.end(),
                     [](const Candidate& a, const Candidate& b) { return a.key > b.key; });
    for (size_t r = 0; r < ratios.size(); ++r) {
      const uint64_t k = units_at_ratio(group.size(), ratios[r]);
      for (uint64_t j = 0; j < k; ++j) taken[r][group[j].norm].push_back(group[j].channel);
    }
  }
  for (auto& per_ratio : taken)
    for (auto& channels : per_ratio) std::sort(channels.begin(), channels.end());
  return taken;
}

}  // namespace st_detail
}  // namespace corelocker
