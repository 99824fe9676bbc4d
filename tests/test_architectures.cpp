// The paper's networks: sizes, forward passes on both input shapes, the structure each one
// states for extraction, and lock/unlock with every criterion.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <tuple>

#include "formats/safetensors/safetensors.h"
#include "formats/safetensors/safetensors_lock.h"
#include "formats/safetensors/st_torch.h"
#include "locking/decoys.h"
#include "locking/detect.h"
#include "locking/fingerprint.h"
#include "locking/lock.h"
#include "models/checkpoint.h"
#include "test_support.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker::architectures_test {
namespace {

int64_t params(const std::string& arch, const std::string& dataset) {
  LoadedModel m = create_model(new_model_meta(arch, dataset));
  return parameter_count(*m.net);
}

// Network Slimming (Liu et al., ICCV 2017), Table 1 (CIFAR-10 baselines): 20.04M, 1.70M, 1.02M
// (Huang et al. round DenseNet-40 to 1.0M).
TEST(Architectures, ParameterCountsMatchThePapers) {
  EXPECT_NEAR(double(params("vgg19", "cifar10")), 20.04e6, 0.02 * 20.04e6);
  EXPECT_NEAR(double(params("preresnet", "cifar10")), 1.70e6, 0.02 * 1.70e6);
  EXPECT_NEAR(double(params("densenet", "cifar10")), 1.02e6, 0.02 * 1.02e6);
}

TEST(Architectures, Vgg19HasSixteenConvBnPairsAndOneClassifier) {
  LoadedModel m = create_model(new_model_meta("vgg19", "cifar10", {{"width", 4}}));
  const Structure& s = m.net->structure();
  ASSERT_EQ(s.size(), 33u);
  EXPECT_EQ(s.front().weight, "feature.0.weight");
  EXPECT_EQ(s.back().weight, "classifier.weight");
  for (size_t i = 0; i < 32; i += 2) {
    EXPECT_EQ(s[i].kind, LayerKind::kConv2d);
    EXPECT_EQ(s[i + 1].kind, LayerKind::kBatchNorm);
    EXPECT_EQ(s[i + 1].producer, static_cast<int>(i));
  }
}

TEST(Architectures, PreResNetDepthAndBlockType) {
  ModelMeta meta = new_model_meta("preresnet", "cifar10", {{"depth", 20}});  // 9*2+2
  EXPECT_EQ(create_model(meta).net->structure().size(),
            1u + 6u * 6u + 3u + 2u);  // stem, 6 blocks, 3 downsamples, bn, fc
  meta.options["depth"] = 21;
  EXPECT_THROW(create_model(meta), UsageError);
  meta.options["bottleneck"] = 0;
  EXPECT_THROW(create_model(meta), UsageError);
  meta.options["depth"] = 20;  // 6*3+2, basic
  LoadedModel basic = create_model(meta);
  for (const auto& l : basic.net->structure()) {
    if (l.kind == LayerKind::kBatchNorm) {
      EXPECT_EQ(l.producer, -1) << l.name;
    }
  }
}

TEST(Architectures, UnknownOptionsAreUsageErrors) {
  EXPECT_THROW(new_model_meta("densenet", "cifar10", {{"width", 3}}), UsageError);
  EXPECT_THROW(create_model(new_model_meta("densenet", "cifar10", {{"depth", 41}})), UsageError);
  EXPECT_THROW(create_model(new_model_meta("vit", "cifar10", {{"patch", 5}})), UsageError);
  EXPECT_THROW(create_model(new_model_meta("vit", "cifar10", {{"heads", 3}})), UsageError);
  EXPECT_THROW(new_model_meta("vgg19", "imagenet"), UsageError);
}

TEST(Architectures, OptionsAreRecordedWithDefaults) {
  ModelMeta meta = new_model_meta("preresnet", "cifar100", {{"depth", 47}});
  EXPECT_EQ(meta.options.at("depth"), 47);
  EXPECT_EQ(meta.options.at("bottleneck"), 1);
  EXPECT_EQ(meta.classes, 100);
  EXPECT_EQ(meta.preprocess.pad_to, 32);
  EXPECT_EQ(new_model_meta("fcn", "fashion-mnist").preprocess.pad_to, 0);
}

struct Shape {
  const char* dataset;
  int64_t channels, size, classes;
};

// Every architecture at its default size, on Fashion-MNIST as the model takes it (padded to
// 32 where it asks) and on CIFAR-shaped input with 10 and 100 classes.
TEST(Architectures, ForwardOnFashionMnistAndCifarShapes) {
  torch::NoGradGuard no_grad;
  for (const Shape& sh : {Shape{"fashion-mnist", 1, 28, 10}, Shape{"cifar10", 3, 32, 10},
                          Shape{"cifar100", 3, 32, 100}}) {
    for (const auto& a : list_architectures()) {
      SCOPED_TRACE(a.name + " on " + sh.dataset);
      LoadedModel m = create_model(new_model_meta(a.name, sh.dataset));
      m.net->eval();
      auto images = torch::randint(0, 256, {2, sh.channels, sh.size, sh.size}, torch::kUInt8);
      auto x = preprocess_batch(images, m.meta.preprocess, /*augment=*/false);
      if (a.pad_to == 32) {
        EXPECT_EQ(x.size(2), 32);
      }
      auto y = m.net->forward(x);
      EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, sh.classes}));
      EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
    }
  }
}

// Small versions of every family, for the lock tests.
std::vector<std::pair<std::string, std::map<std::string, int64_t>>> small_models() {
  return {
      {"resnet20", {{"depth", 8}}},
      {"vgg19", {{"width", 4}}},
      {"preresnet", {{"depth", 11}}},
      {"preresnet", {{"depth", 8}, {"bottleneck", 0}}},
      {"densenet", {{"depth", 10}, {"growth", 4}}},
      {"fcn", {{"depth", 2}, {"width", 32}}},
      {"vit", {{"dim", 16}, {"depth", 2}, {"heads", 2}, {"mlp", 32}, {"patch", 4}}},
      {"cnnlstm", {{"width", 4}, {"hidden", 8}}},
      {"tinycnn", {}},
  };
}

// Every parameter random and non-zero, so that any extraction changes what it touches.
LoadedModel random_model(const std::string& arch, const std::map<std::string, int64_t>& opts,
                         const std::string& dataset = "fashion-mnist") {
  torch::manual_seed(3);
  LoadedModel m = create_model(new_model_meta(arch, dataset, opts));
  torch::NoGradGuard no_grad;
  for (auto& t : named_tensors(*m.net)) {
    if (!t.is_buffer)
      t.tensor.uniform_(0.1, 1.0).mul_(torch::randint(0, 2, t.tensor.sizes()).mul(2).sub(1));
  }
  return m;
}

std::set<std::string> changed_tensors(LoadedModel& before, LoadedModel& after) {
  std::set<std::string> out;
  auto a = named_tensors(*before.net), b = named_tensors(*after.net);
  for (size_t i = 0; i < a.size(); ++i) {
    if (!a[i].tensor.equal(b[i].tensor)) out.insert(a[i].name);
  }
  return out;
}

TEST(Architectures, StructureNamesEveryWeightMatrixAndNormOnce) {
  for (const auto& [arch, opts] : small_models()) {
    SCOPED_TRACE(arch);
    LoadedModel m = create_model(new_model_meta(arch, "fashion-mnist", opts));
    const Structure& s = m.net->structure();
    std::set<std::string> in_structure;
    for (size_t i = 0; i < s.size(); ++i) {
      EXPECT_TRUE(in_structure.insert(s[i].weight).second) << "twice: " << s[i].weight;
      if (s[i].producer >= 0) {
        ASSERT_LT(s[i].producer, static_cast<int>(i));
        const LayerKind k = s[static_cast<size_t>(s[i].producer)].kind;
        EXPECT_TRUE(k == LayerKind::kConv2d || k == LayerKind::kLinear) << s[i].name;
      }
    }
    EXPECT_EQ(s.back().kind, LayerKind::kLinear);
    std::set<std::string> names;
    for (const auto& t : named_tensors(*m.net)) names.insert(t.name);
    for (const auto& l : s) {
      EXPECT_TRUE(names.count(l.weight)) << l.weight;
      if (!l.bias.empty()) {
        EXPECT_TRUE(names.count(l.bias)) << l.bias;
      }
    }
    // Every matrix, kernel and norm scale is a unit somewhere (embeddings excepted).
    for (const auto& t : named_tensors(*m.net)) {
      if (t.is_buffer || t.name == "cls_token" || t.name == "pos_embed") continue;
      const bool matrix = t.tensor.dim() >= 2;
      const bool norm_scale =
          t.tensor.dim() == 1 && t.name.size() > 7 && t.name.substr(t.name.size() - 7) == ".weight";
      if (matrix || norm_scale) {
        EXPECT_TRUE(in_structure.count(t.name)) << t.name << " is not in the structure";
      }
    }
  }
}

// Lock then unlock restores the fingerprint exactly; the first and last layers stay untouched.
TEST(Architectures, LockUnlockRestoresEveryFamilyWithEveryCriterion) {
  for (const auto& [arch, opts] : small_models()) {
    for (Criterion c : {Criterion::kL1, Criterion::kBn, Criterion::kRandom}) {
      SCOPED_TRACE(arch + " " + to_string(c));
      LoadedModel m = random_model(arch, opts);
      LoadedModel original = testing::clone(m);
      const Digest fp = model_fingerprint(m);
      LockOptions o;
      o.criterion = c;
      o.scope = default_scope(c);
      o.ratio = 0.2;
      o.seed = 11;
      LockOutcome out = lock_model(m, o);
      EXPECT_GT(out.stats.units, 0);
      EXPECT_NE(model_fingerprint(m), fp);
      const auto changed = changed_tensors(original, m);
      const Structure& s = m.net->structure();
      for (const LayerSpec* l : {&s.front(), &s.back()}) {
        EXPECT_FALSE(changed.count(l->weight)) << l->weight;
        if (!l->bias.empty()) {
          EXPECT_FALSE(changed.count(l->bias)) << l->bias;
        }
      }
      unlock_model(m, out.key);
      EXPECT_EQ(model_fingerprint(m), fp);
      EXPECT_TRUE(testing::same_tensors(m, original));
    }
  }
}

std::set<std::string> bn_lock_changes(const std::string& arch,
                                      const std::map<std::string, int64_t>& opts) {
  LoadedModel m = random_model(arch, opts);
  LoadedModel original = testing::clone(m);
  LockOptions o;
  o.criterion = Criterion::kBn;
  o.scope = Scope::kGlobal;
  o.ratio = 0.3;
  lock_model(m, o);
  return changed_tensors(original, m);
}

bool is_norm_tensor(const Structure& s, const std::string& name) {
  for (const auto& l : s) {
    if ((l.kind == LayerKind::kBatchNorm || l.kind == LayerKind::kLayerNorm) &&
        (name == l.weight || name == l.bias))
      return true;
  }
  return false;
}

// Pre-activation networks and norms of sums or concatenations: gamma and beta only.
TEST(Architectures, BnOnPreActivationDenseAndTransformerTakesOnlyGammaBeta) {
  for (const auto& [arch, opts] : small_models()) {
    if (arch != "preresnet" && arch != "densenet" && arch != "vit") continue;
    SCOPED_TRACE(arch);
    const auto changed = bn_lock_changes(arch, opts);
    LoadedModel m = create_model(new_model_meta(arch, "fashion-mnist", opts));
    EXPECT_FALSE(changed.empty());
    bool gamma = false, beta = false;
    for (const auto& name : changed) {
      EXPECT_TRUE(is_norm_tensor(m.net->structure(), name)) << name << " changed";
      gamma |= name.size() > 7 && name.substr(name.size() - 7) == ".weight";
      beta |= name.size() > 5 && name.substr(name.size() - 5) == ".bias";
    }
    EXPECT_TRUE(gamma && beta);
  }
}

// conv -> BN (and linear -> BN): gamma/beta plus the producing filters (rows), exactly those.
TEST(Architectures, BnOnConvBnNetworksTakesTheProducingFilters) {
  for (const auto& [arch, opts] :
       std::vector<std::pair<std::string, std::map<std::string, int64_t>>>{
           {"vgg19", {{"width", 4}}},
           {"fcn", {{"depth", 3}, {"width", 16}}},
           {"resnet20", {{"depth", 8}}}}) {
    SCOPED_TRACE(arch);
    LoadedModel m = random_model(arch, opts);
    LoadedModel original = testing::clone(m);
    LockOptions o;
    o.criterion = Criterion::kBn;
    o.scope = Scope::kGlobal;
    o.ratio = 0.3;
    lock_model(m, o);
    const Structure& s = m.net->structure();
    auto before = named_tensors(*original.net), after = named_tensors(*m.net);
    auto find = [](std::vector<NamedTensor>& v, const std::string& n) {
      for (auto& t : v)
        if (t.name == n) return t.tensor;
      throw std::runtime_error(n);
    };
    int with_filters = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      if (s[i].kind != LayerKind::kBatchNorm || s[i].producer < 0) continue;
      const LayerSpec& prod = s[static_cast<size_t>(s[i].producer)];
      // Channels whose gamma was extracted, and filters (rows) that changed: the same set,
      // unless the producer is the excluded first layer.
      auto gamma_taken = find(after, s[i].weight).eq(0) & find(before, s[i].weight).ne(0);
      auto w0 = find(before, prod.weight), w1 = find(after, prod.weight);
      auto rows_changed = w0.reshape({w0.size(0), -1}).ne(w1.reshape({w1.size(0), -1})).any(1);
      if (s[i].producer == 0) {
        EXPECT_FALSE(rows_changed.any().item<bool>()) << prod.weight;
      } else {
        EXPECT_TRUE(rows_changed.equal(gamma_taken)) << s[i].name;
        // A taken filter is zero entirely.
        auto rows = w1.reshape({w1.size(0), -1}).index({gamma_taken});
        EXPECT_TRUE(rows.eq(0).all().item<bool>());
        with_filters += gamma_taken.any().item<bool>() ? 1 : 0;
      }
    }
    EXPECT_GT(with_filters, 0);
  }
}

// A network's tensors as a safetensors file (what safetensors.torch.save_file writes of its
// state dict, in the network's order).
void write_state_dict(const std::string& path, const std::vector<NamedTensor>& tensors) {
  std::vector<StSpec> specs;
  std::vector<torch::Tensor> data;
  uint64_t bytes = 0;
  for (const auto& t : tensors) {
    const torch::Tensor c = t.tensor.detach().contiguous();
    ASSERT_TRUE(c.scalar_type() == torch::kFloat32 || c.scalar_type() == torch::kInt64) << t.name;
    std::vector<uint64_t> shape(c.sizes().begin(), c.sizes().end());
    specs.push_back({t.name, c.scalar_type() == torch::kFloat32 ? "F32" : "I64", shape});
    data.push_back(c);
    bytes += static_cast<uint64_t>(c.nbytes());
  }
  StWriter w(path, st_make_header(specs, {{"format", "pt"}}), bytes);
  for (const auto& c : data) w.write(c.data_ptr(), static_cast<uint64_t>(c.nbytes()));
  w.commit();
}

// The safetensors lock has no graph: it finds the BatchNorms, and the layer feeding each, by name.
// On the state dicts of our own networks it takes exactly the units the graph gives the LibTorch
// lock: conv -> BN networks their filters, pre-activation and dense ones (whose names break the
// rule) gamma and beta alone, a linear -> BN network its rows.
TEST(Architectures, SafetensorsBnTakesTheUnitsTheGraphGivesOnEveryFamilyWithBatchNorm) {
  int families = 0;
  for (const auto& [arch, opts] : small_models()) {
    if (arch == "vit") continue;  // LayerNorm: no running statistics, so no BatchNorm by name
    SCOPED_TRACE(arch);
    LoadedModel m = random_model(arch, opts);
    const auto tensors = named_tensors(*m.net);
    const std::string path = std::string(::testing::TempDir()) + "/state-" + arch +
                             std::to_string(++families) + ".safetensors";
    write_state_dict(path, tensors);
    for (const Scope scope : {Scope::kGlobal, Scope::kLayer}) {
      LockOptions o;
      o.criterion = Criterion::kBn;
      o.scope = scope;
      o.ratio = 0.3;
      const ExtractionPlan plan =
          plan_at(rank_units(tensors, m.net->structure(), o), tensors, m.net->structure(), o.ratio);
      std::map<std::string, std::pair<uint64_t, std::vector<uint64_t>>> want, got;
      for (const auto& e : plan.entries) {
        want[e.tensor] = {static_cast<uint64_t>(e.unit_size), e.units.to_vector()};
      }
      StLockOptions so;
      so.criterion = Criterion::kBn;
      so.scope = scope;
      so.ratio = 0.3;
      so.threads = 1;
      const StLockOutcome r = lock_safetensors(path, path + ".locked", so, [](const KeyFile&) {});
      for (const auto& e : r.key.entries) got[e.tensor] = {e.unit_size, e.units.to_vector()};
      EXPECT_EQ(got, want) << to_string(scope);
      EXPECT_EQ(static_cast<int64_t>(r.units), plan.units) << to_string(scope);
      std::filesystem::remove(path + ".locked");
    }
    std::filesystem::remove(path);
  }
  EXPECT_EQ(families, 8);
}

// --fill decoy on safetensors: the streaming lock lists its units, LibTorch draws the decoys
// (st_torch.h) and the write pass puts them where zeros would go. On a network's state dict the
// locked file holds exactly what locking/decoys.h draws into the network's own tensors for the
// keys' units and the seed (tier by tier with tiers, each modelled on the units no tier takes), no
// taken unit is all zeros, and the keys restore the file byte for byte (with tiers state by state,
// each state's fingerprint checked against its key).
TEST(Architectures, SafetensorsDecoyFillWritesWhatTheLibTorchFillDrawsAndRestores) {
  LoadedModel m = random_model("resnet20", {{"depth", 8}});
  const auto tensors = named_tensors(*m.net);
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/decoy-state.safetensors";
  write_state_dict(path, tensors);
  const std::vector<uint8_t> original = read_file(path);
  struct Case {
    Criterion criterion;
    Scope scope;
    std::vector<double> tiers;
  };
  for (const Case& c :
       {Case{Criterion::kL1, Scope::kGlobal, {}}, Case{Criterion::kBn, Scope::kLayer, {}},
        Case{Criterion::kL1, Scope::kLayer, {0.05, 0.2}}}) {
    SCOPED_TRACE(std::string(to_string(c.criterion)) + " " + to_string(c.scope) + " tiers " +
                 std::to_string(c.tiers.size()));
    StLockOptions so;
    so.criterion = c.criterion;
    so.scope = c.scope;
    so.ratio = 0.2;
    so.tiers = c.tiers;
    so.threads = 2;
    so.fill = Fill::kDecoy;
    so.decoys = draw_safetensors_decoys;
    so.decoy_seed = 11;
    const std::string locked = dir + "/decoy-locked.safetensors";
    const StLockOutcome r = lock_safetensors(path, locked, so, [](const KeyFile&) {});
    std::vector<KeyFile> keys = c.tiers.empty() ? std::vector<KeyFile>{r.key} : r.tier_keys;
    for (const auto& k : keys) EXPECT_EQ(k.header.fill, Fill::kDecoy);

    // What the LibTorch fill draws for the keys' units (keys[0] holds the largest ratio's
    // increment, so tier r of the draw is key n - 1 - r).
    std::vector<NamedTensor> want;
    for (const auto& t : tensors) want.push_back({t.name, t.tensor.detach().clone(), t.is_buffer});
    auto plan_of = [](const std::vector<const KeyFile*>& ks) {
      ExtractionPlan p;
      for (const KeyFile* k : ks) {
        for (const auto& e : k->entries) {
          p.entries.push_back({e.tensor, static_cast<int64_t>(e.unit_size), e.units});
          p.units += static_cast<int64_t>(e.units.size());
        }
      }
      return p;
    };
    if (keys.size() == 1) {
      fill_decoys(want, plan_of({&keys[0]}), nullptr, Fill::kDecoy, 11);
    } else {
      std::vector<const KeyFile*> every;
      for (const auto& k : keys) every.push_back(&k);
      const ExtractionPlan all = plan_of(every);
      for (size_t t = 0; t < keys.size(); ++t)
        fill_decoys(want, plan_of({&keys[keys.size() - 1 - t]}), &all, Fill::kDecoy, 11 + t);
    }
    const StFile got(locked);
    auto find = [&](const std::string& name) -> const StTensor* {
      for (const auto& t : got.header.tensors)
        if (t.name == name) return &t;
      return nullptr;
    };
    size_t zero_units = 0, units = 0;
    for (const auto& w : want) {
      const StTensor* t = find(w.name);
      ASSERT_NE(t, nullptr) << w.name;
      const torch::Tensor c_w = w.tensor.contiguous();
      ASSERT_EQ(t->nbytes(), static_cast<uint64_t>(c_w.nbytes())) << w.name;
      EXPECT_EQ(std::memcmp(got.tensor_data(*t), c_w.data_ptr(), t->nbytes()), 0) << w.name;
    }
    for (const auto& k : keys) {
      for (const auto& e : k.entries) {
        const StTensor* t = find(e.tensor);
        const auto* v = reinterpret_cast<const float*>(got.tensor_data(*t));
        for (uint64_t u : e.units) {
          ++units;
          bool zero = true;
          for (uint64_t i = 0; i < e.unit_size; ++i) zero = zero && v[u * e.unit_size + i] == 0.0f;
          zero_units += zero;
        }
      }
    }
    EXPECT_GT(units, 0u);
    EXPECT_EQ(zero_units, 0u) << "of " << units;

    // Restored byte for byte: all keys at once, and with tiers one state after the other.
    const std::string restored = dir + "/decoy-restored.safetensors";
    unlock_safetensors(locked, restored, keys, 1);
    EXPECT_EQ(read_file(restored), original);
    if (keys.size() > 1) {
      const std::string state = dir + "/decoy-state1.safetensors";
      const StUnlockOutcome u = unlock_safetensors(locked, state, std::vector<KeyFile>{keys[0]}, 1);
      EXPECT_EQ(u.ratio_left, c.tiers.front());
      unlock_safetensors(state, restored, std::vector<KeyFile>{keys[1]}, 1);
      EXPECT_EQ(read_file(restored), original);
      std::filesystem::remove(state);
    }
    std::filesystem::remove(locked);
    std::filesystem::remove(restored);
  }
  std::filesystem::remove(path);
}

// st_structure, the safetensors file's layers as a network's structure (what `detect`'s learned
// detector relocks by): on the state dict of every family, a structure lock takes exactly the
// units the streaming lock takes, for l1 in both scopes, the default lock and bn.
TEST(Architectures, SafetensorsStructureLocksWhatTheStreamingLockTakesOnEveryFamily) {
  int families = 0;
  for (const auto& [arch, opts] : small_models()) {
    SCOPED_TRACE(arch);
    LoadedModel m = random_model(arch, opts);
    const auto tensors = named_tensors(*m.net);
    const std::string path = std::string(::testing::TempDir()) + "/structure-" + arch +
                             std::to_string(++families) + ".safetensors";
    write_state_dict(path, tensors);
    const StFile file(path);
    const Structure structure = st_structure(file.header);
    const bool has_bn = !st_batchnorms(file.header).layers.empty();
    for (const auto& [criterion, scope, io] :
         {std::make_tuple(Criterion::kL1, Scope::kLayer, false),
          std::make_tuple(Criterion::kL1, Scope::kGlobal, false),
          std::make_tuple(Criterion::kL1, Scope::kGlobal, true),
          std::make_tuple(Criterion::kBn, Scope::kGlobal, false),
          std::make_tuple(Criterion::kBn, Scope::kLayer, true)}) {
      if (criterion == Criterion::kBn && !has_bn) continue;
      SCOPED_TRACE(std::string(to_string(criterion)) + " " + to_string(scope) + (io ? " io" : ""));
      LockOptions o;
      o.criterion = criterion;
      o.scope = scope;
      o.include_io = io;
      o.ratio = 0.2;
      const ExtractionPlan plan =
          plan_at(rank_units(tensors, structure, o), tensors, structure, o.ratio);
      std::map<std::string, std::pair<uint64_t, std::vector<uint64_t>>> want, got;
      for (const auto& e : plan.entries)
        want[e.tensor] = {static_cast<uint64_t>(e.unit_size), e.units.to_vector()};
      StLockOptions so;
      so.criterion = criterion;
      so.scope = scope;
      so.include_io = io;
      so.ratio = 0.2;
      so.threads = 1;
      const StLockOutcome r = lock_safetensors(path, path + ".locked", so, [](const KeyFile&) {});
      for (const auto& e : r.key.entries) got[e.tensor] = {e.unit_size, e.units.to_vector()};
      EXPECT_EQ(got, want);
      std::filesystem::remove(path + ".locked");
    }
    std::filesystem::remove(path);
  }
  EXPECT_EQ(families, 9);
}

// `detect` of a safetensors file: a zero fill is found by every detector that reads the values,
// a decoy fill trains the learned detector on relocks of the file, and a key of another file is
// refused.
TEST(Architectures, SafetensorsDetectScoresTheFileAgainstItsKey) {
  LoadedModel m = random_model("resnet20", {{"depth", 8}});
  const std::string dir = ::testing::TempDir();
  const std::string path = dir + "/detect-state.safetensors";
  write_state_dict(path, named_tensors(*m.net));
  DetectOptions d;
  d.permutations = 20;
  d.learned_locks = 1;
  StLockOptions so;
  so.ratio = 0.1;
  so.threads = 1;
  so.scope = Scope::kGlobal;
  const StLockOutcome zero =
      lock_safetensors(path, dir + "/detect-zero.safetensors", so, [](const KeyFile&) {});
  DetectionReport r;
  detect_safetensors(dir + "/detect-zero.safetensors", zero.key, d, r);
  EXPECT_EQ(r.layers.size(), zero.key.entries.size());
  for (const auto& det : r.detectors) {
    if (det.name == "position") continue;  // the criterion, not the fill
    EXPECT_GE(det.precision(), 0.99) << det.name;
  }
  so.fill = Fill::kDecoy;
  so.decoys = draw_safetensors_decoys;
  so.decoy_seed = 5;
  const StLockOutcome decoy =
      lock_safetensors(path, dir + "/detect-decoy.safetensors", so, [](const KeyFile&) {});
  DetectionReport rd;
  detect_safetensors(dir + "/detect-decoy.safetensors", decoy.key, d, rd);
  EXPECT_EQ(rd.learned_locks, 1);
  EXPECT_GT(rd.learned_training_units, 0);
  EXPECT_THROW(detect_safetensors(dir + "/detect-decoy.safetensors", zero.key, d, r),
               MismatchError);
  for (const char* f : {"detect-state", "detect-zero", "detect-decoy"})
    std::filesystem::remove(dir + "/" + f + ".safetensors");
}

TEST(Architectures, L1TreatsLstmAndAttentionMatricesAsLinearUnits) {
  for (const auto& [arch, opts] : small_models()) {
    if (arch != "cnnlstm" && arch != "vit") continue;
    SCOPED_TRACE(arch);
    LoadedModel m = random_model(arch, opts);
    auto tensors = named_tensors(*m.net);
    LockOptions o;
    o.ratio = 0.1;
    ExtractionPlan plan =
        plan_at(rank_units(tensors, m.net->structure(), o), tensors, m.net->structure(), o.ratio);
    std::vector<std::string> want =
        arch == "cnnlstm" ? std::vector<std::string>{"lstm.weight_ih_l0", "lstm.weight_hh_l0"}
                          : std::vector<std::string>{"blocks.0.qkv.weight", "blocks.1.proj.weight"};
    for (const auto& name : want) {
      const PlanEntry* e = nullptr;
      for (const auto& p : plan.entries)
        if (p.tensor == name) e = &p;
      ASSERT_TRUE(e) << name;
      int64_t numel = 0;
      for (const auto& t : tensors)
        if (t.name == name) numel = t.tensor.numel();
      EXPECT_EQ(e->unit_size, 1);
      EXPECT_EQ(static_cast<int64_t>(e->units.size()), units_at_ratio(numel, 0.1)) << name;
    }
  }
}

TEST(Architectures, FcnWithoutNormHasNoBnUnits) {
  LoadedModel m = random_model("fcn", {{"depth", 2}, {"width", 8}, {"norm", 0}});
  LockOptions o;
  o.criterion = Criterion::kBn;
  o.scope = Scope::kGlobal;
  EXPECT_THROW(lock_model(m, o), UsageError);
}

TEST(Architectures, CheckpointRoundTripOfEveryFamily) {
  for (const auto& [arch, opts] : small_models()) {
    SCOPED_TRACE(arch);
    LoadedModel m = random_model(arch, opts, "cifar100");
    const std::string path = std::string(::testing::TempDir()) + "/arch-" + arch + ".ckpt";
    save_model(path, m);
    LoadedModel back = load_model(path);
    EXPECT_TRUE(testing::same_tensors(m, back));
    EXPECT_EQ(back.meta.options, m.meta.options);
    std::remove(path.c_str());
  }
}

}  // namespace
}  // namespace corelocker::architectures_test
