#include "formats/format.h"

#include <cstdio>

#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {

namespace {

struct FeatureText {
  Feature feature;
  const char* name;     // the matrix's column
  const char* request;  // what asks for it, in messages
};

// The matrix's columns, in order.
constexpr FeatureText kFeatures[] = {
    {Feature::kLock, "lock", "lock"},
    {Feature::kUnlock, "unlock", "unlock"},
    {Feature::kFingerprint, "fingerprint", "fingerprint"},
    {Feature::kInspect, "inspect", "inspect"},
    {Feature::kDefaultLock, "default lock", "lock without --criterion"},
    {Feature::kCriterionL1, "l1", "--criterion l1"},
    {Feature::kCriterionBn, "bn", "--criterion bn"},
    {Feature::kCriterionRandom, "random", "--criterion random"},
    {Feature::kKeep, "keep", "--keep"},
    {Feature::kDecoyFill, "decoy fill", "--fill decoy"},
    {Feature::kTiers, "tiers", "--tiers"},
    {Feature::kTierBands, "tier bands", "--tier-bands"},
    {Feature::kEncryption, "encrypted keys",
     "--passphrase-file / --passphrase-env / --secret-file"},
    {Feature::kEvaluate, "eval", "eval / --eval"},
    {Feature::kCalibrate, "calibrate", "calibrate / bands / sweep"},
    {Feature::kAttack, "attack", "attack / analyze"},
    {Feature::kDetect, "detect", "detect"},
    {Feature::kPredict, "predict", "predict"},
};

const FeatureText& text_of(Feature f) {
  for (const auto& t : kFeatures)
    if (t.feature == f) return t;
  throw Error("feature " + std::to_string(static_cast<int>(f)) + " has no name");
}

}  // namespace

const std::vector<Feature>& all_features() {
  static const std::vector<Feature> all = [] {
    std::vector<Feature> v;
    for (const auto& t : kFeatures) v.push_back(t.feature);
    return v;
  }();
  return all;
}

const char* feature_name(Feature f) { return text_of(f).name; }

const char* feature_request(Feature f) { return text_of(f).request; }

std::string tier_key_path(const std::string& key_out, int tier) {
  const auto slash = key_out.find_last_of('/');
  const auto dot = key_out.find_last_of('.');
  const std::string t = ".tier" + std::to_string(tier);
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return key_out + t;
  return key_out.substr(0, dot) + t + key_out.substr(dot);
}

KeyCommit::KeyCommit(KeyCredentials credentials) : credentials_(std::move(credentials)) {}

KeyCommit::~KeyCommit() {
  if (kept_) return;
  for (const auto& k : written_) std::remove(k.path.c_str());
}

uint64_t KeyCommit::write(const std::string& path, const KeyFile& key) {
  const uint64_t bytes = write_key_file(path, key, credentials_);
  written_.push_back({path, key.header, bytes});
  written_.back().header.encryption = credentials_.kind;
  return bytes;
}

LockReport commit_lock(KeyCommit& keys, const std::vector<std::pair<std::string, KeyFile>>& made,
                       const std::function<void()>& write_model) {
  if (made.empty()) throw Error("lock made no key");
  for (const auto& [path, key] : made) keys.write(path, key);
  write_model();
  keys.keep();
  LockReport report;
  report.keys = keys.written();
  const KeyHeader& h = made.front().second.header;
  report.locked_fingerprint = h.locked_fingerprint;
  report.key_id = to_hex(h.key_id.data(), h.key_id.size());
  return report;
}

void check_written(const std::string& out, const Digest& found, const Digest& expected) {
  if (found == expected) return;
  std::remove(out.c_str());
  throw Error("written model '" + out +
              "' does not match the fingerprint the key expects; removed it");
}

namespace {

void require(const ModelFormat& format, Feature f, const std::string& path) {
  const Support s = format.supports(f);
  if (s.works) return;
  throw UsageError(std::string(feature_request(f)) + ": not for '" + path + "' (" + format.name() +
                   "): " + s.note);
}

}  // namespace

void ModelFormat::evaluate(const std::string& path, const EvaluationJob&) const {
  require(*this, Feature::kEvaluate, path);
  throw UsageError("eval: '" + path + "' (" + name() + ") cannot be evaluated");
}

void ModelFormat::predict(const std::string& path, const PredictionJob&) const {
  require(*this, Feature::kPredict, path);
  throw UsageError("predict: '" + path + "' (" + name() + ") cannot be run");
}

void ModelFormat::detect(const std::string& path, const KeyFile&, const DetectOptions&,
                         DetectionReport&) const {
  require(*this, Feature::kDetect, path);
  throw UsageError("detect: '" + path + "' (" + name() + ") cannot be audited");
}

void check_key_applies(const Digest& found, const KeyFile& key, const std::string& path) {
  if (found == key.header.locked_fingerprint) return;
  throw MismatchError("the key does not apply to '" + path + "' (fingerprints differ: the key's " +
                      "locked model is " + to_hex(key.header.locked_fingerprint).substr(0, 16) +
                      ", this file is " + to_hex(found).substr(0, 16) + ")");
}

std::unique_ptr<CurveModel> ModelFormat::open_curve(const std::string& path, unsigned,
                                                    const DescribeInput&) const {
  require(*this, Feature::kCalibrate, path);
  throw UsageError("calibrate: '" + path + "' (" + name() + ") cannot be run");
}

std::vector<Feature> requested_features(const LockRequest& r) {
  std::vector<Feature> fs{Feature::kLock};
  if (!r.criterion_named) {
    fs.push_back(Feature::kDefaultLock);
  } else {
    switch (r.units.criterion) {
      case Criterion::kL1:
        fs.push_back(Feature::kCriterionL1);
        break;
      case Criterion::kBn:
        fs.push_back(Feature::kCriterionBn);
        break;
      case Criterion::kRandom:
        fs.push_back(Feature::kCriterionRandom);
        break;
    }
  }
  if (!r.keep.empty()) fs.push_back(Feature::kKeep);
  if (r.fill != Fill::kZero) fs.push_back(Feature::kDecoyFill);
  if (!r.tier_ratios.empty()) fs.push_back(Feature::kTiers);
  if (r.tier_bands) fs.push_back(Feature::kTierBands);
  return fs;
}

bool serves(const ModelFormat& format, const LockRequest& request) {
  for (Feature f : requested_features(request))
    if (!format.supports(f).works) return false;
  return true;
}

void check_lock_request(const ModelFormat& format, const LockRequest& r) {
  for (Feature f : requested_features(r)) require(format, f, r.in);
  if (same_file(r.out, r.key_out)) {
    throw UsageError("--out '" + r.out + "' and --key-out '" + r.key_out + "' name the same file");
  }
  if (same_file(r.out, r.in)) {
    throw UsageError("--out '" + r.out + "' names the input file '" + r.in +
                     "'; write the locked file elsewhere");
  }
}

void FormatRegistry::add(std::unique_ptr<ModelFormat> format) {
  formats_.push_back(std::move(format));
}

const ModelFormat* FormatRegistry::find(const std::string& path) const {
  for (const auto& f : formats_)
    if (f->recognizes(path)) return f.get();
  return nullptr;
}

const ModelFormat& FormatRegistry::of(const std::string& path) const {
  if (const ModelFormat* f = find(path)) return *f;
  std::string names;
  for (const auto& f : formats_) names += (names.empty() ? "" : ", ") + f->name();
  throw FormatError("model '" + path + "': not a file of any format this binary reads (" +
                    (names.empty() ? std::string("none registered") : names) + ")");
}

FormatRegistry& model_formats() {
  static FormatRegistry registry;
  return registry;
}

nlohmann::ordered_json capability_matrix(const FormatRegistry& registry) {
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (const auto& f : registry.all()) {
    nlohmann::ordered_json cells = nlohmann::ordered_json::object();
    for (Feature feature : all_features()) {
      const Support s = f->supports(feature);
      cells[feature_name(feature)] = {{"works", s.works}, {"note", s.note}};
    }
    rows.push_back({{"format", f->name()}, {"files", f->recognition()}, {"features", cells}});
  }
  return rows;
}

}  // namespace corelocker
