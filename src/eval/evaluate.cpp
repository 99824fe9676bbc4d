#include "eval/evaluate.h"

#include <chrono>

#include "util/error.h"

namespace corelocker {

EvalResult evaluate(Network& net, const Dataset& data, const Preprocess& pp, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  const bool was_training = net.is_training();
  net.eval();
  const auto start = std::chrono::steady_clock::now();
  int64_t hit1 = 0, hit3 = 0;
  const int64_t n = data.size();
  for (int64_t i = 0; i < n; i += batch_size) {
    const int64_t b = std::min(batch_size, n - i);
    auto x = preprocess_batch(data.images.narrow(0, i, b), pp, /*augment=*/false);
    auto y = data.labels.narrow(0, i, b);
    torch::Tensor logits;
    try {
      logits = net.forward(x);
    } catch (const c10::Error& e) {
      throw Error("forward pass failed on input of shape " + c10::str(x.sizes()) + ": " + e.what_without_backtrace());
    }
    const int64_t k = std::min<int64_t>(3, logits.size(1));
    auto top = std::get<1>(logits.topk(k, /*dim=*/1));
    auto match = top.eq(y.unsqueeze(1));
    hit1 += match.select(1, 0).sum().item<int64_t>();
    hit3 += match.any(1).sum().item<int64_t>();
  }
  if (was_training) net.train();
  EvalResult r;
  r.n = n;
  r.top1 = n ? 100.0 * double(hit1) / double(n) : 0.0;
  r.top3 = n ? 100.0 * double(hit3) / double(n) : 0.0;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return r;
}

}  // namespace corelocker
