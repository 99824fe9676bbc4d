#include "test_support.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstring>
#include <stdexcept>

#include "attacks/harness.h"
#include "cli/allocator.h"
#include "locking/lock.h"
#include "models/torchscript.h"
#include "train/trainer.h"
#include "util/atomic_file.h"

namespace corelocker::testing {

namespace {
// The library runs here with the malloc settings the corelocker binaries start with: glibc's
// defaults map and unmap every large tensor, which made the detector tests spend most of their
// time in the kernel (page faults) and run several times longer than `corelocker detect`.
const bool kAllocatorTuned = (cli::tune_allocator(), true);
}  // namespace

LoadedModel fresh_tiny(uint64_t seed, int64_t width) {
  torch::manual_seed(seed);
  ModelMeta meta = new_model_meta("tinycnn", "fashion-mnist");
  meta.options["width"] = width;
  LoadedModel m = create_model(meta);
  torch::NoGradGuard no_grad;
  for (auto& t : named_tensors(*m.net)) {
    if (t.name.rfind("bn", 0) == 0 && !t.is_buffer) t.tensor.uniform_(-1.0, 1.0);
  }
  return m;
}

LoadedModel clone(LoadedModel& m) {
  if (m.meta.arch == kTorchScriptArch) return copy_model(m);  // no architecture to rebuild
  LoadedModel c = create_model(m.meta);
  c.meta = m.meta;
  torch::NoGradGuard no_grad;
  auto src = named_tensors(*m.net);
  auto dst = named_tensors(*c.net);
  for (size_t i = 0; i < src.size(); ++i) dst[i].tensor.copy_(src[i].tensor);
  return c;
}

LoadedModel locked_tiny(uint64_t seed, double ratio) {
  LoadedModel m = fresh_tiny(seed);
  LockOptions o;
  o.ratio = ratio;
  lock_model(m, o);
  return m;
}

torch::Tensor tensor_of(LoadedModel& m, const std::string& name) {
  for (auto& t : named_tensors(*m.net)) {
    if (t.name == name) return t.tensor;
  }
  throw std::runtime_error("no tensor " + name);
}

const Dataset& fashion_train() {
  static const Dataset d = load_dataset("fashion-mnist", "", Split::kTrain);
  return d;
}

LoadedModel trained_resnet() {
  const std::string dir = CORELOCKER_TEST_CACHE;
  const std::string path = dir + "/resnet20-fmnist12k-e2-s7.ckpt";
  std::system(("mkdir -p '" + dir + "'").c_str());
  const int lock_fd = ::open((path + ".lock").c_str(), O_CREAT | O_RDWR, 0644);
  ::flock(lock_fd, LOCK_EX);
  if (!file_exists(path)) {
    torch::set_num_threads(2);
    torch::manual_seed(7);
    LoadedModel m = create_model(new_model_meta("resnet20", "fashion-mnist"));
    Dataset train_data = subset(load_dataset("fashion-mnist", "", Split::kTrain), 12000, 7);
    TrainOptions o;
    o.epochs = 2;
    o.seed = 7;
    train(*m.net, train_data, m.meta.preprocess, o);
    save_model(path, m);
  }
  ::flock(lock_fd, LOCK_UN);
  ::close(lock_fd);
  return load_model(path);
}

Dataset fmnist_test(int64_t n) {
  static Dataset test = load_dataset("fashion-mnist", "", Split::kTest);
  return select(test, torch::arange(std::min<int64_t>(n, test.size()), torch::kInt64));
}

bool same_tensors(LoadedModel& a, LoadedModel& b) {
  auto ta = named_tensors(*a.net), tb = named_tensors(*b.net);
  if (ta.size() != tb.size()) return false;
  for (size_t i = 0; i < ta.size(); ++i) {
    if (ta[i].name != tb[i].name || !ta[i].tensor.equal(tb[i].tensor)) return false;
    // equal() treats -0.0 == 0.0; compare bytes too.
    auto x = ta[i].tensor.contiguous(), y = tb[i].tensor.contiguous();
    if (std::memcmp(x.data_ptr(), y.data_ptr(), x.numel() * x.element_size()) != 0) return false;
  }
  return true;
}

}  // namespace corelocker::testing
