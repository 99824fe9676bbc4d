#include "models/input_override.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "data/dataset.h"
#include "util/error.h"

namespace corelocker {

bool InputOverride::given() const {
  return !dataset.empty() || !mean.empty() || !std.empty() || pad >= 0 || resize >= 0 ||
         channels >= 0 || pad_value_given || pad_after_normalise;
}

namespace {

// Applies the given options over `meta` (a model file that stores no preprocessing) and checks
// the result. Throws UsageError.
void override_input(const InputOverride& a, ModelMeta& meta) {
  if (!a.dataset.empty()) {
    const DatasetInfo info = dataset_info(a.dataset);
    if (info.name != meta.dataset) use_dataset(info, meta);
  }
  if (a.pad >= 0) meta.preprocess.pad_to = a.pad;
  if (a.resize >= 0) meta.preprocess.resize_to = a.resize;
  if (a.channels >= 0) meta.preprocess.channels = a.channels;
  if (a.pad_value_given) meta.preprocess.pad_value = a.pad_value;
  if (a.pad_after_normalise) meta.preprocess.pad_normalised = true;
  if ((a.pad_value_given || a.pad_after_normalise) && meta.preprocess.pad_to == 0) {
    throw UsageError(std::string(a.pad_value_given ? "--pad-value" : "--pad-after-normalise") +
                     ": the images are not padded; give --pad N as well");
  }
  if (!std::isfinite(meta.preprocess.pad_value)) {
    throw UsageError("--pad-value " + std::to_string(meta.preprocess.pad_value) +
                     ": not a finite number");
  }
  // Images are resized first, then padded: a pad size below that size would be ignored.
  const int64_t pad = meta.preprocess.pad_to, resize = meta.preprocess.resize_to;
  const int64_t side =
      std::max(resize > 0 ? resize : meta.input.height, resize > 0 ? resize : meta.input.width);
  if (pad > 0 && pad < side) {
    throw UsageError(
        "--pad " + std::to_string(pad) + ": smaller than the " +
        (resize > 0
             ? std::to_string(resize) + "x" + std::to_string(resize) + " images after --resize"
             : std::to_string(meta.input.height) + "x" + std::to_string(meta.input.width) +
                   " images of " + meta.dataset) +
        "; padding only grows an image (give 0 for none, or at least " + std::to_string(side) +
        ")");
  }
  const int64_t fed = meta.preprocess.channels > 0 ? meta.preprocess.channels : meta.input.channels;
  if (meta.preprocess.channels > 0 && meta.input.channels != 1 &&
      meta.preprocess.channels != meta.input.channels) {
    throw UsageError("--channels " + std::to_string(meta.preprocess.channels) +
                     ": the data set has " + std::to_string(meta.input.channels) +
                     " channels; only a grey channel can be repeated");
  }
  auto per_channel = [&](const std::vector<double>& given, std::vector<double>& out,
                         const char* flag) {
    if (given.empty()) {
      if (static_cast<int64_t>(out.size()) == 1 && fed > 1)
        out.assign(static_cast<size_t>(fed), out[0]);
      return;
    }
    if (given.size() != 1 && static_cast<int64_t>(given.size()) != fed) {
      throw UsageError(std::string(flag) + ": " + std::to_string(given.size()) + " values for " +
                       std::to_string(fed) + " channels (give one, or one per channel)");
    }
    out = given.size() == 1 ? std::vector<double>(static_cast<size_t>(fed), given[0]) : given;
  };
  per_channel(a.mean, meta.preprocess.mean, "--mean");
  per_channel(a.std, meta.preprocess.std, "--std");
  if (static_cast<int64_t>(meta.preprocess.mean.size()) != fed ||
      static_cast<int64_t>(meta.preprocess.std.size()) != fed) {
    throw UsageError("normalisation has " + std::to_string(meta.preprocess.mean.size()) +
                     " means / " + std::to_string(meta.preprocess.std.size()) + " stds for " +
                     std::to_string(fed) + " channels: give --mean and --std");
  }
  for (double s : meta.preprocess.std) {
    if (!(s > 0)) throw UsageError("--std " + std::to_string(s) + ": must be positive");
  }
}

std::string values_text(const std::vector<double>& v) {
  std::string out;
  for (double x : v) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", x);
    out += (out.empty() ? "" : ",") + std::string(b);
  }
  return out;
}

// One value for every channel stands for that value repeated; equal up to rounding in print.
bool same_values(const std::vector<double>& given, const std::vector<double>& stored) {
  if (given.size() != 1 && given.size() != stored.size()) return false;
  for (size_t i = 0; i < stored.size(); ++i) {
    const double g = given.size() == 1 ? given[0] : given[i];
    if (std::fabs(g - stored[i]) > 1e-9 * std::max(1.0, std::fabs(stored[i]))) return false;
  }
  return !stored.empty();
}

// Checks every given option against what the model file stores. Throws UsageError.
void check_against_stored(const InputOverride& a, const ModelMeta& meta, const std::string& path) {
  auto refuse = [&](const std::string& option, const std::string& given, const std::string& what,
                    const std::string& stored) {
    throw UsageError(option + " " + given + ": model '" + path + "' stores " + what + " " + stored +
                     "; leave the option out or give the stored value");
  };
  const std::string dataset = meta.dataset.empty() ? "fashion-mnist" : meta.dataset;
  if (!a.dataset.empty() && dataset_info(a.dataset).name != dataset)
    refuse("--dataset", a.dataset, "dataset", dataset);
  if (!a.mean.empty() && !same_values(a.mean, meta.preprocess.mean)) {
    refuse("--mean", values_text(a.mean), "mean", values_text(meta.preprocess.mean));
  }
  if (!a.std.empty() && !same_values(a.std, meta.preprocess.std)) {
    refuse("--std", values_text(a.std), "std", values_text(meta.preprocess.std));
  }
  const Preprocess& p = meta.preprocess;
  if (a.pad >= 0 && a.pad != p.pad_to)
    refuse("--pad", std::to_string(a.pad), "pad", std::to_string(p.pad_to));
  if (a.pad_value_given && a.pad_value != p.pad_value) {
    refuse("--pad-value", std::to_string(a.pad_value), "pad value", std::to_string(p.pad_value));
  }
  if (a.pad_after_normalise && !p.pad_normalised)
    refuse("--pad-after-normalise", "given", "padding", "before normalising");
  if (a.resize >= 0 && a.resize != p.resize_to) {
    refuse("--resize", std::to_string(a.resize), "resize", std::to_string(p.resize_to));
  }
  if (a.channels >= 0 && a.channels != p.channels) {
    refuse("--channels", std::to_string(a.channels), "channels", std::to_string(p.channels));
  }
}

}  // namespace

void apply_input_override(const InputOverride& a, ModelMeta& meta, bool stored,
                          const std::string& path) {
  if (stored) return check_against_stored(a, meta, path);
  override_input(a, meta);
}

}  // namespace corelocker
