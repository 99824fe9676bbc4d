#include "train/trainer.h"

#include <chrono>
#include <cmath>
#include <mutex>

#include "util/error.h"

namespace corelocker {

double scheduled_lr(const std::string& schedule, double lr, int64_t t, int64_t total) {
  const double pi = 3.14159265358979323846;
  const double p = total > 1 ? double(t) / double(total - 1) : 1.0;
  if (schedule == "constant") return lr;
  if (schedule == "cosine") return 0.5 * lr * (1.0 + std::cos(pi * p));
  if (schedule == "onecycle") {
    // As torch.optim.lr_scheduler.OneCycleLR: cosine warm-up from lr/25 over the first 25%,
    // cosine annealing to lr/1e4 after.
    constexpr double kWarm = 0.25, kDiv = 25.0, kFinalDiv = 1e4;
    const double low = lr / kDiv, end = low / kFinalDiv;
    if (p < kWarm) return low + (lr - low) * 0.5 * (1.0 - std::cos(pi * p / kWarm));
    const double q = (p - kWarm) / (1.0 - kWarm);
    return end + (lr - end) * 0.5 * (1.0 + std::cos(pi * q));
  }
  throw UsageError("schedule '" + schedule + "': expected onecycle, cosine or constant");
}

torch::Tensor rng_state() { return at::detail::getDefaultCPUGenerator().get_state(); }

void set_rng_state(const torch::Tensor& state) {
  try {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
  } catch (const c10::Error& e) {
    throw Error(std::string("cannot restore the random generator state: ") +
                e.what_without_backtrace());
  }
}

void set_memory_format(torch::nn::Module& net, torch::MemoryFormat format) {
  torch::NoGradGuard no_grad;
  for (auto& p : net.parameters(/*recurse=*/true)) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(format));
  }
}

TrainSummary train(Network& net, const Dataset& data, const Preprocess& pp, const TrainOptions& o,
                   const std::function<void(const TrainProgress&)>& on_progress,
                   const std::function<bool()>& keep_going) {
  TrainHooks hooks;
  hooks.on_progress = on_progress;
  hooks.keep_going = keep_going;
  return train(net, data, pp, o, hooks);
}

TrainSummary train(Network& net, const Dataset& data, const Preprocess& pp, const TrainOptions& o,
                   const TrainHooks& hooks) {
  if (o.epochs < 0) throw UsageError("epochs " + std::to_string(o.epochs) + ": must be >= 0");
  if (o.start_epoch < 0 || o.start_epoch > o.epochs) {
    throw UsageError("start epoch " + std::to_string(o.start_epoch) + ": must be within 0.." +
                     std::to_string(o.epochs));
  }
  if (o.batch_size < 1)
    throw UsageError("batch size " + std::to_string(o.batch_size) + ": must be >= 1");
  if (!(o.lr > 0)) throw UsageError("learning rate " + std::to_string(o.lr) + ": must be > 0");
  if (data.size() < 1 && o.epochs > o.start_epoch) throw UsageError("training set is empty");
  scheduled_lr(o.schedule, o.lr, 0, 1);  // validates the name
  const int64_t n = data.size();
  const int64_t steps = (n + o.batch_size - 1) / o.batch_size;
  const int64_t total = steps * o.epochs;

  // Weight decay on weights only: normalisation parameters and biases are left alone.
  std::vector<torch::Tensor> decay, no_decay, frozen_params;
  std::vector<torch::Tensor> trained;  // in named order: what a group sums gradients of
  // By the names named_tensors gives (a TorchScript module's own dotted names), which the
  // structure, `trainable` and the masks use.
  const std::vector<NamedTensor> named_params = named_parameters_of(net);
  for (const auto& p : named_params) {
    if (o.trainable && !o.trainable(p.name)) {
      if (p.tensor.requires_grad()) frozen_params.push_back(p.tensor);
      continue;
    }
    (p.tensor.dim() <= 1 ? no_decay : decay).push_back(p.tensor);
    trained.push_back(p.tensor);
  }
  // Parameters that do not train need no gradient (saves the weight-gradient work); restored on
  // every way out.
  struct RequiresGradBack {
    std::vector<torch::Tensor>& params;
    ~RequiresGradBack() {
      for (auto& p : params) p.requires_grad_(true);
    }
  } requires_grad_back{frozen_params};
  for (auto& p : frozen_params) p.requires_grad_(false);
  // Update masks: the parameter, a 0/1 float mask, and the values the masked-out positions keep.
  struct Masked {
    torch::Tensor param, mask, frozen;
  };
  std::vector<Masked> masked;
  {
    std::map<std::string, torch::Tensor> by_name;
    for (const auto& p : named_params) by_name[p.name] = p.tensor;
    for (const auto& [name, mask] : o.update_masks) {
      auto found = by_name.find(name);
      if (found == by_name.end()) {
        throw UsageError("update mask names parameter '" + name +
                         "', which the network does not have");
      }
      const torch::Tensor* p = &found->second;
      if (mask.sizes() != p->sizes()) {
        throw UsageError("update mask for '" + name + "' has shape " + c10::str(mask.sizes()) +
                         ", the parameter has " + c10::str(p->sizes()));
      }
      masked.push_back({*p, mask.ne(0).to(p->scalar_type()), torch::Tensor()});
    }
  }
  // An optimizer with no parameters at all would throw deep inside LibTorch; say why instead.
  if (decay.empty() && no_decay.empty()) {
    if (o.epochs > 0) throw UsageError("no parameter is trainable");
    return TrainSummary{};
  }
  if (o.optimizer != "sgd" && o.optimizer != "adam")
    throw UsageError("optimizer '" + o.optimizer + "': expected sgd or adam");
  const bool adam = o.optimizer == "adam";
  auto options_for = [&](double decay_rate) -> std::unique_ptr<torch::optim::OptimizerOptions> {
    if (adam)
      return std::make_unique<torch::optim::AdamOptions>(
          torch::optim::AdamOptions(o.lr).weight_decay(decay_rate));
    return std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(o.lr)
                                                          .momentum(o.momentum)
                                                          .nesterov(o.momentum > 0)
                                                          .weight_decay(decay_rate));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!decay.empty()) groups.emplace_back(decay, options_for(o.weight_decay));
  if (!no_decay.empty()) groups.emplace_back(no_decay, options_for(0.0));
  std::unique_ptr<torch::optim::Optimizer> optimizer_owner;
  if (adam) {
    optimizer_owner = std::make_unique<torch::optim::Adam>(groups, torch::optim::AdamOptions(o.lr));
  } else {
    optimizer_owner = std::make_unique<torch::optim::SGD>(groups, torch::optim::SGDOptions(o.lr));
  }
  torch::optim::Optimizer& optimizer = *optimizer_owner;
  Collective* const group =
      hooks.collective != nullptr && hooks.collective->size() > 1 ? hooks.collective : nullptr;
  std::vector<torch::Tensor> statistics;  // averaged over a group at every epoch's end
  if (group) {
    for (const auto& t : named_tensors(net)) {
      if (t.is_buffer && t.tensor.is_floating_point()) statistics.push_back(t.tensor);
    }
  }
  // A fresh run seeds the global generator; a resumed one goes on with the generator state that
  // hooks.restore brought back (see rng_state), so it sees the batches an uninterrupted run would.
  if (o.start_epoch == 0) torch::manual_seed(o.seed);
  if (hooks.restore) hooks.restore(optimizer);

  // oneDNN convolutions run about twice as fast on channels-last tensors on CPU; weights go
  // back to the standard layout afterwards, which the rest of the library relies on.
  set_memory_format(net, torch::MemoryFormat::ChannelsLast);
  for (auto& m : masked) m.frozen = m.param.detach().clone();  // after the layout change
  net.train();
  if (o.freeze_bn_stats) freeze_batchnorm_statistics(net);
  TrainSummary summary;
  summary.epochs = o.start_epoch;
  const auto start = std::chrono::steady_clock::now();
  auto finish = [&] {
    summary.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    set_memory_format(net, torch::MemoryFormat::Contiguous);
    net.eval();
    return summary;
  };
  int64_t global_step = steps * o.start_epoch;
  int64_t run_steps = 0, run_images = 0;  // in this call (for speed and ETA)
  for (int epoch = o.start_epoch + 1; epoch <= o.epochs; ++epoch) {
    auto perm = torch::randperm(n, torch::kInt64);
    double loss_sum = 0.0;
    int64_t correct = 0, seen = 0;
    bool stop = false;  // a group's: some rank asked to stop at this step
    for (int64_t s = 0; s < steps; ++s) {
      const int64_t b = std::min(o.batch_size, n - s * o.batch_size);
      auto idx = perm.narrow(0, s * o.batch_size, b);
      // A group's ranks augment the whole batch alike (their generators stay in step), then each
      // takes its slice.
      auto x = preprocess_batch(data.images.index_select(0, idx), pp, o.augment, o.flip);
      auto y = data.labels.index_select(0, idx);
      int64_t lo = 0, hi = b;
      if (group) {
        lo = b * group->rank() / group->size();
        hi = b * (group->rank() + 1) / group->size();
        x = x.narrow(0, lo, hi - lo);
        y = y.narrow(0, lo, hi - lo);
      }
      x = x.contiguous(torch::MemoryFormat::ChannelsLast);
      const double lr = scheduled_lr(o.schedule, o.lr, global_step, total);
      for (auto& g : optimizer.param_groups()) g.options().set_lr(lr);
      optimizer.zero_grad();
      double step_loss = 0.0;  // summed over the batch's images
      int64_t step_correct = 0;
      if (hi > lo) {
        auto logits = net.forward(x);
        auto loss = torch::nn::functional::cross_entropy(logits, y);
        // A slice's mean loss, weighted by its share of the batch: the ranks' gradients add up
        // to the gradient of the batch's mean loss.
        if (group) loss = loss * (double(hi - lo) / double(b));
        loss.backward();
        step_loss = loss.item<double>() * (group ? double(b) : double(hi - lo));
        step_correct = logits.argmax(1).eq(y).sum().item<int64_t>();
      }
      if (group) {
        std::vector<torch::Tensor> sums;
        sums.reserve(trained.size() + 1);
        for (auto& p : trained) {
          if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
          sums.push_back(p.grad());
        }
        const bool stopping = hooks.keep_going && !hooks.keep_going();
        // float32, to share the last gradients' bucket: exact for the counts, 7 digits of loss.
        sums.push_back(torch::tensor({step_loss, double(step_correct), stopping ? 1.0 : 0.0},
                                     torch::kFloat32));
        const auto sync_start = std::chrono::steady_clock::now();
        group->sum(sums);
        summary.sync_seconds +=
            std::chrono::duration<double>(std::chrono::steady_clock::now() - sync_start).count();
        const auto totals = sums.back();
        step_loss = totals[0].item<double>();
        step_correct = static_cast<int64_t>(std::llround(totals[1].item<double>()));
        stop = totals[2].item<double>() > 0.0;
      }
      for (auto& m : masked) {
        if (m.param.grad().defined()) m.param.grad().mul_(m.mask);
      }
      optimizer.step();
      if (!masked.empty()) {
        torch::NoGradGuard no_grad;
        for (auto& m : masked) m.param.copy_(torch::where(m.mask.ne(0), m.param, m.frozen));
      }
      ++global_step;
      ++run_steps;
      run_images += b;
      loss_sum += step_loss;
      correct += step_correct;
      seen += b;
      if (hooks.on_progress) {
        const double elapsed =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        TrainProgress p;
        p.epoch = epoch;
        p.epochs = o.epochs;
        p.step = s + 1;
        p.steps = steps;
        p.loss = loss_sum / double(seen);
        p.accuracy = 100.0 * double(correct) / double(seen);
        p.lr = lr;
        p.images_per_second = double(run_images) / std::max(elapsed, 1e-9);
        p.eta_seconds = elapsed / double(run_steps) * double(total - global_step);
        p.epoch_done = s + 1 == steps;
        hooks.on_progress(p);
      }
      if (group) {
        if (stop && s + 1 < steps) return finish();
      } else if (hooks.keep_going && !hooks.keep_going() && s + 1 < steps) {
        return finish();
      }
    }
    if (group) {
      group->sum(statistics);
      torch::NoGradGuard no_grad;
      for (auto& t : statistics) t.div_(group->size());
    }
    summary.epochs = epoch;
    summary.final_loss = loss_sum / double(std::max<int64_t>(seen, 1));
    summary.final_train_accuracy = 100.0 * double(correct) / double(std::max<int64_t>(seen, 1));
    if (hooks.on_epoch_end) {
      set_memory_format(net, torch::MemoryFormat::Contiguous);
      hooks.on_epoch_end(epoch, optimizer);
      set_memory_format(net, torch::MemoryFormat::ChannelsLast);
    }
    if (group ? stop : hooks.keep_going && !hooks.keep_going()) return finish();
  }
  return finish();
}

}  // namespace corelocker
