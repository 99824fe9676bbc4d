// Preprocessing a user states for a model file (the data set, normalisation, padding, resizing,
// channels): applied over the defaults of a model file that stores none (a TorchScript file
// straight from PyTorch), or checked against what a file stores, so that a model is never fed
// input other than what its file says without a word.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/model_meta.h"

namespace corelocker {

// Unset fields (empty, -1, false) leave the model's value alone. The option names in errors are
// the command line's.
struct InputOverride {
  std::string dataset;
  std::vector<double> mean, std;
  int64_t pad = -1, resize = -1, channels = -1;
  double pad_value = 0.0;
  bool pad_value_given = false;
  bool pad_after_normalise = false;
  // Whether any field is set.
  bool given() const;
};

// With `stored` (the file at `path` stores its own preprocessing), checks each set field against
// the stored value: UsageError naming the option, the value given and the value stored.
// Otherwise applies the fields over `meta` and checks the result (a pad size below the image
// size, a pad value without padding, per-channel values that do not match the channels, a
// non-positive std: UsageError naming the option and the value).
void apply_input_override(const InputOverride& a, ModelMeta& meta, bool stored,
                          const std::string& path);

}  // namespace corelocker
