#include "eval/evaluate.h"

#include <chrono>

#include "util/error.h"

namespace corelocker {

void HitCounter::add(const torch::Tensor& logits, const torch::Tensor& labels) {
  const int64_t k = std::min<int64_t>(3, logits.size(1));
  auto top = std::get<1>(logits.topk(k, /*dim=*/1));
  auto match = top.eq(labels.unsqueeze(1));
  hit1_ += match.select(1, 0).sum().item<int64_t>();
  hit3_ += match.any(1).sum().item<int64_t>();
  n_ += labels.size(0);
}

EvalResult HitCounter::result() const {
  EvalResult r;
  r.n = n_;
  r.top1 = n_ ? 100.0 * double(hit1_) / double(n_) : 0.0;
  r.top3 = n_ ? 100.0 * double(hit3_) / double(n_) : 0.0;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  return r;
}

EvalResult evaluate(Network& net, const Dataset& data, const Preprocess& pp, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  const bool was_training = net.is_training();
  net.eval();
  HitCounter hits;
  const int64_t n = data.size();
  for (int64_t i = 0; i < n; i += batch_size) {
    const int64_t b = std::min(batch_size, n - i);
    auto x = preprocess_batch(data.images.narrow(0, i, b), pp, /*augment=*/false);
    torch::Tensor logits;
    try {
      logits = net.forward(x);
    } catch (const c10::Error& e) {
      throw Error("forward pass failed on input of shape " + c10::str(x.sizes()) + ": " +
                  e.what_without_backtrace());
    }
    hits.add(logits, data.labels.narrow(0, i, b));
  }
  if (was_training) net.train();
  return hits.result();
}

}  // namespace corelocker
