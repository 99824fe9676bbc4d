#include "attacks/effective.h"

#include <ATen/CPUGeneratorImpl.h>

#include <array>
#include <cstdio>
#include <unordered_map>

#include "attacks/attacks.h"
#include "models/torchscript.h"
#include "util/error.h"

namespace corelocker {
namespace {

struct BnBuffers {
  std::string layer;
  torch::Tensor mean, var, count;  // count undefined when the layer does not track it
};

std::vector<BnBuffers> batchnorm_buffers(LoadedModel& model) {
  std::unordered_map<std::string, torch::Tensor> buffers;
  for (auto& t : named_tensors(*model.net)) {
    if (t.is_buffer) buffers[t.name] = t.tensor;
  }
  std::vector<BnBuffers> out;
  for (const auto& layer : model.net->structure()) {
    if (layer.kind != LayerKind::kBatchNorm) continue;
    auto mean = buffers.find(layer.name + ".running_mean");
    auto var = buffers.find(layer.name + ".running_var");
    if (mean == buffers.end() || var == buffers.end()) continue;  // no running statistics kept
    auto count = buffers.find(layer.name + ".num_batches_tracked");
    out.push_back({layer.name, mean->second, var->second,
                   count == buffers.end() ? torch::Tensor() : count->second});
  }
  return out;
}

void zero_stats(std::vector<BnBuffers>& bns, double var_value) {
  for (auto& b : bns) {
    b.mean.zero_();
    b.var.fill_(var_value);
    if (b.count.defined()) b.count.zero_();
  }
}

// Every parameter and buffer, to put back after each measurement.
class Snapshot {
 public:
  explicit Snapshot(LoadedModel& model) : training_(model.net->is_training()) {
    torch::NoGradGuard no_grad;
    for (auto& t : named_tensors(*model.net))
      saved_.emplace_back(t.tensor, t.tensor.detach().clone());
  }
  void restore(LoadedModel& model) {
    torch::NoGradGuard no_grad;
    for (auto& [live, copy] : saved_) live.detach().copy_(copy);
    model.net->train(training_);
  }

 private:
  bool training_;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> saved_;
};

std::string ratio_label(double r) {
  char b[32];
  std::snprintf(b, sizeof b, "prune %.2f", r);
  return b;
}

}  // namespace

ReestimateResult reestimate_batchnorm(LoadedModel& model, const Dataset& data, int64_t batch_size) {
  if (batch_size < 1)
    throw UsageError("batch size " + std::to_string(batch_size) + ": must be >= 1");
  int64_t next = 0;
  return reestimate_batchnorm(model, [&]() -> torch::Tensor {
    if (next >= data.size()) return {};
    const int64_t n = std::min(batch_size, data.size() - next);
    next += n;
    return preprocess_batch(data.images.narrow(0, next - n, n), model.meta.preprocess,
                            /*augment=*/false);
  });
}

ReestimateResult reestimate_batchnorm(LoadedModel& model, const BatchSource& next_batch) {
  std::vector<BnBuffers> bns = batchnorm_buffers(model);
  if (bns.empty()) {
    throw UsageError("model '" + model.meta.arch +
                     "' has no BatchNorm layer with running statistics to re-estimate");
  }
  torch::NoGradGuard no_grad;
  const bool was_training = model.net->is_training();
  // The generator is reseeded so that both passes over the first batch draw the same dropout
  // masks; the caller's random state comes back afterwards.
  auto generator = at::detail::getDefaultCPUGenerator();
  const auto rng_state = generator.get_state();
  std::vector<torch::Tensor> sum_mean, sum_var;
  std::vector<double> momentum(bns.size(), 0.0);
  for (const auto& b : bns) {
    sum_mean.push_back(torch::zeros_like(b.mean, torch::kFloat64));
    sum_var.push_back(torch::zeros_like(b.var, torch::kFloat64));
  }
  std::vector<std::array<torch::Tensor, 3>> saved;
  for (const auto& b : bns) {
    saved.push_back(
        {b.mean.clone(), b.var.clone(), b.count.defined() ? b.count.clone() : torch::Tensor()});
  }
  ReestimateResult r;
  model.net->train();
  try {
    for (torch::Tensor x = next_batch(); x.defined(); x = next_batch()) {
      const int64_t n = x.size(0);
      const uint64_t batch_seed = 0x5eed0000ULL + static_cast<uint64_t>(r.batches);
      zero_stats(bns, 0.0);
      generator.set_current_seed(batch_seed);
      model.net->forward(x);
      if (r.batches == 0) {
        // Left behind: mean m*mu, variance m*sigma^2 from 0, or (1-m) + m*sigma^2 from 1.
        std::vector<torch::Tensor> from_zero;
        for (const auto& b : bns) from_zero.push_back(b.var.to(torch::kFloat64, false, true));
        std::vector<torch::Tensor> means;
        for (const auto& b : bns) means.push_back(b.mean.to(torch::kFloat64, false, true));
        zero_stats(bns, 1.0);
        generator.set_current_seed(batch_seed);
        model.net->forward(x);
        for (size_t i = 0; i < bns.size(); ++i) {
          const double m =
              1.0 - (bns[i].var.to(torch::kFloat64) - from_zero[i]).mean().item<double>();
          if (!(m > 1e-6 && m <= 1.0 + 1e-4)) {
            throw Error("BatchNorm layer '" + bns[i].layer +
                        "' does not update its running statistics in training mode "
                        "(momentum measured " +
                        std::to_string(m) +
                        "; a traced TorchScript graph fixes evaluation mode): its statistics "
                        "cannot be re-estimated "
                        "by running the model");
          }
          momentum[i] = m;
          sum_mean[i] += means[i] / m;
          sum_var[i] += from_zero[i] / m;
        }
      } else {
        for (size_t i = 0; i < bns.size(); ++i) {
          sum_mean[i] += bns[i].mean.to(torch::kFloat64) / momentum[i];
          sum_var[i] += bns[i].var.to(torch::kFloat64) / momentum[i];
        }
      }
      ++r.batches;
      r.images += n;
    }
    if (r.batches == 0) throw UsageError("no images to re-estimate BatchNorm statistics on");
  } catch (...) {
    for (size_t i = 0; i < bns.size(); ++i) {
      bns[i].mean.copy_(saved[i][0]);
      bns[i].var.copy_(saved[i][1]);
      if (bns[i].count.defined()) bns[i].count.copy_(saved[i][2]);
    }
    generator.set_state(rng_state);
    model.net->train(was_training);
    throw;
  }
  generator.set_state(rng_state);
  for (size_t i = 0; i < bns.size(); ++i) {
    bns[i].mean.copy_(sum_mean[i] / double(r.batches));
    bns[i].var.copy_(sum_var[i] / double(r.batches));
    if (bns[i].count.defined()) bns[i].count.fill_(r.batches);
  }
  model.net->train(was_training);
  r.layers = static_cast<int64_t>(bns.size());
  return r;
}

std::string reestimation_unavailable(LoadedModel& model) {
  if (batchnorm_buffers(model).empty())
    return "the model has no BatchNorm layer with running statistics";
  const auto* script = dynamic_cast<const TorchScriptNetwork*>(model.net.get());
  if (script == nullptr || script->batchnorms_fixed_in_eval().empty()) return "";
  const auto& fixed = script->batchnorms_fixed_in_eval();
  const std::string more =
      fixed.size() > 1 ? " and " + std::to_string(fixed.size() - 1) + " more" : "";
  return "the traced TorchScript graph fixes evaluation mode in BatchNorm layer '" + fixed.front() +
         "'" + more + ": running statistics cannot be re-estimated by running the model";
}

Dataset reestimation_images(const Dataset& train_split, const EffectiveOptions& options) {
  if (options.reestimate_images <= 0) return Dataset{};
  return subset(train_split, options.reestimate_images, options.seed);
}

EffectiveEval evaluate_effective(LoadedModel& model, const Dataset& test, const Dataset& unlabelled,
                                 const EffectiveOptions& options) {
  EffectiveEval out;
  out.plain = evaluate(*model.net, test, model.meta.preprocess, options.batch_size);
  out.top1_effective = out.plain.top1;
  auto consider = [&](double top1, const std::string& what) {
    if (top1 > out.top1_effective) {
      out.top1_effective = top1;
      out.worst = what;
    }
  };
  Snapshot snapshot(model);
  try {
    if (unlabelled.size() == 0) {
      out.reestimate_note = "no unlabelled images given";
    } else if (batchnorm_buffers(model).empty()) {
      out.reestimate_note = "the model has no BatchNorm statistics";
    } else {
      try {
        out.reestimate_images =
            reestimate_batchnorm(model, unlabelled, options.reestimate_batch).images;
        out.reestimated = evaluate(*model.net, test, model.meta.preprocess, options.batch_size);
        consider(out.reestimated->top1, "bn re-estimation");
      } catch (const UsageError&) {
        throw;
      } catch (const Error& e) {
        out.reestimate_note = e.what();
      }
      snapshot.restore(model);
    }
    for (double ratio : options.prune_ratios) {
      prune_smallest(model, ratio);
      PrunedEval p{ratio, evaluate(*model.net, test, model.meta.preprocess, options.batch_size)};
      snapshot.restore(model);
      consider(p.eval.top1, ratio_label(ratio));
      out.pruned.push_back(p);
    }
  } catch (...) {
    snapshot.restore(model);
    throw;
  }
  return out;
}

}  // namespace corelocker
