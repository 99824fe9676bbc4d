// What data-parallel training and distributed experiment grids ask of a group of processes:
// sums of tensors, a barrier, a check that every process was given the same
// work, and a shared counter. Group (distributed/group.h) implements it on torch.distributed's
// Gloo backend; the trainer and the grids see only this interface.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace corelocker {

class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;  // 0 .. size() - 1
  virtual int size() const = 0;
  // Sums each tensor over the ranks, in place. Every rank passes the same list (count, shapes,
  // dtypes, order). Throws Error naming a rank that is gone.
  virtual void sum(std::vector<torch::Tensor>& tensors) = 0;
  // Returns once every rank has called it.
  virtual void barrier() = 0;
  // Checks that every rank gives the same `value` for `what`. Throws UsageError on every rank
  // naming the first rank that differs from rank 0 and both values.
  virtual void agree(const std::string& what, const std::string& value) = 0;
  // Adds `n` to the group-wide counter `name` and returns its value before the addition: with
  // n = 1, each call on any rank gets a different number. Counters start at 0.
  virtual int64_t fetch_add(const std::string& name, int64_t n) = 0;

  // A queue of `count` independent jobs (numbered 0 .. count-1) that the ranks share: each takes
  // the next job no rank has taken until none is left, posts each job's result, and one rank
  // collects them all. Every rank opens the same queues in the same order.
  struct JobQueue {
    std::string name;  // unique in the group
    int64_t count = 0;
  };
  virtual JobQueue open_queue(const std::string& name, int64_t count) = 0;
  // The next job for this rank, or -1 when every job is taken.
  virtual int64_t next_job(const JobQueue& queue) = 0;
  virtual void post_result(const JobQueue& queue, int64_t job, const std::string& value) = 0;
  // Job `job`'s result, waiting as long as it takes while the rank that took the job is alive.
  // Throws Error naming that rank when its heartbeat stops before the result comes.
  virtual std::string result(const JobQueue& queue, int64_t job) = 0;
};

}  // namespace corelocker
