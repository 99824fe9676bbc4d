#include "attacks/attacks.h"

#include <cmath>
#include <set>
#include <unordered_map>

#include "attacks/effective.h"
#include "models/torchscript.h"
#include "util/error.h"

namespace corelocker {
namespace {

std::unordered_map<std::string, torch::Tensor> tensor_map(LoadedModel& model) {
  std::unordered_map<std::string, torch::Tensor> m;
  for (auto& t : named_tensors(*model.net)) m[t.name] = t.tensor;
  return m;
}

const torch::Tensor& need(const std::unordered_map<std::string, torch::Tensor>& m,
                          const std::string& name) {
  auto it = m.find(name);
  if (it == m.end())
    throw Error("structure names tensor '" + name + "', which the model does not have");
  return it->second;
}

// torch.nn.init's fan-in of a weight: size(1) times the receptive field (dimensions 2 and up);
// the length of a 1-D tensor.
int64_t fan_in_of(const torch::Tensor& t) { return t.dim() < 2 ? t.numel() : t[0].numel(); }

// U(-1/sqrt(fan_in), 1/sqrt(fan_in)): kaiming_uniform_(a=sqrt(5)) has bound
// gain * sqrt(3 / fan_in) with gain sqrt(2 / (1 + 5)), which is 1/sqrt(fan_in); Conv2d and Linear
// draw their bias from the same bound. PyTorch leaves a tensor with fan_in 0 alone; so do we.
void uniform_fan_in(torch::Tensor t, int64_t fan_in) {
  if (fan_in <= 0) return;
  const double bound = 1.0 / std::sqrt(static_cast<double>(fan_in));
  t.uniform_(-bound, bound);
}

// The last component of a dotted tensor name ("layer1.bn1.running_mean" -> "running_mean").
std::string leaf_name(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

}  // namespace

const char* to_string(AttackKind k) {
  switch (k) {
    case AttackKind::kFinetune:
      return "finetune";
    case AttackKind::kReinit:
      return "reinit";
    case AttackKind::kPrune:
      return "prune";
    case AttackKind::kZeroRetrain:
      return "zero-retrain";
    case AttackKind::kBnRecalibrate:
      return "bn-recalibrate";
    case AttackKind::kScratch:
      return "scratch";
  }
  return "?";
}

AttackKind parse_attack_kind(const std::string& s) {
  for (AttackKind k : all_attack_kinds()) {
    if (s == to_string(k)) return k;
  }
  throw UsageError("attack '" + s +
                   "': expected finetune, reinit, prune, zero-retrain, bn-recalibrate or scratch");
}

std::vector<AttackKind> parse_attack_kinds(const std::string& list) {
  if (list == "all") return all_attack_kinds();
  std::vector<AttackKind> out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t comma = list.find(',', start);
    const std::string item =
        list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const AttackKind k = parse_attack_kind(item);
    for (AttackKind seen : out) {
      if (seen == k) throw UsageError("attacks '" + list + "': '" + item + "' given twice");
    }
    out.push_back(k);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::vector<AttackKind> all_attack_kinds() {
  return {AttackKind::kFinetune,    AttackKind::kReinit,        AttackKind::kPrune,
          AttackKind::kZeroRetrain, AttackKind::kBnRecalibrate, AttackKind::kScratch};
}

TrainSummary finetune(LoadedModel& model, const Dataset& data, const TrainOptions& options,
                      const TrainCallback& progress) {
  TrainOptions o = options;
  o.trainable = nullptr;
  o.update_masks.clear();
  return train(*model.net, data, model.meta.preprocess, o, progress);
}

// ---------------------------------------------------------------- prune
PruneResult prune_smallest(LoadedModel& model, double ratio) {
  if (!(ratio >= 0.0 && ratio <= 1.0))
    throw UsageError("prune ratio " + std::to_string(ratio) + ": must be within [0, 1]");
  torch::NoGradGuard no_grad;
  auto tensors = tensor_map(model);
  std::vector<std::string> names;
  std::vector<torch::Tensor> flat;
  for (const auto& layer : model.net->structure()) {
    if (layer.kind != LayerKind::kConv2d && layer.kind != LayerKind::kLinear) continue;
    names.push_back(layer.weight);
    flat.push_back(need(tensors, layer.weight).detach().reshape({-1}));
  }
  PruneResult r;
  if (names.empty()) return r;
  auto all = torch::cat(flat).abs();
  r.candidates = all.numel();
  r.pruned = static_cast<int64_t>(std::llround(ratio * double(r.candidates)));
  // A stable sort breaks ties by position, so exactly r.pruned positions go.
  auto order = std::get<1>(torch::sort(all, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  auto gone = order.narrow(0, 0, r.pruned);
  r.already_zero = all.index_select(0, gone).eq(0).sum().item<int64_t>();
  auto kept = torch::ones({r.candidates}, torch::kBool);
  kept.index_fill_(0, gone, false);
  int64_t offset = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    torch::Tensor w = need(tensors, names[i]);
    auto k = kept.narrow(0, offset, w.numel()).reshape(w.sizes());
    offset += w.numel();
    w.masked_fill_(k.logical_not(), 0);
    r.kept[names[i]] = k;
  }
  return r;
}

TrainSummary finetune_pruned(LoadedModel& model, const PruneResult& pruned, const Dataset& data,
                             const TrainOptions& options, const TrainCallback& progress) {
  TrainOptions o = options;
  o.trainable = nullptr;
  o.update_masks = pruned.kept;
  return train(*model.net, data, model.meta.preprocess, o, progress);
}

// ---------------------------------------------------------------- zero-retrain
std::vector<Suspect> find_extracted(LoadedModel& model) {
  torch::NoGradGuard no_grad;
  auto tensors = tensor_map(model);
  std::vector<Suspect> out;
  auto add = [&](const std::string& name, torch::Tensor mask, int64_t units, const char* unit) {
    if (units > 0) out.push_back({name, std::move(mask), units, unit});
  };
  for (const auto& layer : model.net->structure()) {
    const torch::Tensor& w = need(tensors, layer.weight);
    switch (layer.kind) {
      case LayerKind::kConv2d: {
        const int64_t o = w.size(0), i = w.size(1);
        auto zero_kernel = w.detach().reshape({o, i, -1}).eq(0).all(2);  // [o, i]
        add(layer.weight, zero_kernel.unsqueeze(2).unsqueeze(3).expand(w.sizes()).contiguous(),
            zero_kernel.sum().item<int64_t>(), "kernel");
        if (!layer.bias.empty()) {
          const torch::Tensor& b = need(tensors, layer.bias);
          auto m = zero_kernel.all(1).logical_and(b.detach().eq(0));
          add(layer.bias, m, m.sum().item<int64_t>(), "bias");
        }
        break;
      }
      case LayerKind::kLinear: {
        auto m = w.detach().eq(0);
        add(layer.weight, m, m.sum().item<int64_t>(), "weight");
        break;
      }
      case LayerKind::kBatchNorm:
      case LayerKind::kLayerNorm: {
        auto dead = w.detach().eq(0);
        add(layer.weight, dead, dead.sum().item<int64_t>(), "channel");
        if (!layer.bias.empty()) {
          auto m = dead.logical_and(need(tensors, layer.bias).detach().eq(0));
          add(layer.bias, m, m.sum().item<int64_t>(), "bias");
        }
        break;
      }
    }
  }
  return out;
}

int64_t redraw_extracted(LoadedModel& model, const std::vector<Suspect>& suspects, uint64_t seed) {
  auto tensors = tensor_map(model);
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  int64_t positions = 0;
  for (const auto& s : suspects) {
    torch::Tensor t = need(tensors, s.tensor);
    auto others = t.detach().masked_select(s.mask.logical_not());
    // The layer's own distribution where there is one; a small spread around 0 otherwise.
    const double mean = others.numel() > 0 ? others.mean().item<double>() : 0.0;
    const double sd = others.numel() > 1 ? others.std().item<double>() : 0.01;
    auto fresh = torch::randn(t.sizes(), t.options()) * sd + mean;
    t.copy_(torch::where(s.mask, fresh, t));
    positions += s.mask.sum().item<int64_t>();
  }
  return positions;
}

ZeroRetrainResult zero_retrain(LoadedModel& model, const Dataset& data, const TrainOptions& options,
                               const TrainCallback& progress) {
  ZeroRetrainResult r;
  r.suspects = find_extracted(model);
  if (r.suspects.empty()) return r;
  r.positions = redraw_extracted(model, r.suspects, options.seed);
  TrainOptions o = options;
  o.update_masks.clear();
  std::set<std::string> names;
  for (const auto& s : r.suspects) {
    names.insert(s.tensor);
    o.update_masks[s.tensor] = s.mask;
  }
  o.trainable = [names](const std::string& n) { return names.count(n) > 0; };
  // The running statistics belong to the original weights the attacker tries to reconstruct.
  o.freeze_bn_stats = true;
  r.train = train(*model.net, data, model.meta.preprocess, o, progress);
  return r;
}

// ---------------------------------------------------------------- reinit
ReinitResult reinit_finetune(LoadedModel& model, const Dataset& data, const TrainOptions& options,
                             const TrainCallback& progress) {
  ReinitResult r;
  r.suspects = find_extracted(model);
  if (!r.suspects.empty()) r.positions = redraw_extracted(model, r.suspects, options.seed);
  r.train = finetune(model, data, options, progress);
  return r;
}

// ---------------------------------------------------------------- bn-recalibrate
BnRecalibrateResult bn_recalibrate(LoadedModel& model, const Dataset& data,
                                   const TrainOptions& options, bool train_affine,
                                   const TrainCallback& progress) {
  if (options.batch_size < 1)
    throw UsageError("batch size " + std::to_string(options.batch_size) + ": must be >= 1");
  BnRecalibrateResult r;
  const ReestimateResult e = reestimate_batchnorm(model, data, options.batch_size);
  r.layers = e.layers;
  r.images = e.images;
  if (train_affine) {
    std::set<std::string> names;
    for (const auto& layer : model.net->structure()) {
      if (layer.kind != LayerKind::kBatchNorm) continue;
      names.insert(layer.weight);
      if (!layer.bias.empty()) names.insert(layer.bias);
    }
    TrainOptions o = options;
    o.update_masks.clear();
    o.trainable = [names](const std::string& n) { return names.count(n) > 0; };
    r.train = train(*model.net, data, model.meta.preprocess, o, progress);
  }
  return r;
}

// ---------------------------------------------------------------- scratch
LoadedModel scratch_model(const ModelMeta& meta, uint64_t seed) {
  ModelMeta m = meta;
  m.lock.reset();
  m.training_json = "{}";
  torch::manual_seed(seed);
  return create_model(m);
}

PytorchInit pytorch_default_init(LoadedModel& model, uint64_t seed) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  auto tensors = tensor_map(model);
  std::set<std::string> drawn;
  PytorchInit r;
  for (const auto& layer : model.net->structure()) {
    if (drawn.count(layer.weight)) continue;  // a layer recorded twice keeps its first draw
    torch::Tensor w = need(tensors, layer.weight);
    const bool weighted = layer.kind == LayerKind::kConv2d || layer.kind == LayerKind::kLinear;
    const int64_t fan_in = fan_in_of(w);
    if (weighted)
      uniform_fan_in(w, fan_in);
    else
      w.fill_(1.0);
    drawn.insert(layer.weight);
    if (!layer.bias.empty()) {
      torch::Tensor b = need(tensors, layer.bias);
      if (weighted)
        uniform_fan_in(b, fan_in);
      else
        b.zero_();
      drawn.insert(layer.bias);
    }
    ++r.layers;
  }
  for (auto& t : named_tensors(*model.net)) {
    const std::string leaf = leaf_name(t.name);
    if (t.is_buffer) {
      // Every BatchNorm's statistics, also of one without affine parameters (not in the structure).
      if (leaf == "running_mean" || leaf == "num_batches_tracked") t.tensor.zero_();
      if (leaf == "running_var") t.tensor.fill_(1.0);
      continue;
    }
    if (drawn.count(t.name)) continue;
    uniform_fan_in(t.tensor, fan_in_of(t.tensor));
    ++r.other_parameters;
  }
  return r;
}

LoadedModel scratch_model(LoadedModel& like, uint64_t seed, PytorchInit* init) {
  auto* script = dynamic_cast<TorchScriptNetwork*>(like.net.get());
  if (script == nullptr) return scratch_model(like.meta, seed);
  LoadedModel m{like.meta, script->deep_copy(), like.meta_stored};
  m.meta.lock.reset();
  m.meta.training_json = "{}";
  const PytorchInit drawn = pytorch_default_init(m, seed);
  if (init != nullptr) *init = drawn;
  m.net->eval();
  return m;
}

}  // namespace corelocker
