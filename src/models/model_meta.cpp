#include "models/model_meta.h"

#include <cmath>
#include <exception>
#include <nlohmann/json.hpp>

#include "util/error.h"

namespace corelocker {

int64_t ModelMeta::option(const std::string& name, int64_t fallback) const {
  auto it = options.find(name);
  return it == options.end() ? fallback : it->second;
}

std::string meta_to_json(const ModelMeta& m) {
  nlohmann::json j;
  j["format"] = "corelocker-model";
  j["format_version"] = kModelMetaVersion;
  j["arch"] = m.arch;
  j["options"] = m.options;
  j["input"] = {
      {"channels", m.input.channels}, {"height", m.input.height}, {"width", m.input.width}};
  j["preprocess"] = {
      {"mean", m.preprocess.mean}, {"std", m.preprocess.std}, {"pad_to", m.preprocess.pad_to}};
  if (m.preprocess.resize_to > 0) j["preprocess"]["resize_to"] = m.preprocess.resize_to;
  if (m.preprocess.channels > 0) j["preprocess"]["channels"] = m.preprocess.channels;
  if (m.preprocess.pad_value != 0.0) j["preprocess"]["pad_value"] = m.preprocess.pad_value;
  if (m.preprocess.pad_normalised) j["preprocess"]["pad_normalised"] = true;
  j["classes"] = m.classes;
  j["dataset"] = m.dataset;
  j["training"] = nlohmann::json::parse(m.training_json.empty() ? "{}" : m.training_json);
  j["tensors"] = m.tensors;
  if (m.lock) {
    j["lock"] = {
        {"key_id", m.lock->key_id},       {"original_fingerprint", m.lock->original_fingerprint},
        {"criterion", m.lock->criterion}, {"scope", m.lock->scope},
        {"ratio", m.lock->ratio},         {"tool_version", m.lock->tool_version},
        {"fill", m.lock->fill},           {"tiers", m.lock->tiers}};
  }
  return j.dump();
}

ModelMeta meta_from_json(const std::string& text, const std::string& what) {
  try {
    auto j = nlohmann::json::parse(text);
    if (j.value("format", "") != "corelocker-model") {
      throw FormatError(what + ": metadata format '" + j.value("format", "") +
                        "', expected 'corelocker-model'");
    }
    int version = j.at("format_version").get<int>();
    if (version < 1 || version > kModelMetaVersion) {
      throw FormatError(what + ": metadata version " + std::to_string(version) +
                        ", this build reads up to " + std::to_string(kModelMetaVersion));
    }
    ModelMeta m;
    m.arch = j.at("arch").get<std::string>();
    m.options = j.at("options").get<std::map<std::string, int64_t>>();
    const auto& in = j.at("input");
    m.input = {in.at("channels").get<int64_t>(), in.at("height").get<int64_t>(),
               in.at("width").get<int64_t>()};
    const auto& pp = j.at("preprocess");
    m.preprocess.mean = pp.at("mean").get<std::vector<double>>();
    m.preprocess.std = pp.at("std").get<std::vector<double>>();
    m.preprocess.pad_to = pp.at("pad_to").get<int64_t>();
    m.preprocess.resize_to = pp.value("resize_to", int64_t{0});
    m.preprocess.channels = pp.value("channels", int64_t{0});
    m.preprocess.pad_value = pp.value("pad_value", 0.0);
    m.preprocess.pad_normalised = pp.value("pad_normalised", false);
    if (!std::isfinite(m.preprocess.pad_value)) {
      throw FormatError(what + ": preprocess pad_value " + std::to_string(m.preprocess.pad_value) +
                        " is not a finite number");
    }
    if (m.preprocess.resize_to < 0 || m.preprocess.resize_to > 4096 || m.preprocess.channels < 0 ||
        m.preprocess.channels > 64) {
      throw FormatError(what + ": preprocess resize_to " + std::to_string(m.preprocess.resize_to) +
                        " / channels " + std::to_string(m.preprocess.channels) + " out of range");
    }
    m.classes = j.at("classes").get<int64_t>();
    m.dataset = j.value("dataset", "");
    m.training_json = j.value("training", nlohmann::json::object()).dump();
    m.tensors = j.at("tensors").get<std::vector<std::string>>();
    if (j.contains("lock")) {
      const auto& l = j.at("lock");
      m.lock = LockInfo{l.at("key_id").get<std::string>(),
                        l.at("original_fingerprint").get<std::string>(),
                        l.at("criterion").get<std::string>(),
                        l.at("scope").get<std::string>(),
                        l.at("ratio").get<double>(),
                        l.value("tool_version", ""),
                        l.value("fill", "zero"),
                        l.value("tiers", int64_t{1})};
    }
    if (m.input.channels < 1 || m.input.height < 1 || m.input.width < 1) {
      throw FormatError(what + ": input shape must be positive");
    }
    if (m.classes < 2)
      throw FormatError(what + ": " + std::to_string(m.classes) + " classes (need >= 2)");
    const int64_t fed = m.preprocess.channels > 0 ? m.preprocess.channels : m.input.channels;
    if (m.preprocess.mean.size() != static_cast<size_t>(fed) ||
        m.preprocess.std.size() != static_cast<size_t>(fed)) {
      throw FormatError(what + ": normalisation has " + std::to_string(m.preprocess.mean.size()) +
                        " means / " + std::to_string(m.preprocess.std.size()) + " stds for " +
                        std::to_string(fed) + " channels");
    }
    for (double s : m.preprocess.std) {
      if (!(s > 0))
        throw FormatError(what + ": normalisation std " + std::to_string(s) + " is not positive");
    }
    return m;
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(what + ": bad metadata (" + e.what() + ")");
  }
}

std::map<std::string, int64_t> architecture_options(int64_t depth, int64_t width,
                                                    const std::vector<std::string>& key_values) {
  std::map<std::string, int64_t> o;
  if (depth != 0) o["depth"] = depth;
  if (width != 0) o["width"] = width;
  for (const auto& kv : key_values) {
    const auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      throw UsageError("--set '" + kv + "': expected KEY=VALUE");
    const std::string key = kv.substr(0, eq), value = kv.substr(eq + 1);
    size_t used = 0;
    int64_t v = 0;
    try {
      v = std::stoll(value, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != value.size()) {
      throw UsageError("--set '" + kv + "': value '" + value + "' is not an integer");
    }
    o[key] = v;
  }
  return o;
}

}  // namespace corelocker
