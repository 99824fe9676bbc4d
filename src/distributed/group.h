// A group of processes on torch.distributed's C++ engine (c10d): a TCPStore for rendezvous,
// counters and agreement, and a Gloo process group for the collectives. Launched by torchrun
// (`torchrun --no_python ... corelocker ...`), or by hand (or srun) with the standard variables.
#pragma once

#include <chrono>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "distributed/collective.h"

namespace corelocker {

struct GroupConfig {
  int rank = 0;
  int size = 1;
  int local_size = 1;  // processes on this host
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
  // torchrun's agent serves the store at MASTER_ADDR:MASTER_PORT; every rank is its client.
  // Otherwise rank 0 serves it.
  bool agent_store = false;
  std::string attempt = "0";  // torchrun's restart count: each restart's keys stay apart
  std::string interface;      // network interface for Gloo ("": the host name's address)
  // How long a rank waits for the others (joining, a collective, the store) before it stops.
  std::chrono::milliseconds timeout{std::chrono::seconds(120)};
};

// The group the environment describes, or nullopt when it describes none (WORLD_SIZE unset or
// 1). Reads RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT (torchrun sets them;
// under Slurm, set them from SLURM_PROCID and SLURM_NTASKS: a batch script's own environment
// has those too, and must not start a group), TORCHELASTIC_USE_AGENT_STORE and
// TORCHELASTIC_RESTART_COUNT (torchrun), GLOO_SOCKET_IFNAME, and CORELOCKER_DIST_TIMEOUT
// (seconds, default 120). Throws UsageError naming a variable that is missing or has a bad
// value.
std::optional<GroupConfig> group_config(const std::function<const char*(const char*)>& env =
                                            [](const char* name) { return std::getenv(name); });

class Group : public Collective {
 public:
  // Joins the group: connects to the store and to every other rank. Throws Error naming the
  // ranks that did not come within config.timeout. Where SIGPIPE has its default action, sets it
  // to be ignored for the process (as Python does at start): Gloo writes to its sockets with
  // writev, which raises SIGPIPE when a rank is gone, and the default action would kill this
  // rank with exit code 141 instead of the error that names the one gone.
  explicit Group(const GroupConfig& config);
  ~Group() override;
  Group(const Group&) = delete;
  Group& operator=(const Group&) = delete;

  int rank() const override;
  int size() const override;
  // Tensors are summed in buckets of one dtype up to 16 MiB, one allreduce per bucket.
  void sum(std::vector<torch::Tensor>& tensors) override;
  void barrier() override;
  void agree(const std::string& what, const std::string& value) override;
  int64_t fetch_add(const std::string& name, int64_t n) override;
  JobQueue open_queue(const std::string& name, int64_t count) override;
  int64_t next_job(const JobQueue& queue) override;
  void post_result(const JobQueue& queue, int64_t job, const std::string& value) override;
  std::string result(const JobQueue& queue, int64_t job) override;

  const GroupConfig& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The group of the environment, joined; null when the environment describes none.
std::unique_ptr<Group> join_group_from_environment();

}  // namespace corelocker
