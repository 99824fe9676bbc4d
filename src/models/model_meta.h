// Metadata stored inside every corelocker checkpoint: what is needed to rebuild the network,
// feed it data, and tell a locked model from an original. Torch-free.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace corelocker {

constexpr int kModelMetaVersion = 1;

struct InputShape {
  int64_t channels = 1;
  int64_t height = 28;
  int64_t width = 28;
};

// How raw images become network input: scale to [0,1], resize to resize_to x resize_to
// (bilinear, when set), pad to pad_to x pad_to with pad_value (when larger than the image),
// repeat a single channel `channels` times (when set, e.g. 3 for a network that takes RGB), then
// (x - mean[c]) / std[c]. With pad_normalised the padding comes last, after normalising, and
// pad_value is in normalised units (torchvision's Normalize before Pad: 0).
struct Preprocess {
  std::vector<double> mean;
  std::vector<double> std;
  int64_t pad_to = 0;
  int64_t resize_to = 0;
  int64_t channels = 0;
  double pad_value = 0.0;
  bool pad_normalised = false;
};

// Present in a locked model: which key it waits for.
struct LockInfo {
  std::string key_id;                // hex
  std::string original_fingerprint;  // hex
  std::string criterion;
  std::string scope;
  double ratio = 0.0;
  std::string tool_version;
  std::string fill = "zero";
  int64_t tiers = 1;  // keys still to apply, largest ratio first, to get the original back
};

struct ModelMeta {
  std::string arch;
  std::map<std::string, int64_t> options;  // architecture options, e.g. depth
  InputShape input;
  Preprocess preprocess;
  int64_t classes = 10;
  std::string dataset;
  std::string training_json = "{}";  // free-form training summary (JSON object)
  std::vector<std::string> tensors;  // parameter and buffer names, in archive order
  std::optional<LockInfo> lock;

  // Option value or `fallback` when absent.
  int64_t option(const std::string& name, int64_t fallback) const;
};

// JSON text of the metadata.
std::string meta_to_json(const ModelMeta& meta);
// Parses metadata JSON; `what` names the source in errors. Throws FormatError.
ModelMeta meta_from_json(const std::string& text, const std::string& what);

// Architecture options (ModelMeta::options) from a depth and a width (0: the architecture's
// default, left out) and KEY=VALUE texts with integer values (`train --set`). Throws UsageError
// naming the text at fault.
std::map<std::string, int64_t> architecture_options(int64_t depth, int64_t width,
                                                    const std::vector<std::string>& key_values);

}  // namespace corelocker
