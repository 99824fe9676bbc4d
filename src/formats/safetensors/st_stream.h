// Internal to the safetensors lock pieces (src/formats/safetensors/st_*.cpp): the per-tensor
// hasher, the helper thread that hashes (and copies and scans) beside the passes, and the ring of
// chunk buffers handed between them.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "formats/safetensors/safetensors_lock.h"
#include "util/hash.h"

namespace corelocker::st_detail {

constexpr uint64_t kRelease = uint64_t{64} << 20;  // bytes hashed between giving pages back
constexpr uint64_t kChunk = uint64_t{1}
                            << 20;  // bytes copied and written at a time (stays in cache)
constexpr uint64_t kWindow = uint64_t{8} << 20;  // bytes scored at a time while they are hashed
constexpr size_t kRing = 8;  // chunk buffers in flight between writer and hasher
constexpr uint64_t kKeepSampled = uint64_t{256} << 20;  // layers whose sampled pages stay mapped

inline unsigned resolve_threads(unsigned threads) {
  return threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency());
}

// The per-tensor digest of a fingerprint scheme.
class TensorHasher {
 public:
  explicit TensorHasher(StFingerprintScheme scheme) : v2_(scheme == StFingerprintScheme::kV2) {}
  void update(const uint8_t* p, uint64_t n) {
    if (v2_)
      b3_.update(p, n);
    else
      b2_.update(p, n);
  }
  Digest finish() { return v2_ ? b3_.finish() : b2_.finish(); }

 private:
  bool v2_;
  Hasher b2_;
  Blake3Hasher b3_;
};

// Hashes byte ranges, and runs other jobs (a copy and a scan), on a helper thread, in the order
// they are queued, so that a pass can score or write while the bytes it has handed over are
// hashed. Without a thread it works at once. What a job uses must stay valid until its ticket is
// done (wait). The destructor waits for every queued job, so jobs may use whatever is declared
// before the hasher.
class BackgroundHasher {
 public:
  explicit BackgroundHasher(bool threaded) {
    if (threaded) worker_ = std::thread([this] { run(); });
  }
  ~BackgroundHasher() {
    if (!worker_.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }
  BackgroundHasher(const BackgroundHasher&) = delete;
  BackgroundHasher& operator=(const BackgroundHasher&) = delete;

  // Queues h.update(p, n); returns its ticket.
  uint64_t update(TensorHasher& h, const uint8_t* p, uint64_t n) {
    if (!worker_.joinable()) {
      h.update(p, n);
      return ++queued_;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back({&h, p, n, {}});
      ++queued_;
    }
    cv_.notify_all();
    return queued_;
  }
  // Queues fn(), which must not throw (a copy and a scan); returns its ticket.
  uint64_t call(std::function<void()> fn) {
    if (!worker_.joinable()) {
      fn();
      return ++queued_;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      jobs_.push_back({nullptr, nullptr, 0, std::move(fn)});
      ++queued_;
    }
    cv_.notify_all();
    return queued_;
  }
  // Blocks until the job of `ticket` (and every one before it) is done.
  void wait(uint64_t ticket) {
    if (!worker_.joinable()) return;
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ >= ticket; });
  }
  void wait_all() { wait(queued_); }

 private:
  struct Job {
    TensorHasher* h;  // nullptr: call fn
    const uint8_t* p;
    uint64_t n;
    std::function<void()> fn;
  };
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;  // stop_, and nothing left
      const Job job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      if (job.h != nullptr)
        job.h->update(job.p, job.n);  // neither libsodium's nor BLAKE3's update throws
      else
        job.fn();
      lock.lock();
      ++done_;
      cv_.notify_all();
    }
  }
  std::thread worker_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> jobs_;
  uint64_t queued_ = 0;  // written by the caller's thread only
  uint64_t done_ = 0;
  bool stop_ = false;
};

// Buffers for chunks in flight between this thread and the helper (which may fill, pick and hash
// them): a buffer is taken again only once the last job that uses it is done.
// Declare it before the hasher, whose destructor waits for the hashes that read the buffers.
class ChunkRing {
 public:
  ChunkRing() : bufs_(kRing), tickets_(kRing, 0) {}
  // The slot of a buffer of n bytes that no job queued on `hasher` still uses.
  size_t take(BackgroundHasher& hasher, uint64_t n) {
    next_ = (next_ + 1) % kRing;
    hasher.wait(tickets_[next_]);
    bufs_[next_].resize(n);
    return next_;
  }
  uint8_t* data(size_t slot) { return bufs_[slot].data(); }
  // Records the ticket of the last job that uses the buffer of `slot`.
  void hand_over(size_t slot, uint64_t ticket) { tickets_[slot] = ticket; }

 private:
  std::vector<std::vector<uint8_t>> bufs_;
  std::vector<uint64_t> tickets_;
  size_t next_ = 0;
};

}  // namespace corelocker::st_detail
