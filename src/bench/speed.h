// Training and evaluation speed of an architecture (`corelocker bench`), and the same network in
// Python PyTorch (bench/torch_peer.py) on the same threads and input shapes.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "models/model_meta.h"

namespace corelocker {

struct Speed {
  double train_ips = 0.0, eval_ips = 0.0;  // images per second
  int64_t parameters = 0;
};

// A new `arch` network for `dataset`'s input, trained one epoch of `steps` batches of random images
// through the library's own loop (the first step, with its allocations, not timed), then evaluated
// (after one warm-up batch).
Speed measure_speed(const std::string& arch, const std::string& dataset, int64_t batch,
                    int64_t steps);

struct PeerCommand {
  std::string python = "/usr/bin/python3";
  std::string script = "bench/torch_peer.py";
};

// The peer's speed of the network `meta` describes, or none with `error` saying why (the peer
// could not start, failed, or printed no result).
std::optional<Speed> peer_speed(const PeerCommand& peer, const std::string& arch,
                                const ModelMeta& meta, int64_t batch, int64_t steps, int threads,
                                std::string& error);

}  // namespace corelocker
