// What a safetensors lock takes, from the header alone (formats/safetensors/safetensors_lock.h):
// the layers found by name, the first and last and the --keep patterns left alone, the groups that
// compete, and for bn units the BatchNorm channels and the tensors they take units of.
#include <fnmatch.h>

#include <algorithm>
#include <iterator>
#include <map>
#include <string>
#include <vector>

#include "formats/safetensors/safetensors_lock.h"
#include "formats/safetensors/st_lock_internal.h"
#include "util/error.h"

namespace corelocker {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool matches(const std::string& pattern, const std::string& name) {
  return ::fnmatch(pattern.c_str(), name.c_str(), 0) == 0;
}

const StTensor& tensor_named(const StHeader& h, const std::string& name) {
  for (const auto& t : h.tensors)
    if (t.name == name) return t;
  throw Error("safetensors lock: no tensor '" + name + "'");
}

// Adds `units` (sorted) of tier `tier` to the tensor's list; a tensor that two BatchNorms name
// keeps the union, each unit with the smallest tier that takes it.
void add_listed(std::map<std::string, st_detail::ListedUnits>& listed, const std::string& tensor,
                uint64_t unit_size, const std::vector<uint64_t>& units, uint16_t tier) {
  st_detail::ListedUnits& l = listed[tensor];
  if (!l.units.empty() && l.unit_size != unit_size)
    throw Error("tensor '" + tensor + "' taken with two unit sizes");
  l.unit_size = unit_size;
  st_detail::ListedUnits merged;
  merged.unit_size = unit_size;
  size_t i = 0, j = 0;
  while (i < l.units.size() || j < units.size()) {
    if (j == units.size() || (i < l.units.size() && l.units[i] < units[j])) {
      merged.units.push_back(l.units[i]);
      merged.tier.push_back(l.tier[i++]);
    } else if (i == l.units.size() || units[j] < l.units[i]) {
      merged.units.push_back(units[j++]);
      merged.tier.push_back(tier);
    } else {
      merged.units.push_back(units[j++]);
      merged.tier.push_back(std::min(tier, l.tier[i++]));
    }
  }
  l = std::move(merged);
}

}  // namespace

std::vector<StLayer> st_layers(const StHeader& header, bool include_io) {
  std::vector<StLayer> layers;
  for (const auto& t : header.tensors) {
    if (!st_is_float(t.dtype) || !ends_with(t.name, "weight") || t.numel() == 0) continue;
    if (t.shape.size() == 4) {
      layers.push_back(
          {t.name, StLayerKind::kConv, t.shape[2] * t.shape[3], t.shape[0] * t.shape[1], true});
    } else if (t.shape.size() == 2) {
      layers.push_back({t.name, StLayerKind::kLinear, 1, t.numel(), true});
    }
  }
  if (include_io || layers.empty()) return layers;
  auto first_of = [&](StLayerKind k) {
    for (size_t i = 0; i < layers.size(); ++i)
      if (layers[i].kind == k) return static_cast<std::ptrdiff_t>(i);
    return std::ptrdiff_t{-1};
  };
  auto last_of = [&](StLayerKind k) {
    for (size_t i = layers.size(); i-- > 0;)
      if (layers[i].kind == k) return static_cast<std::ptrdiff_t>(i);
    return std::ptrdiff_t{-1};
  };
  std::ptrdiff_t first = first_of(StLayerKind::kConv);
  if (first < 0) first = first_of(StLayerKind::kLinear);
  std::ptrdiff_t last = last_of(StLayerKind::kLinear);
  if (last < 0) last = last_of(StLayerKind::kConv);
  layers[static_cast<size_t>(first)].eligible = false;
  layers[static_cast<size_t>(last)].eligible = false;
  return layers;
}

std::vector<std::pair<std::string, std::string>> st_lock_metadata(const StHeader& header) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [k, v] : header.metadata) {
    if (k.rfind(kStLockPrefix, 0) == 0) out.emplace_back(k, v);
  }
  return out;
}

namespace st_detail {

LockPlan plan_lock(const StFile& file, const StLockOptions& options,
                   const std::vector<double>& ratios, const std::string& what) {
  const StHeader& h = file.header;
  const bool bn_units = options.criterion == Criterion::kBn ||
                        (options.criterion == Criterion::kRandom && options.bn_units);
  LockPlan plan;
  plan.layers = st_layers(h, options.include_io);
  std::vector<StLayer>& layers = plan.layers;
  const StBatchNorms norms = bn_units ? st_batchnorms(h) : StBatchNorms{};
  std::vector<bool> kept(layers.size(), false);
  std::vector<bool> kept_norm(norms.layers.size(), false);
  for (const auto& pattern : options.keep) {
    bool matched = false;
    for (size_t i = 0; i < layers.size(); ++i) {
      if (!matches(pattern, layers[i].tensor)) continue;
      matched = true;
      kept[i] = true;
    }
    for (size_t i = 0; i < norms.layers.size(); ++i) {
      if (!matches(pattern, norms.layers[i].path) && !matches(pattern, norms.layers[i].weight))
        continue;
      matched = true;
      kept_norm[i] = true;
    }
    if (!matched) {
      throw UsageError(
          "--keep '" + pattern + "' matches no layer of " + what + " (" +
          std::to_string(layers.size()) + " 4-D or 2-D float '*weight' tensors" +
          (bn_units ? ", " + std::to_string(norms.layers.size()) + " BatchNorms" : "") +
          "; `inspect` lists them)");
    }
  }
  for (size_t i = 0; i < layers.size(); ++i) {
    if (kept[i]) {
      layers[i].eligible = false;
      plan.kept.push_back(layers[i].tensor);
    } else if (layers[i].eligible) {
      plan.layer_of[layers[i].tensor] = i;
    } else {
      plan.excluded.push_back(layers[i].tensor);
    }
  }
  plan.units.assign(ratios.size(), 0);

  if (bn_units) {
    // BatchNorm channels, each with its feeding layer's filter: listed now; pass 1 only hashes.
    plan.layer_of.clear();
    std::vector<const StBatchNorm*> eligible;
    for (size_t i = 0; i < norms.layers.size(); ++i) {
      if (kept_norm[i])
        plan.kept.push_back(norms.layers[i].path);
      else
        eligible.push_back(&norms.layers[i]);
    }
    if (eligible.empty()) {
      throw UsageError(what + ": no BatchNorm to take channels of (" +
                       std::to_string(norms.layers.size()) +
                       " found by name: 1-D float P.weight, P.bias, P.running_mean and "
                       "P.running_var of one length" +
                       (options.keep.empty() ? "" : "; --keep left them alone") + ")");
    }
    const auto channels = select_bn_channels(file, eligible, options, ratios);
    for (size_t i = 0; i < eligible.size(); ++i) {
      const StBatchNorm& bn = *eligible[i];
      plan.candidates += bn.channels;
      // The feeding layer's filter goes along only when that layer is itself eligible, so the
      // first/last-layer rule and --keep hold for every criterion.
      auto producer = std::find_if(layers.begin(), layers.end(),
                                   [&](const StLayer& l) { return l.tensor == bn.producer; });
      const bool with_filter =
          !bn.producer.empty() && producer != layers.end() && producer->eligible;
      uint64_t filter = 0;  // elements of one output filter (or row) of the feeding layer
      if (with_filter) {
        const StTensor& w = tensor_named(h, bn.producer);
        filter = w.numel() / w.shape[0];
      }
      for (size_t r = 0; r < ratios.size(); ++r) {
        const std::vector<uint64_t>& c = channels[r][i];
        plan.units[r] += c.size();
        if (c.empty()) continue;
        const auto tier = static_cast<uint16_t>(r);
        add_listed(plan.listed, bn.weight, 1, c, tier);
        add_listed(plan.listed, bn.bias, 1, c, tier);
        if (!with_filter) continue;
        add_listed(plan.listed, bn.producer, filter, c, tier);
        if (!bn.producer_bias.empty()) add_listed(plan.listed, bn.producer_bias, 1, c, tier);
      }
    }
    return plan;
  }
  if (plan.layer_of.empty()) {
    throw UsageError(what + ": no eligible layer (" + std::to_string(layers.size()) +
                     " 4-D or 2-D float '*weight' tensors" +
                     (options.include_io ? "" : ", first and last excluded") +
                     (options.keep.empty()
                          ? ""
                          : ", --keep left " + std::to_string(plan.kept.size()) + " alone") +
                     ")");
  }
  // groups: one per layer (scope layer) or one per kind of unit (scope global)
  plan.group_of.assign(layers.size(), -1);
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!layers[i].eligible) continue;
    if (options.scope == Scope::kLayer) {
      plan.group_of[i] = static_cast<int>(plan.group_units.size());
      plan.group_units.push_back(0);
    } else {
      plan.group_of[i] = layers[i].kind == StLayerKind::kConv ? 0 : 1;
      if (plan.group_units.empty()) plan.group_units.assign(2, 0);
    }
    plan.group_units[static_cast<size_t>(plan.group_of[i])] += layers[i].units;
    plan.candidates += layers[i].units;
  }
  for (size_t r = 0; r < ratios.size(); ++r)
    for (const uint64_t n : plan.group_units) plan.units[r] += units_at_ratio(n, ratios[r]);
  return plan;
}

}  // namespace st_detail
}  // namespace corelocker
