// One interface for every model file format, and the registry the commands find them in.
//
// A format recognises its files, fingerprints them, describes them (`inspect`), locks them
// (one request type, keys written through one KeyCommit) and unlocks them, and says which
// features it supports (`corelocker formats` prints that matrix). The commands ask the registry
// for the format of a file and never name a format; each binary registers the formats it can
// serve (the torch-free `corelocker` front only safetensors). docs/formats.md, "Adding a
// format", lists what a new format implements. Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "keyfile/key_file.h"
#include "locking/defaults.h"
#include "util/hash.h"

namespace corelocker {

// The columns of the capability matrix: what a user can ask of a model file.
enum class Feature {
  kLock,
  kUnlock,
  kFingerprint,
  kInspect,
  kDefaultLock,      // no --criterion: l1, global, first and last layers included
  kCriterionL1,      // --criterion l1 (and --scope layer|global)
  kCriterionBn,      // --criterion bn: BatchNorm channels with the conv filters feeding them
  kCriterionRandom,  // --criterion random
  kKeep,             // --keep PATTERN: layers left alone by name
  kDecoyFill,        // --fill decoy
  kTiers,            // --tiers
  kTierBands,        // --tier-bands: tiers calibrated to utility bands
  kEncryption,       // --passphrase-file / --secret-file
  kEvaluate,         // eval, lock --eval
  kCalibrate,        // calibrate, bands, sweep
  kAttack,           // attack, analyze
  kDetect,           // detect: the detectors against a locked file and its key
  kPredict,          // predict
};
// Every feature, in the matrix's column order.
const std::vector<Feature>& all_features();
// Short column name ("lock", "bn criterion", ...).
const char* feature_name(Feature f);
// The command or option that asks for the feature, for messages ("--criterion bn", "calibrate").
const char* feature_request(Feature f);

// One cell of the matrix: whether the feature works, and a note (why not, or how).
struct Support {
  bool works = false;
  std::string note;
};
inline Support works(std::string note = "") { return {true, std::move(note)}; }
inline Support cannot(std::string why) { return {false, std::move(why)}; }

// Torch side (formats/evaluation.h): data and reports of `eval` and of a lock that evaluates;
// formats without Feature::kEvaluate never see them.
struct LockEvaluation;
struct EvaluationJob;
struct PredictionJob;
// Torch side (control/curve_model.h): a model the searches over the ratio lock and evaluate.
class CurveModel;
// Torch side (locking/detect.h): what `detect` reports, and its options.
struct DetectionReport;
struct DetectOptions;
struct ModelMeta;
// How a command describes a model's input (--dataset, --mean, ...): applied to the model's
// metadata (`stored`: the file stores its own, which the description is checked against).
using DescribeInput = std::function<void(ModelMeta& meta, bool stored, const std::string& path)>;

// What `lock` asks of a format.
struct LockRequest {
  std::string in, out;
  std::string key_out;  // with tiers, each tier's key goes to tier_key_path(key_out, n)
  UnitChoice units;
  bool criterion_named = false;  // the user named a criterion (the paper's lock)
  double ratio = 0.05;
  std::vector<double> tier_ratios;  // several keys; empty: one key at `ratio`
  bool tier_bands = false;          // tiers chosen by utility bands (evaluation->tier_bands)
  Fill fill = Fill::kZero;
  uint64_t seed = 0;              // --criterion random
  bool random_bn_units = false;   // --criterion random --units bn
  std::vector<std::string> keep;  // --keep: glob patterns of layers left alone
  unsigned threads = 0;           // 0: all cores
  const LockEvaluation* evaluation = nullptr;
};

// "model.clk" -> "model.tier1.clk" (tier 1 is applied first).
std::string tier_key_path(const std::string& key_out, int tier);

struct WrittenKey {
  std::string path;
  KeyHeader header;
  uint64_t bytes = 0;  // file size
};

struct LockReport {
  std::vector<WrittenKey> keys;  // in order of application
  // Of the single-ratio lock (of the largest ratio for tiers).
  int64_t units = 0, candidates = 0, values = 0, parameters = 0;
  std::vector<std::string> left_alone;  // layers left alone by name (first/last), when listed
  std::vector<std::string> kept;        // layers left alone by request.keep
  Digest locked_fingerprint{};
  std::string key_id;  // hex
  std::string note;    // what the format checked on the written file, if anything
};

struct UnlockReport {
  Digest fingerprint{};  // of the file written
  bool original = true;  // false: a tier key that leaves the model locked at a smaller ratio
  double ratio_left = 0.0;
  int64_t keys_left = 0;
};

// Writes keys before the model they belong to, and removes them again unless the caller keeps
// them: a lock that fails after its keys are written leaves nothing behind, and a locked model
// is never written without its keys.
class KeyCommit {
 public:
  explicit KeyCommit(KeyCredentials credentials);
  ~KeyCommit();
  KeyCommit(const KeyCommit&) = delete;
  KeyCommit& operator=(const KeyCommit&) = delete;
  // Writes `key` to `path` (atomically); returns the bytes written.
  uint64_t write(const std::string& path, const KeyFile& key);
  // The model is written: the keys stay.
  void keep() { kept_ = true; }
  const std::vector<WrittenKey>& written() const { return written_; }

 private:
  KeyCredentials credentials_;
  std::vector<WrittenKey> written_;
  bool kept_ = false;
};

// The commit of a lock made in memory: writes the keys (`made`: path and key, in order of
// application) through `keys`, then the model (`write_model`), then keeps the keys; if anything
// throws, the keys written are removed. Returns the report with its keys, the locked
// fingerprint and the key id filled in (the counts are the format's).
LockReport commit_lock(KeyCommit& keys, const std::vector<std::pair<std::string, KeyFile>>& made,
                       const std::function<void()>& write_model);

// After an unlock wrote `out`: `found` (the fingerprint of the file as re-read) must be
// `expected`; otherwise the file is removed and Error says so.
void check_written(const std::string& out, const Digest& found, const Digest& expected);

class ModelFormat {
 public:
  virtual ~ModelFormat() = default;
  // "safetensors", "onnx", "libtorch": the matrix's row name.
  virtual std::string name() const = 0;
  // How its files are recognised, for `corelocker formats`.
  virtual std::string recognition() const = 0;
  virtual bool recognizes(const std::string& path) const = 0;
  virtual Support supports(Feature f) const = 0;

  // `threads` 0: all cores.
  virtual Digest fingerprint(const std::string& path, unsigned threads) const = 0;
  // `inspect`'s description: "type", the layers a lock ranks, the lock if any, "fingerprint".
  virtual nlohmann::ordered_json describe(const std::string& path) const = 0;
  // Locks request.in into request.out; keys go through `keys` before the model is written.
  // Called after check_lock_request. Throws UsageError / FormatError / IoError / Error.
  virtual LockReport lock(const LockRequest& request, KeyCommit& keys) const = 0;
  // Applies `keys` in order to `in` and writes `out`, checked against the keys' fingerprint
  // before it counts as written. Throws MismatchError / UsageError / FormatError / IoError.
  virtual UnlockReport unlock(const std::string& in, const std::vector<KeyFile>& keys,
                              const std::string& out, unsigned threads) const = 0;
  // `eval` of the file as `job` says. The default refuses (UsageError with the kEvaluate note).
  virtual void evaluate(const std::string& path, const EvaluationJob& job) const;
  // `predict` of the file as `job` says. The default refuses (UsageError with the kPredict note).
  virtual void predict(const std::string& path, const PredictionJob& job) const;
  // `calibrate`, `bands`, `sweep`: the model at `path` in memory, its input described by
  // `describe_input` (`threads` 0: all cores). The default refuses (UsageError with the
  // kCalibrate note).
  virtual std::unique_ptr<CurveModel> open_curve(const std::string& path, unsigned threads,
                                                 const DescribeInput& describe_input) const;
  // `detect`: the detectors of locking/detect.h on the locked file at `path` against `key` (the
  // ground truth; check_key_applies first), into `report`. The default refuses (UsageError with
  // the kDetect note).
  virtual void detect(const std::string& path, const KeyFile& key, const DetectOptions& options,
                      DetectionReport& report) const;
};

// Throws MismatchError naming `path` unless `found` (its fingerprint) is the key's locked one.
void check_key_applies(const Digest& found, const KeyFile& key, const std::string& path);

// The features `request` asks for (lock, its criterion or the default lock, --keep, --fill decoy,
// --tiers, --tier-bands), and whether `format` supports every one of them.
std::vector<Feature> requested_features(const LockRequest& request);
bool serves(const ModelFormat& format, const LockRequest& request);

// Refuses, before anything is read, a request that uses a feature the format does not support
// (UsageError naming the option, the file and the format's reason), and the rules every format
// shares (--out and --key-out the same file, --out the input).
void check_lock_request(const ModelFormat& format, const LockRequest& request);

class FormatRegistry {
 public:
  void add(std::unique_ptr<ModelFormat> format);
  // The first registered format that recognises `path`; nullptr when none does.
  const ModelFormat* find(const std::string& path) const;
  // Same; throws FormatError naming the file when none does.
  const ModelFormat& of(const std::string& path) const;
  const std::vector<std::unique_ptr<ModelFormat>>& all() const { return formats_; }

 private:
  std::vector<std::unique_ptr<ModelFormat>> formats_;
};

// The process's registry: each binary's main registers what it serves (register_*_format).
FormatRegistry& model_formats();

// Each format's one registration, defined in its folder (link the library that holds it):
// corelocker_core; without decoy fill (the overload in safetensors_lock.h takes LibTorch's)
void register_safetensors_format(FormatRegistry& registry);
void register_libtorch_format(FormatRegistry& registry);  // corelocker (checkpoint, TorchScript)
void register_onnx_format(FormatRegistry& registry);      // corelocker_onnx

// The capability matrix of `registry` as rows of cells (row: format name, then one cell per
// all_features()), for `corelocker formats`.
nlohmann::ordered_json capability_matrix(const FormatRegistry& registry);

}  // namespace corelocker
