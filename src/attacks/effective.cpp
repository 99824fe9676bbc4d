#include "attacks/effective.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "attacks/attacks.h"
#include "distributed/collective.h"
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
        out.consider(out.reestimated->top1, "bn re-estimation");
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
      out.consider(p.eval.top1, ratio_label(ratio));
      out.pruned.push_back(p);
    }
  } catch (...) {
    snapshot.restore(model);
    throw;
  }
  return out;
}

}  // namespace corelocker

namespace corelocker {
namespace {

// One measurement of a shared evaluation: the model as it is, after re-estimation, or pruned.
struct Variant {
  enum Kind { kPlain, kReestimated, kPruned } kind = kPlain;
  double prune_ratio = 0.0;
};

// Test images [begin, begin + count) of one slice; slices start at multiples of the batch size,
// so each batch holds the same images as in a one-process evaluation.
struct Slice {
  int64_t begin = 0, count = 0;
};

std::vector<Slice> batch_slices(int64_t n, int64_t batch_size, int ranks) {
  if (batch_size < 1)
    throw UsageError("batch size " + std::to_string(batch_size) + ": must be at least 1");
  const int64_t batches = (n + batch_size - 1) / batch_size;
  const int64_t k = std::max<int64_t>(1, std::min<int64_t>(ranks, batches));
  std::vector<Slice> out;
  for (int64_t s = 0; s < k; ++s) {
    const int64_t first = s * batches / k * batch_size;
    const int64_t end = std::min(n, (s + 1) * batches / k * batch_size);
    out.push_back({first, end - first});
  }
  return out;
}

Dataset slice_of(const Dataset& data, const Slice& s) {
  Dataset out = data;
  out.images = data.images.narrow(0, s.begin, s.count);
  out.labels = data.labels.narrow(0, s.begin, s.count);
  return out;
}

// Hit counts recovered from an EvalResult: top1 = 100 * hits / n exactly as HitCounter divides,
// so rounding top1 * n / 100 gives the integer back.
nlohmann::json hits_json(const EvalResult& e) {
  const double n = double(e.n);
  return {{"hit1", std::llround(e.top1 * n / 100.0)},
          {"hit3", std::llround(e.top3 * n / 100.0)},
          {"n", e.n},
          {"seconds", e.seconds}};
}

// Runs the jobs of `parts` (variant x slice) this rank takes, then gathers every job's answer on
// every rank. An answer holds the slice's hits, or "note" (re-estimation impossible, as the
// one-process evaluation records it), or "error".
std::vector<nlohmann::json> run_shared(Collective& group, const std::string& name, size_t count,
                                       const std::function<nlohmann::json(size_t)>& run_job) {
  const Collective::JobQueue queue = group.open_queue(name, int64_t(count));
  for (int64_t j; (j = group.next_job(queue)) >= 0;) {
    nlohmann::json answer;
    try {
      answer = run_job(size_t(j));
    } catch (const UsageError& e) {
      group.post_result(queue, j, nlohmann::json{{"error", e.what()}, {"usage", true}}.dump());
      throw;
    } catch (const std::exception& e) {
      group.post_result(queue, j, nlohmann::json{{"error", e.what()}}.dump());
      throw;
    }
    group.post_result(queue, j, answer.dump());
  }
  std::vector<nlohmann::json> answers;
  for (size_t j = 0; j < count; ++j) {
    answers.push_back(nlohmann::json::parse(group.result(queue, int64_t(j))));
    const auto& a = answers.back();
    if (a.contains("error")) {
      const std::string what =
          "another rank's part of the evaluation failed: " + a["error"].get<std::string>();
      if (a.value("usage", false)) throw UsageError(what);
      throw Error(what);
    }
  }
  // No rank leaves while another still reads the answers from the store rank 0 may serve.
  group.barrier();
  return answers;
}

// The sums of one variant's slices, as HitCounter would give them over the whole test set.
EvalResult add_up(const std::vector<nlohmann::json>& answers, size_t first, size_t slices) {
  int64_t hit1 = 0, hit3 = 0, n = 0;
  double seconds = 0.0;
  for (size_t s = first; s < first + slices; ++s) {
    hit1 += answers[s].at("hit1").get<int64_t>();
    hit3 += answers[s].at("hit3").get<int64_t>();
    n += answers[s].at("n").get<int64_t>();
    seconds += answers[s].at("seconds").get<double>();
  }
  EvalResult r;
  r.n = n;
  r.top1 = n ? 100.0 * double(hit1) / double(n) : 0.0;
  r.top3 = n ? 100.0 * double(hit3) / double(n) : 0.0;
  r.seconds = seconds;
  return r;
}

}  // namespace

EffectiveEval evaluate_effective(LoadedModel& model, const Dataset& test, const Dataset& unlabelled,
                                 const EffectiveOptions& options, Collective& group) {
  EffectiveEval out;
  // The variants in the order the one-process evaluation considers them.
  std::vector<Variant> variants = {{Variant::kPlain}};
  if (unlabelled.size() == 0) {
    out.reestimate_note = "no unlabelled images given";
  } else if (batchnorm_buffers(model).empty()) {
    out.reestimate_note = "the model has no BatchNorm statistics";
  } else {
    variants.push_back({Variant::kReestimated});
  }
  for (double r : options.prune_ratios) variants.push_back({Variant::kPruned, r});
  const std::vector<Slice> slices = batch_slices(test.size(), options.batch_size, group.size());

  Snapshot snapshot(model);
  auto run_job = [&](size_t j) {
    const Variant& v = variants[j / slices.size()];
    const Dataset part = slice_of(test, slices[j % slices.size()]);
    nlohmann::json answer;
    try {
      if (v.kind == Variant::kReestimated) {
        int64_t images = 0;
        try {
          images = reestimate_batchnorm(model, unlabelled, options.reestimate_batch).images;
        } catch (const UsageError&) {
          throw;
        } catch (const Error& e) {
          snapshot.restore(model);
          return nlohmann::json{{"note", e.what()}};
        }
        answer = hits_json(evaluate(*model.net, part, model.meta.preprocess, options.batch_size));
        answer["images"] = images;
      } else {
        if (v.kind == Variant::kPruned) prune_smallest(model, v.prune_ratio);
        answer = hits_json(evaluate(*model.net, part, model.meta.preprocess, options.batch_size));
      }
    } catch (...) {
      snapshot.restore(model);
      throw;
    }
    snapshot.restore(model);
    return answer;
  };
  const auto answers = run_shared(group, "evaluation", variants.size() * slices.size(), run_job);

  for (size_t v = 0; v < variants.size(); ++v) {
    const size_t first = v * slices.size();
    switch (variants[v].kind) {
      case Variant::kPlain:
        out.plain = add_up(answers, first, slices.size());
        out.top1_effective = out.plain.top1;
        break;
      case Variant::kReestimated:
        if (answers[first].contains("note")) {
          out.reestimate_note = answers[first]["note"].get<std::string>();
        } else {
          out.reestimate_images = answers[first].at("images").get<int64_t>();
          out.reestimated = add_up(answers, first, slices.size());
          out.consider(out.reestimated->top1, "bn re-estimation");
        }
        break;
      case Variant::kPruned: {
        PrunedEval p{variants[v].prune_ratio, add_up(answers, first, slices.size())};
        out.consider(p.eval.top1, ratio_label(p.ratio));
        out.pruned.push_back(p);
        break;
      }
    }
  }
  return out;
}

EvalResult evaluate_shared(LoadedModel& model, const Dataset& test, int64_t batch_size,
                           Collective& group) {
  const std::vector<Slice> slices = batch_slices(test.size(), batch_size, group.size());
  const auto answers = run_shared(group, "evaluation", slices.size(), [&](size_t j) {
    return hits_json(
        evaluate(*model.net, slice_of(test, slices[j]), model.meta.preprocess, batch_size));
  });
  return add_up(answers, 0, slices.size());
}

nlohmann::json effective_to_json(const EffectiveEval& e) {
  using Json = nlohmann::json;
  Json pruned = Json::object();
  for (const auto& p : e.pruned) {
    char ratio[32];
    std::snprintf(ratio, sizeof ratio, "%.2f", p.ratio);
    pruned[ratio] = p.eval.top1;
  }
  Json j = {{"top1", e.plain.top1},
            {"top3", e.plain.top3},
            {"images", e.plain.n},
            {"top1_reestimated", e.reestimated ? Json(e.reestimated->top1) : Json()},
            {"reestimate_images", e.reestimate_images},
            {"top1_pruned", pruned},
            {"top1_effective", e.top1_effective},
            {"effective_from", e.worst}};
  if (!e.reestimated) j["reestimate_note"] = e.reestimate_note;
  return j;
}

}  // namespace corelocker
