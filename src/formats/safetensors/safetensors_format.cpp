// safetensors files as a ModelFormat: the streaming lock and unlock of
// formats/safetensors/safetensors_lock.h. Torch-free, so the `corelocker` front binary serves these
// files without LibTorch.
#include "formats/format.h"
#include "formats/safetensors/safetensors.h"
#include "formats/safetensors/safetensors_lock.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {
namespace {

using OJson = nlohmann::ordered_json;

constexpr char kNoNetwork[] =
    "a safetensors file holds tensors but no network, so nothing can run it";

class SafetensorsFormat : public ModelFormat {
 public:
  explicit SafetensorsFormat(StTorchParts torch) : torch_(std::move(torch)) {}

  std::string name() const override { return "safetensors"; }
  std::string recognition() const override {
    return "name ending in .safetensors, or an 8-byte header length followed by '{'";
  }
  bool recognizes(const std::string& path) const override { return is_safetensors_file(path); }

  Support supports(Feature f) const override {
    switch (f) {
      case Feature::kLock:
      case Feature::kUnlock:
      case Feature::kFingerprint:
      case Feature::kInspect:
      case Feature::kEncryption:
        return works();
      case Feature::kDefaultLock:
        return works("layers found by name: a 4-D '*weight' is a conv, a 2-D one a linear layer");
      case Feature::kCriterionL1:
        return works("--scope layer or global");
      case Feature::kCriterionBn:
        return works(
            "BatchNorms found and paired with the conv or linear layer feeding them by name "
            "(bnN after convN or fcN, K after K-1 in a numbered sequence, the channels checked); "
            "a file whose names break the rule gets gamma and beta alone (`inspect` says why)");
      case Feature::kCriterionRandom:
        return works(
            "units drawn by a hash of --seed, the tensor's name and the unit's index (l1 or bn "
            "units)");
      case Feature::kKeep:
        return works(
            "glob patterns on tensor names (file order does not say which layer is first)");
      case Feature::kDecoyFill:
        if (!torch_.decoys)
          return cannot("the decoys are drawn with LibTorch: corelocker-torch serves it");
        return works(
            "drawn with LibTorch, once (nothing runs the file), from the tensors whose units are "
            "taken and every conv weight, read whole for it");
      case Feature::kTiers:
        return works(
            "one ranking pass; the write pass fingerprints every tier's state, and `unlock` with "
            "the first keys writes the file locked at the next ratio");
      case Feature::kTierBands:
        return cannot("tier bands are calibrated by evaluating the model, and " +
                      std::string(kNoNetwork));
      case Feature::kDetect:
        if (!torch_.detect)
          return cannot("the detectors run on LibTorch: corelocker-torch serves it");
        return works(
            "the file's tensors; the learned detector's locks rank its layers as the lock finds "
            "them");
      case Feature::kEvaluate:
      case Feature::kCalibrate:
      case Feature::kAttack:
      case Feature::kPredict:
        return cannot(kNoNetwork);
    }
    return cannot("unknown feature");
  }

  Digest fingerprint(const std::string& path, unsigned threads) const override {
    return st_fingerprint(StFile(path), threads);
  }

  OJson describe(const std::string& path) const override {
    const StFile file(path);
    const StHeader& h = file.header;
    const auto lock = st_lock_metadata(h);
    OJson tensors = OJson::array();
    for (const auto& t : h.tensors)
      tensors.push_back({{"name", t.name}, {"dtype", t.dtype}, {"shape", t.shape}});
    OJson layers = OJson::array();
    for (const auto& l : st_layers(h, /*include_io=*/false)) {
      layers.push_back({{"name", l.tensor},
                        {"kind", l.kind == StLayerKind::kConv ? "conv" : "linear"},
                        {"units", l.units},
                        {"unit_size", l.unit_size},
                        {"eligible", l.eligible}});
    }
    const StBatchNorms norms = st_batchnorms(h);
    OJson batchnorms = OJson::array();
    for (const auto& bn : norms.layers) {
      batchnorms.push_back({{"name", bn.path},
                            {"channels", bn.channels},
                            {"fed_by", bn.producer.empty() ? OJson() : OJson(bn.producer)}});
    }
    OJson metadata = OJson::object();
    for (const auto& [k, v] : h.metadata) {
      if (k.rfind(kStLockPrefix, 0) != 0) metadata[k] = v;
    }
    OJson j = {{"type", lock.empty() ? "safetensors model" : "locked safetensors model"},
               {"file", path},
               {"bytes", file.map.size()},
               {"header_bytes", h.header_size},
               {"fingerprint", to_hex(st_fingerprint(file))},
               {"metadata", metadata},
               {"layers", layers},
               {"batchnorms", batchnorms},
               {"tensors", tensors}};
    if (!norms.unpaired.empty()) j["batchnorm_pairing"] = norms.unpaired;
    if (!lock.empty()) {
      OJson l = OJson::object();
      for (const auto& [k, v] : lock) l[k.substr(std::string(kStLockPrefix).size())] = v;
      j["lock"] = l;
    }
    return j;
  }

  LockReport lock(const LockRequest& r, KeyCommit& keys) const override {
    if (r.evaluation != nullptr) throw UsageError("safetensors lock: " + std::string(kNoNetwork));
    StLockOptions o;
    o.criterion = r.units.criterion;
    o.seed = r.seed;
    o.bn_units = r.random_bn_units;
    o.ratio = r.ratio;
    o.tiers = r.tier_ratios;
    o.scope = r.units.scope;
    o.include_io = r.units.include_io;
    o.threads = r.threads;
    o.keep = r.keep;
    o.fill = r.fill;
    o.decoys = torch_.decoys;
    const StLockOutcome s = lock_safetensors(r.in, r.out, o, [&](const KeyFile& key) {
      // the keys first: a locked file without them is lost
      keys.write(key.header.tiers > 1 ? tier_key_path(r.key_out, key.header.tier) : r.key_out, key);
    });
    keys.keep();  // the locked file is in place
    LockReport report;
    report.keys = keys.written();
    report.units = static_cast<int64_t>(s.units);
    report.candidates = static_cast<int64_t>(s.candidates);
    report.values = static_cast<int64_t>(s.values);
    report.parameters = static_cast<int64_t>(s.elements);
    report.left_alone = s.excluded;
    report.kept = s.kept;
    const KeyHeader& first = s.tier_keys.empty() ? s.key.header : s.tier_keys.front().header;
    report.locked_fingerprint = first.locked_fingerprint;
    report.key_id = to_hex(first.key_id.data(), first.key_id.size());
    return report;
  }

  UnlockReport unlock(const std::string& in, const std::vector<KeyFile>& keys,
                      const std::string& out, unsigned threads) const override {
    if (same_file(out, in)) {
      throw UsageError("--out '" + out + "' names the input file '" + in +
                       "'; write the restored file elsewhere");
    }
    // Both fingerprints are checked before the restored file is renamed into place.
    const StUnlockOutcome s = unlock_safetensors(in, out, keys, threads);
    UnlockReport report;
    report.fingerprint = s.fingerprint;
    if (s.ratio_left > 0.0) {
      report.original = false;
      report.ratio_left = s.ratio_left;
      report.keys_left = keys.back().header.tiers - keys.back().header.tier;
    }
    return report;
  }

  void detect(const std::string& path, const KeyFile& key, const DetectOptions& options,
              DetectionReport& report) const override {
    if (!torch_.detect) return ModelFormat::detect(path, key, options, report);  // refuses
    torch_.detect(path, key, options, report);
  }

 private:
  StTorchParts torch_;
};

}  // namespace

void register_safetensors_format(FormatRegistry& registry) {
  registry.add(std::make_unique<SafetensorsFormat>(StTorchParts{}));
}

void register_safetensors_format(FormatRegistry& registry, const StTorchParts& parts) {
  registry.add(std::make_unique<SafetensorsFormat>(parts));
}

}  // namespace corelocker
