// TorchScript files the owner brings: structure from the graph, lock / unlock, the locked file
// still runs in Python PyTorch, and the attacks run on it.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>

#include "attacks/attacks.h"
#include "attacks/effective.h"
#include "attacks/harness.h"
#include "eval/evaluate.h"
#include "locking/lock.h"
#include "models/checkpoint.h"
#include "models/torchscript.h"
#include "temp_dir.h"
#include "test_support.h"
#include "torchscript_fixture.h"
#include "util/error.h"

namespace corelocker::torchscript_test {
namespace {

using testing::same_tensors;
using testing::TempDir;
using testing::torchscript_fixtures;

std::string fresh_fixtures() { return torchscript_fixtures("ts-fresh-s3", "--seed 3"); }

// Runs the fixture script's `run` mode on a model: exit code and output.
std::pair<int, std::string> python_run(const std::string& model) {
  const std::string cmd = std::string(testing::kPython) + " '" + testing::fixture_script() +
                          "' run '" + model + "' 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf{};
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

LockOptions options(Criterion c, double ratio) {
  LockOptions o;
  o.criterion = c;
  o.scope = default_scope(c);
  o.ratio = ratio;
  return o;
}

const LayerSpec& layer_named(const Structure& s, const std::string& name) {
  for (const auto& l : s) {
    if (l.name == name) return l;
  }
  throw std::runtime_error("no layer " + name);
}

TEST(TorchScript, ScriptedAndTracedFilesGiveTheSameStructureFromTheirGraphs) {
  const std::string dir = fresh_fixtures();
  LoadedModel scripted = load_model(dir + "/scripted.pt");
  LoadedModel traced = load_model(dir + "/traced.pt");
  EXPECT_EQ(scripted.meta.arch, kTorchScriptArch);
  EXPECT_EQ(model_fingerprint(scripted), model_fingerprint(traced))
      << "both files hold the same weights";
  const Structure& s = scripted.net->structure();
  const Structure& t = traced.net->structure();
  ASSERT_EQ(s.size(), t.size());
  for (size_t i = 0; i < s.size(); ++i) {
    EXPECT_EQ(s[i].name, t[i].name) << i;
    EXPECT_EQ(s[i].kind, t[i].kind) << s[i].name;
    EXPECT_EQ(s[i].weight, t[i].weight) << s[i].name;
    EXPECT_EQ(s[i].bias, t[i].bias) << s[i].name;
    EXPECT_EQ(s[i].producer, t[i].producer) << s[i].name;
  }
  // Stem, three blocks (two convs each, projection shortcuts in blocks 2 and 3), head: 9 convs,
  // each followed by its BatchNorm, and one linear layer.
  ASSERT_EQ(s.size(), 19u);
  EXPECT_EQ(s.front().name, "conv1");
  EXPECT_EQ(s.front().kind, LayerKind::kConv2d);
  EXPECT_EQ(s.back().name, "fc");
  EXPECT_EQ(s.back().kind, LayerKind::kLinear);
  EXPECT_EQ(s.back().bias, "fc.bias");
  for (const auto& [bn, conv] :
       std::vector<std::pair<std::string, std::string>>{{"bn1", "conv1"},
                                                        {"layer1.bn2", "layer1.conv2"},
                                                        {"layer2.shortcut.1", "layer2.shortcut.0"},
                                                        {"layer3.bn1", "layer3.conv1"}}) {
    const LayerSpec& l = layer_named(s, bn);
    EXPECT_EQ(l.kind, LayerKind::kBatchNorm);
    EXPECT_EQ(l.weight, bn + ".weight");
    ASSERT_GE(l.producer, 0) << bn;
    EXPECT_EQ(s[static_cast<size_t>(l.producer)].name, conv) << bn;
  }
  // The graph gives the execution order: layer2's conv1 runs before its conv2.
  auto pos = [&](const std::string& n) { return &layer_named(s, n) - s.data(); };
  EXPECT_LT(pos("layer2.conv1"), pos("layer2.conv2"));
  EXPECT_LT(pos("layer1.conv2"), pos("layer2.conv1"));
}

TEST(TorchScript, LockedFileRunsInPythonAndUnlocksToTheOriginal) {
  const std::string dir = fresh_fixtures();
  for (const std::string file : {"scripted.pt", "traced.pt"}) {
    TempDir tmp;
    LoadedModel original = load_model(dir + "/" + file);
    LoadedModel m = load_model(dir + "/" + file);
    LockOutcome out = lock_model(m, options(Criterion::kL1, 0.05));
    EXPECT_GT(out.stats.units, 0);
    save_model(tmp.file("locked.pt"), m);
    auto [rc, text] = python_run(tmp.file("locked.pt"));
    EXPECT_EQ(rc, 0) << text;
    EXPECT_NE(text.find("\"shape\": [2, 10]"), std::string::npos) << text;

    LoadedModel locked = load_model(tmp.file("locked.pt"));
    ASSERT_TRUE(locked.meta.lock.has_value())
        << "lock metadata travels in the archive's extra file";
    EXPECT_EQ(model_fingerprint(locked), out.key.header.locked_fingerprint);
    EXPECT_FALSE(same_tensors(locked, original));
    unlock_model(locked, out.key);
    EXPECT_FALSE(locked.meta.lock.has_value());
    save_model(tmp.file("restored.pt"), locked);
    LoadedModel restored = load_model(tmp.file("restored.pt"));
    EXPECT_TRUE(same_tensors(restored, original)) << file;
    EXPECT_EQ(model_fingerprint(restored), out.key.header.original_fingerprint);
  }
}

TEST(TorchScript, BnTakesGammaBetaAndTheProducingConvFilters) {
  const std::string dir = fresh_fixtures();
  LoadedModel original = load_model(dir + "/traced.pt");
  LoadedModel m = load_model(dir + "/traced.pt");
  LockOutcome out = lock_model(m, options(Criterion::kBn, 0.2));
  const Structure& s = m.net->structure();
  std::map<std::string, std::vector<uint64_t>> units;
  for (const auto& e : out.key.entries) units[e.tensor] = e.units.to_vector();
  int with_filters = 0;
  for (const auto& l : s) {
    if (l.kind != LayerKind::kBatchNorm || !units.count(l.weight)) continue;
    EXPECT_EQ(units[l.bias], units[l.weight]) << "beta goes with gamma: " << l.name;
    const LayerSpec& conv = s[static_cast<size_t>(l.producer)];
    const bool eligible = &conv != &s.front();  // the first layer is not extracted
    if (eligible) {
      ++with_filters;
      EXPECT_EQ(units[conv.weight], units[l.weight])
          << "filters of " << conv.name << " go with " << l.name;
    } else {
      EXPECT_EQ(units.count(conv.weight), 0u)
          << "first layer " << conv.name << " must not be extracted";
    }
  }
  EXPECT_GT(with_filters, 0);
  // Only tensors named in the key changed, and every weight in it did (a fresh BatchNorm's
  // beta is already 0, so zeroing it changes nothing).
  auto before = named_tensors(*original.net), after = named_tensors(*m.net);
  ASSERT_EQ(before.size(), after.size());
  for (size_t i = 0; i < before.size(); ++i) {
    const bool changed = !before[i].tensor.equal(after[i].tensor);
    const bool in_key = units.count(before[i].name) > 0;
    if (changed) {
      EXPECT_TRUE(in_key) << before[i].name << " changed but is not in the key";
    }
    if (in_key && before[i].name.size() > 7 &&
        before[i].name.substr(before[i].name.size() - 7) == ".weight") {
      EXPECT_TRUE(changed) << before[i].name;
    }
  }
}

TEST(TorchScript, L1LockMakesATrainedModelFallAndTheKeyRestoresIt) {
  // Trained in Python on 3,000 Fashion-MNIST images for one epoch (about 20 s).
  const std::string dir =
      torchscript_fixtures("ts-trained-3k-s1", "--train-images 3000 --epochs 1 --seed 1");
  LoadedModel m = load_model(dir + "/scripted.pt");
  const Dataset test = testing::fmnist_test(2000);
  const double before = evaluate(*m.net, test, m.meta.preprocess).top1;
  EXPECT_GE(before, 50.0);
  LockOutcome out = lock_model(m, options(Criterion::kL1, 0.1));
  const double locked = evaluate(*m.net, test, m.meta.preprocess).top1;
  EXPECT_LE(locked, before - 20.0) << "before " << before;
  unlock_model(m, out.key);
  EXPECT_EQ(evaluate(*m.net, test, m.meta.preprocess).top1, before);
}

// The built-in resnet20's own weights in the Python network of the same shape (option-A
// shortcuts, tests/fixtures/torchscript_model.py from-checkpoint): the structure read from the
// TorchScript graphs must make the lock take exactly the units the built-in structure takes.
TEST(TorchScript, BuiltInResnetWeightsLockExactlyAsTheBuiltInModel) {
  TempDir tmp;
  torch::manual_seed(11);
  LoadedModel builtin = create_model(new_model_meta("resnet20", "fashion-mnist"));
  {
    torch::NoGradGuard no_grad;  // distinct BatchNorm scales, so that bn ranks without ties
    for (auto& t : named_tensors(*builtin.net)) {
      if (t.name.find("bn") != std::string::npos && !t.is_buffer) t.tensor.uniform_(-1.0, 1.0);
    }
  }
  save_model(tmp.file("r20.ckpt"), builtin);
  const std::string cmd = std::string(testing::kPython) + " '" + testing::fixture_script() +
                          "' from-checkpoint '" + tmp.file("r20.ckpt") + "' '" + tmp.path() +
                          "' 2>&1";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto units_of = [](const LockOutcome& o) {
    std::map<std::string, std::pair<std::vector<uint64_t>, std::vector<uint8_t>>> m;
    for (const auto& e : o.key.entries) m[e.tensor] = {e.units.to_vector(), e.values};
    return m;
  };
  for (const std::string file : {"scripted.pt", "traced.pt"}) {
    for (const Criterion c : {Criterion::kL1, Criterion::kBn}) {
      SCOPED_TRACE(file + " " + to_string(c));
      LoadedModel a = load_model(tmp.file("r20.ckpt"));
      LoadedModel b = load_model(tmp.file(file));
      EXPECT_EQ(a.net->structure().size(), b.net->structure().size());
      const LockOutcome oa = lock_model(a, options(c, 0.05));
      const LockOutcome ob = lock_model(b, options(c, 0.05));
      EXPECT_GT(oa.stats.units, 0);
      EXPECT_EQ(oa.stats.units, ob.stats.units);
      EXPECT_EQ(units_of(oa), units_of(ob));
    }
  }
}

TEST(TorchScript, FilesThatAreNotUsableModelsAreRefused) {
  TempDir tmp;
  {
    std::ofstream f(tmp.file("text.pt"));
    f << "not a model";
  }
  EXPECT_THROW(load_model(tmp.file("text.pt")), FormatError);
  EXPECT_THROW(load_model(tmp.file("missing.pt")), IoError);
  try {
    load_model(fresh_fixtures() + "/noparams.pt");
    ADD_FAILURE() << "a module with nothing to extract was accepted";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("nothing to extract"), std::string::npos) << e.what();
  }
}

TEST(TorchScript, MetadataCountsAsStoredOnceCorelockerWroteTheFile) {
  TempDir tmp;
  LoadedModel plain = load_model(fresh_fixtures() + "/scripted.pt");
  EXPECT_FALSE(plain.meta_stored) << "a file from PyTorch carries no corelocker metadata";
  plain.meta.preprocess.pad_to = 32;
  save_model(tmp.file("written.pt"), plain);
  LoadedModel written = load_model(tmp.file("written.pt"));
  EXPECT_TRUE(written.meta_stored);
  EXPECT_EQ(written.meta.preprocess.pad_to, 32);
}

// ---------------------------------------------------------------- attacks on TorchScript
TrainOptions quick_training() {
  TrainOptions o;
  o.epochs = 1;
  o.batch_size = 64;
  o.lr = 0.05;
  o.seed = 5;
  return o;
}

// `file` of the fresh fixtures (or of `dir`), locked with l1 at `ratio`.
LoadedModel locked_fixture(const std::string& file, double ratio = 0.1,
                           const std::string& dir = fresh_fixtures()) {
  LoadedModel m = load_model(dir + "/" + file);
  lock_model(m, options(Criterion::kL1, ratio));
  return m;
}

TEST(TorchScriptAttacks, CopyIsDeepAndTrainsUnderTheModulesOwnNames) {
  LoadedModel locked = locked_fixture("scripted.pt");
  const Digest before = model_fingerprint(locked);
  LoadedModel copy = copy_model(locked);
  EXPECT_TRUE(same_tensors(copy, locked));
  // Only fc.weight trains, named as the structure names it; BatchNorm statistics frozen.
  TrainOptions o = quick_training();
  o.trainable = [](const std::string& name) { return name == "fc.weight"; };
  o.freeze_bn_stats = true;
  train(*copy.net, subset(testing::fashion_train(), 256, 3), copy.meta.preprocess, o);
  EXPECT_EQ(model_fingerprint(locked), before) << "training the copy changed the original";
  for (auto& t : named_tensors(*copy.net)) {
    const bool equal = t.tensor.equal(testing::tensor_of(locked, t.name));
    EXPECT_EQ(equal, t.name != "fc.weight") << t.name;
  }
  // Without the freeze the running statistics of the scripted BatchNorms move.
  o.freeze_bn_stats = false;
  train(*copy.net, subset(testing::fashion_train(), 256, 3), copy.meta.preprocess, o);
  EXPECT_FALSE(testing::tensor_of(copy, "bn1.running_mean")
                   .equal(testing::tensor_of(locked, "bn1.running_mean")));
}

TEST(TorchScriptAttacks, ZeroRetrainTrainsOnlyWhatTheLockLeftAtZero) {
  LoadedModel locked = locked_fixture("scripted.pt");
  LoadedModel m = copy_model(locked);
  const ZeroRetrainResult z =
      zero_retrain(m, subset(testing::fashion_train(), 256, 4), quick_training());
  ASSERT_GT(z.positions, 0);
  std::map<std::string, torch::Tensor> masks;
  for (const auto& sus : z.suspects) masks[sus.tensor] = sus.mask;
  for (auto& t : named_tensors(*m.net)) {
    const torch::Tensor& was = testing::tensor_of(locked, t.name);
    auto it = masks.find(t.name);
    const torch::Tensor keep =
        it == masks.end() ? torch::ones_like(was, torch::kBool) : it->second.logical_not();
    EXPECT_TRUE(t.tensor.masked_select(keep).equal(was.masked_select(keep)))
        << t.name << " changed outside the suspects";
    if (it != masks.end()) {
      EXPECT_FALSE(t.tensor.masked_select(it->second).equal(was.masked_select(it->second)))
          << t.name;
    }
  }
}

TEST(TorchScriptAttacks, ScratchRedrawsEveryParameterAsPyTorchInitialisesIt) {
  // Trained, so that no BatchNorm scale is still at its initial 1.
  const std::string trained =
      torchscript_fixtures("ts-trained-3k-s1", "--train-images 3000 --epochs 1 --seed 1");
  for (const std::string file : {"scripted.pt", "traced.pt"}) {
    SCOPED_TRACE(file);
    LoadedModel locked = locked_fixture(file, 0.1, trained);
    const Digest locked_print = model_fingerprint(locked);
    PytorchInit init;
    LoadedModel s = scratch_model(locked, /*seed=*/7, &init);
    EXPECT_EQ(model_fingerprint(locked), locked_print);
    EXPECT_FALSE(s.meta.lock.has_value());
    const Structure& structure = s.net->structure();
    EXPECT_EQ(init.layers, static_cast<int64_t>(structure.size()));
    EXPECT_EQ(init.other_parameters, 0) << "every parameter of the fixture belongs to a layer";
    for (const auto& layer : structure) {
      torch::Tensor w = testing::tensor_of(s, layer.weight);
      EXPECT_FALSE(w.equal(testing::tensor_of(locked, layer.weight))) << layer.weight;
      if (layer.kind == LayerKind::kBatchNorm) {
        EXPECT_TRUE(w.eq(1).all().item<bool>()) << layer.weight;
        EXPECT_TRUE(testing::tensor_of(s, layer.bias).eq(0).all().item<bool>()) << layer.bias;
        EXPECT_TRUE(testing::tensor_of(s, layer.name + ".running_mean").eq(0).all().item<bool>())
            << layer.name;
        EXPECT_TRUE(testing::tensor_of(s, layer.name + ".running_var").eq(1).all().item<bool>())
            << layer.name;
        EXPECT_EQ(testing::tensor_of(s, layer.name + ".num_batches_tracked").item<int64_t>(), 0)
            << layer.name;
        continue;
      }
      // kaiming_uniform_(a=sqrt(5)): U(-b, b), b = 1/sqrt(fan_in); its sd is b/sqrt(3).
      const double bound = 1.0 / std::sqrt(static_cast<double>(w[0].numel()));
      const double largest = w.abs().max().item<double>();
      EXPECT_LE(largest, bound) << layer.weight;
      EXPECT_GE(largest, 0.9 * bound) << layer.weight;
      if (w.numel() >= 500) {
        EXPECT_NEAR(w.std().item<double>(), bound / std::sqrt(3.0), 0.1 * bound / std::sqrt(3.0))
            << layer.weight;
        EXPECT_NEAR(w.mean().item<double>(), 0.0, 0.1 * bound) << layer.weight;
      }
      if (!layer.bias.empty()) {
        EXPECT_LE(testing::tensor_of(s, layer.bias).abs().max().item<double>(), bound)
            << layer.bias;
      }
    }
    // Seeded: the same seed draws the same model, another seed another one.
    LoadedModel again = scratch_model(locked, 7), other = scratch_model(locked, 8);
    EXPECT_EQ(model_fingerprint(again), model_fingerprint(s));
    EXPECT_NE(model_fingerprint(other), model_fingerprint(s));
  }
}

TEST(TorchScriptAttacks, HarnessRunsOnACopyAndSkipsBnRecalibrationOnATracedGraph) {
  const Dataset test = testing::fmnist_test(200);
  HarnessOptions h;
  h.trials = 1;
  h.data_fraction = 0.005;
  for (const std::string file : {"scripted.pt", "traced.pt"}) {
    SCOPED_TRACE(file);
    LoadedModel locked = locked_fixture(file);
    const Digest before = model_fingerprint(locked);
    for (AttackKind kind : all_attack_kinds()) {
      AttackConfig cfg;
      cfg.kind = kind;
      cfg.train = quick_training();
      std::vector<Digest> attacked;
      AttackHooks hooks;
      hooks.on_trial = [&](int, const Dataset&, LoadedModel& m) {
        attacked.push_back(model_fingerprint(m));
      };
      const AttackReport r =
          run_attack(locked, testing::fashion_train(), test, 10.0, std::nullopt, cfg, h, hooks);
      EXPECT_EQ(model_fingerprint(locked), before) << to_string(kind);
      if (kind == AttackKind::kBnRecalibrate && file == "traced.pt") {
        EXPECT_NE(r.skipped.find(
                      "traced TorchScript graph fixes evaluation mode in BatchNorm layer 'bn1'"),
                  std::string::npos)
            << r.skipped;
        EXPECT_TRUE(r.trials.empty());
        EXPECT_TRUE(attacked.empty());
        continue;
      }
      EXPECT_EQ(r.skipped, "") << to_string(kind);
      ASSERT_EQ(attacked.size(), 1u) << to_string(kind);
      EXPECT_NE(attacked[0], before) << to_string(kind) << " left the model as it was";
    }
  }
}

TEST(TorchScriptAttacks, ReestimationIsUnavailableExactlyWhereRunningTheModelCannotDoIt) {
  const Dataset data = subset(testing::fashion_train(), 128, 2);
  for (const std::string file : {"scripted.pt", "traced.pt"}) {
    LoadedModel m = load_model(fresh_fixtures() + "/" + file);
    const std::string why = reestimation_unavailable(m);
    bool ran = true;
    try {
      reestimate_batchnorm(m, data, 64);
    } catch (const Error&) {
      ran = false;
    }
    EXPECT_EQ(why.empty(), ran) << file << ": " << why;
  }
  LoadedModel plain = create_model(
      new_model_meta("fcn", "fashion-mnist", {{"norm", 0}, {"depth", 1}, {"width", 16}}));
  EXPECT_EQ(reestimation_unavailable(plain),
            "the model has no BatchNorm layer with running statistics");
}

}  // namespace
}  // namespace corelocker::torchscript_test
