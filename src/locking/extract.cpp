#include "locking/extract.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <iterator>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "locking/decoys.h"
#include "locking/fingerprint.h"
#include "util/error.h"

namespace corelocker {
namespace {

DType to_dtype(const torch::Tensor& t, const std::string& name) {
  switch (t.scalar_type()) {
    case torch::kFloat32:
      return DType::kF32;
    case torch::kFloat64:
      return DType::kF64;
    case torch::kFloat16:
      return DType::kF16;
    case torch::kBFloat16:
      return DType::kBF16;
    default:
      throw Error("tensor '" + name + "' has dtype " + std::string(c10::toString(t.scalar_type())) +
                  ", only floating-point tensors can be locked");
  }
}

std::unordered_map<std::string, torch::Tensor*> by_name(std::vector<NamedTensor>& tensors) {
  std::unordered_map<std::string, torch::Tensor*> m;
  for (auto& t : tensors) m[t.name] = &t.tensor;
  return m;
}

torch::Tensor unit_view(const torch::Tensor& t, int64_t unit_size, const std::string& name) {
  if (!t.is_contiguous()) throw Error("tensor '" + name + "' is not contiguous");
  return t.detach().view({-1, unit_size});
}

}  // namespace

torch::ScalarType to_scalar_type(DType d) {
  switch (d) {
    case DType::kF32:
      return torch::kFloat32;
    case DType::kF64:
      return torch::kFloat64;
    case DType::kF16:
      return torch::kFloat16;
    case DType::kBF16:
      return torch::kBFloat16;
  }
  return torch::kFloat32;
}

ExtractionPlan plan_difference(const ExtractionPlan& larger, const ExtractionPlan& smaller) {
  ExtractionPlan out;
  out.units = larger.units - smaller.units;
  for (const auto& e : larger.entries) {
    const PlanEntry* s = nullptr;
    for (const auto& c : smaller.entries) {
      if (c.tensor == e.tensor) s = &c;
    }
    PlanEntry d{e.tensor, e.unit_size, {}};
    if (s == nullptr) {
      d.units = e.units;
    } else {
      std::set_difference(e.units.begin(), e.units.end(), s->units.begin(), s->units.end(),
                          std::back_inserter(d.units));
    }
    if (!d.units.empty()) out.entries.push_back(std::move(d));
  }
  return out;
}

namespace {

// Bytes a fingerprint hashes between two looks at how far it got.
constexpr uint64_t kFingerprintPiece = uint64_t{1} << 20;

// The fingerprint of tensors (contiguous, in fingerprint order) hashed on a thread of its own,
// which says how far it got in bytes of tensor data counted over the whole order: another thread
// may change what it has hashed. BLAKE2b is sequential, so a lock's two fingerprints (before and
// after) can only run side by side, one a little behind the other.
class FingerprintAhead {
 public:
  FingerprintAhead(const std::vector<const NamedTensor*>& order,
                   const std::vector<torch::Tensor>& contiguous)
      : thread_([this, &order, &contiguous] { run(order, contiguous); }) {}
  ~FingerprintAhead() {
    if (thread_.joinable()) thread_.join();
  }
  FingerprintAhead(const FingerprintAhead&) = delete;
  FingerprintAhead& operator=(const FingerprintAhead&) = delete;

  // Waits until the tensor data before `position` is hashed.
  void wait_past(uint64_t position) {
    std::unique_lock<std::mutex> lock(mutex_);
    hashed_changed_.wait(lock, [&] { return hashed_ >= position; });
  }
  // The fingerprint, once all is hashed. Throws what hashing threw.
  Digest finish() {
    thread_.join();
    if (error_) std::rethrow_exception(error_);
    return digest_;
  }

 private:
  void run(const std::vector<const NamedTensor*>& order,
           const std::vector<torch::Tensor>& contiguous) {
    try {
      FingerprintStream fp(order.size());
      uint64_t hashed = 0;
      for (size_t i = 0; i < order.size(); ++i) {
        const torch::Tensor& c = contiguous[i];
        fp.header(order[i]->name, c);
        const auto* data = static_cast<const uint8_t*>(c.data_ptr());
        const uint64_t nbytes = static_cast<uint64_t>(c.numel()) * c.element_size();
        for (uint64_t at = 0; at < nbytes; at += kFingerprintPiece) {
          const uint64_t n = std::min(kFingerprintPiece, nbytes - at);
          fp.bytes(data + at, n);
          publish(hashed += n);
        }
      }
      digest_ = fp.finish();
    } catch (...) {
      error_ = std::current_exception();
    }
    publish(UINT64_MAX);
  }
  void publish(uint64_t hashed) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      hashed_ = hashed;
    }
    hashed_changed_.notify_one();
  }

  std::mutex mutex_;
  std::condition_variable hashed_changed_;
  uint64_t hashed_ = 0;
  Digest digest_{};
  std::exception_ptr error_;
  std::thread thread_;  // last: starts once the members above exist
};

// The tensors of a fingerprint as it reads them (contiguous, on the CPU), made before a lock
// changes anything: those a plan names are the tensors themselves.
std::vector<torch::Tensor> contiguous_cpu(const std::vector<const NamedTensor*>& order) {
  std::vector<torch::Tensor> out;
  out.reserve(order.size());
  for (const NamedTensor* t : order) out.push_back(t->tensor.detach().cpu().contiguous());
  return out;
}

// Digest of tensors prepared by contiguous_cpu, as fingerprint() computes it.
Digest fingerprint_of(const std::vector<const NamedTensor*>& order,
                      const std::vector<torch::Tensor>& contiguous) {
  FingerprintStream fp(order.size());
  for (size_t i = 0; i < order.size(); ++i) {
    fp.header(order[i]->name, contiguous[i]);
    fp.bytes(contiguous[i].data_ptr(),
             static_cast<uint64_t>(contiguous[i].numel()) * contiguous[i].element_size());
  }
  return fp.finish();
}

// Whether a tensor the plan changes shares memory with another tensor (tied weights under two
// names): their bytes then change together, which a piece-by-piece pass cannot follow.
bool shares_memory(const std::vector<const NamedTensor*>& order,
                   const std::unordered_map<const NamedTensor*, size_t>& planned) {
  struct Span {
    uintptr_t begin, end;
    bool planned;
  };
  std::vector<Span> spans;
  for (const NamedTensor* t : order) {
    if (!t->tensor.has_storage() || t->tensor.storage().nbytes() == 0) continue;
    const auto begin = reinterpret_cast<uintptr_t>(t->tensor.storage().data());
    spans.push_back({begin, begin + t->tensor.storage().nbytes(), planned.count(t) > 0});
  }
  std::sort(spans.begin(), spans.end(),
            [](const Span& a, const Span& b) { return a.begin < b.begin; });
  for (size_t i = 0; i < spans.size(); ++i) {
    for (size_t j = i + 1; j < spans.size() && spans[j].begin < spans[i].end; ++j) {
      if (spans[i].planned || spans[j].planned) return true;
    }
  }
  return false;
}

// A place in a key entry's unit list: the unit, and its position (where its values go).
struct UnitCursor {
  UnitList::const_iterator at;
  size_t next;
};

}  // namespace

KeyFile extract_units_seeded(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                             const LockOptions& options, const ExtractionPlan* no_donors,
                             const uint64_t* seed, ExtractionPlan* spent) {
  torch::NoGradGuard no_grad;
  const std::vector<const NamedTensor*> order = fingerprint_order(tensors);
  KeyFile key;
  random_bytes(key.header.key_id.data(), key.header.key_id.size());
  key.header.criterion = options.criterion;
  key.header.fill = options.fill;
  key.header.scope = options.scope;
  key.header.include_io = options.include_io;
  key.header.random_bn_units = options.criterion == Criterion::kRandom && options.random_bn_units;
  key.header.ratio = options.ratio;
  key.header.seed = options.criterion == Criterion::kRandom ? options.seed : 0;
  key.header.units = static_cast<uint64_t>(plan.units);
  // Every entry is checked before anything changes; the key's entries follow the plan's.
  std::unordered_map<const NamedTensor*, size_t> entry_of;
  key.entries.reserve(plan.entries.size());
  {
    std::unordered_map<std::string, const NamedTensor*> named;
    for (const auto& t : tensors) named[t.name] = &t;
    for (size_t pi = 0; pi < plan.entries.size(); ++pi) {
      const PlanEntry& p = plan.entries[pi];
      auto it = named.find(p.tensor);
      if (it == named.end())
        throw Error("plan names tensor '" + p.tensor + "' which the model does not have");
      const torch::Tensor& t = it->second->tensor;
      KeyEntry e;
      e.tensor = p.tensor;
      e.dtype = to_dtype(t, p.tensor);
      if (!t.device().is_cpu()) {
        throw Error("tensor '" + p.tensor + "' is on " + t.device().str() +
                    ": corelocker locks CPU tensors");
      }
      for (auto d : t.sizes()) e.shape.push_back(static_cast<uint64_t>(d));
      const int64_t rows = unit_view(t, p.unit_size, p.tensor).size(0);
      if (!p.units.empty() && p.units.back() >= static_cast<uint64_t>(rows)) {
        throw Error("plan entry '" + p.tensor + "': unit " + std::to_string(p.units.back()) +
                    " out of range (" + std::to_string(rows) + " units)");
      }
      if (!entry_of.emplace(it->second, key.entries.size()).second) {
        throw Error("plan names tensor '" + p.tensor + "' twice");
      }
      e.unit_size = static_cast<uint64_t>(p.unit_size);
      if (spent != nullptr && options.fill == Fill::kZero) {
        e.units = std::move(spent->entries[pi].units);
      } else {
        e.units = p.units;
      }
      e.values.resize(e.units.size() * e.unit_size * t.element_size());
      key.entries.push_back(std::move(e));
    }
  }
  const std::vector<torch::Tensor> contiguous = contiguous_cpu(order);
  // Copies the key's units below row `end` of a tensor (from the entry's unit `at`, its `next`-th,
  // on) into the key, zeroing them in the model when `zero`.
  auto take_units = [](KeyEntry& e, uint8_t* data, uint64_t end, UnitCursor& c, bool zero) {
    const uint64_t unit_bytes = e.unit_size * dtype_size(e.dtype);
    for (const auto stop = e.units.end(); c.at != stop && *c.at < end; ++c.at, ++c.next) {
      uint8_t* unit = data + *c.at * unit_bytes;
      std::memcpy(e.values.data() + c.next * unit_bytes, unit, unit_bytes);
      if (zero) std::memset(unit, 0, unit_bytes);  // +0.0 in every dtype
    }
  };
  if (options.fill != Fill::kZero || shares_memory(order, entry_of)) {
    // One step after the other: every value into the key before anything changes (tensors that
    // share memory see each other's changes), then the fill, then the locked state's digest.
    key.header.original_fingerprint = fingerprint_of(order, contiguous);
    for (const auto& [t, i] : entry_of) {
      UnitCursor c{key.entries[i].units.begin(), 0};
      take_units(key.entries[i], static_cast<uint8_t*>(t->tensor.data_ptr()), UINT64_MAX, c, false);
    }
    if (options.fill == Fill::kZero) {
      for (const auto& [t, i] : entry_of) {
        const KeyEntry& e = key.entries[i];
        const uint64_t unit_bytes = e.unit_size * dtype_size(e.dtype);
        auto* data = static_cast<uint8_t*>(t->tensor.data_ptr());
        for (uint64_t u : e.units) std::memset(data + u * unit_bytes, 0, unit_bytes);
      }
    } else {
      uint64_t decoy_seed = 0;
      if (seed != nullptr) {
        decoy_seed = *seed;
      } else {
        random_bytes(&decoy_seed, sizeof decoy_seed);  // decoys must not be predictable
      }
      fill_decoys(tensors, plan, no_donors, options.fill, decoy_seed);
    }
    key.header.locked_fingerprint = fingerprint(tensors);
    return key;
  }
  // Zero fill: the original's fingerprint runs ahead on another thread; this one follows a piece
  // behind, moving each piece's units into the key and hashing the piece locked while it is in
  // cache.
  FingerprintAhead original(order, contiguous);
  FingerprintStream locked(order.size());
  uint64_t position = 0;
  for (size_t i = 0; i < order.size(); ++i) {
    const torch::Tensor& c = contiguous[i];
    const uint64_t nbytes = static_cast<uint64_t>(c.numel()) * c.element_size();
    // The model's own tensor when the plan names it.
    auto* data = static_cast<uint8_t*>(c.data_ptr());
    locked.header(order[i]->name, c);
    auto found = entry_of.find(order[i]);
    if (found == entry_of.end()) {
      locked.bytes(data, nbytes);
    } else {
      KeyEntry& e = key.entries[found->second];
      const uint64_t unit_bytes = e.unit_size * c.element_size();
      const uint64_t rows = unit_bytes == 0 ? 0 : nbytes / unit_bytes;
      const uint64_t piece_rows =
          std::max<uint64_t>(1, kFingerprintPiece / std::max<uint64_t>(unit_bytes, 1));
      UnitCursor cursor{e.units.begin(), 0};
      for (uint64_t r0 = 0; r0 < rows; r0 += piece_rows) {
        const uint64_t r1 = std::min(rows, r0 + piece_rows);
        original.wait_past(position + r1 * unit_bytes);
        take_units(e, data, r1, cursor, true);
        locked.bytes(data + r0 * unit_bytes, (r1 - r0) * unit_bytes);
      }
    }
    position += nbytes;
  }
  key.header.original_fingerprint = original.finish();
  key.header.locked_fingerprint = locked.finish();
  return key;
}

KeyFile extract_units(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                      const LockOptions& options, const ExtractionPlan* no_donors) {
  return extract_units_seeded(tensors, plan, options, no_donors, nullptr);
}

KeyFile extract_units(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                      const LockOptions& options, const ExtractionPlan* no_donors,
                      uint64_t decoy_seed) {
  return extract_units_seeded(tensors, plan, options, no_donors, &decoy_seed);
}

void restore_units(std::vector<NamedTensor>& tensors, const KeyFile& key) {
  torch::NoGradGuard no_grad;
  check_key_applies(fingerprint(tensors), key.header);
  auto named = by_name(tensors);
  // Check every entry before writing any of them.
  for (const auto& e : key.entries) {
    auto it = named.find(e.tensor);
    if (it == named.end())
      throw MismatchError("key entry '" + e.tensor + "': model has no such tensor");
    const torch::Tensor& t = *it->second;
    if (to_dtype(t, e.tensor) != e.dtype) {
      throw MismatchError("key entry '" + e.tensor + "': dtype " + to_string(e.dtype) +
                          ", tensor is " + c10::toString(t.scalar_type()));
    }
    std::vector<int64_t> shape(e.shape.begin(), e.shape.end());
    if (t.sizes() != c10::IntArrayRef(shape)) {
      throw MismatchError("key entry '" + e.tensor + "': shape " +
                          c10::str(c10::IntArrayRef(shape)) + ", tensor is " + c10::str(t.sizes()));
    }
  }
  for (const auto& e : key.entries) {
    // Unit by unit (no index tensor: the key's compact list is all the memory an unlock adds).
    const torch::Tensor t = named[e.tensor]->contiguous();
    const uint64_t unit_bytes = e.unit_size * dtype_size(e.dtype);
    auto* data = static_cast<uint8_t*>(t.data_ptr());
    size_t next = 0;
    for (const uint64_t u : e.units) {
      std::memcpy(data + u * unit_bytes, e.values.data() + next++ * unit_bytes, unit_bytes);
    }
    if (!t.is_same(*named[e.tensor])) named[e.tensor]->copy_(t);
  }
  check_key_restored(fingerprint(tensors), key.header);
}

}  // namespace corelocker
