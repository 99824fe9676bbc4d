// ONNX models: reading initializers in every storage form, the graph's layer wiring, locking
// and unlocking bit for bit, and hostile files (one defect each) refused with clear errors.
#include <gtest/gtest.h>
#include <unistd.h>

#include "formats/onnx/onnx_lock.h"
#include "formats/onnx/onnx_model.h"
#include "onnx_fixtures.h"
#include "temp_dir.h"
#include "util/error.h"

namespace corelocker::onnx_test {
namespace {

using testing::initializer;
using testing::read_proto;
using testing::write_proto;

const LayerSpec* layer_named(const Structure& s, const std::string& weight) {
  for (const auto& l : s) {
    if (l.weight == weight) return &l;
  }
  return nullptr;
}

LockOptions options(Criterion c, double ratio) {
  LockOptions o;
  o.criterion = c;
  o.scope = default_scope(c);
  o.ratio = ratio;
  o.seed = 7;
  return o;
}

// Every initializer's stored bytes (raw_data, or the serialised typed field) by name.
std::map<std::string, std::string> stored_bytes(const onnx::ModelProto& m) {
  std::map<std::string, std::string> out;
  for (const auto& t : m.graph().initializer()) {
    onnx::TensorProto copy = t;
    copy.clear_name();
    out[t.name()] = copy.SerializeAsString();
  }
  return out;
}

class Onnx : public ::testing::Test {
 protected:
  std::string copy(const std::string& fixture_dir, const std::string& name) {
    const std::string to = dir_.file(name);
    write_file_atomic(to, read_file(fixture_dir + "/" + name));
    return to;
  }
  testing::TempDir dir_;
};

TEST_F(Onnx, ReadsTheLayerWiringOfAPyTorchExportWithBatchNorm) {
  CORELOCKER_ONNX_FIXTURES(fx);
  const OnnxModel m = load_onnx_model(fx + "/resnet_bn.onnx");
  const Structure& s = m.structure();
  ASSERT_EQ(s.size(), 13u);  // 6 convs, 6 BN, 1 Gemm
  EXPECT_EQ(s.front().weight, "conv1.weight");
  EXPECT_EQ(s.front().kind, LayerKind::kConv2d);
  EXPECT_EQ(s.back().weight, "fc.weight");
  EXPECT_EQ(s.back().kind, LayerKind::kLinear);
  EXPECT_EQ(s.back().bias, "fc.bias");
  int bns = 0;
  for (const auto& l : s) {
    if (l.kind != LayerKind::kBatchNorm) continue;
    ++bns;
    ASSERT_GE(l.producer, 0) << l.name;  // every BN here follows a conv directly
    const std::string conv = s[static_cast<size_t>(l.producer)].weight;
    // bn1 <- conv1, layer1.bn2 <- layer1.conv2, layer2.short.1 <- layer2.short.0
    const std::string stem = l.weight.substr(0, l.weight.size() - std::string("weight").size());
    if (stem == "layer2.short.1.")
      EXPECT_EQ(conv, "layer2.short.0.weight");
    else
      EXPECT_EQ(conv,
                stem.substr(0, stem.size() - 4) + "conv" + stem.substr(stem.size() - 2) + "weight")
          << stem;
  }
  EXPECT_EQ(bns, 6);
  EXPECT_EQ(layer_named(s, "bn1.weight")->bias, "bn1.bias");
}

// PyTorch 1.13's exporter replaced the trained model's layer2.short.1.bias, equal to
// layer2.bn2.bias, by Identity(layer2.bn2.bias): the BN must still be found, with that bias.
TEST_F(Onnx, FollowsIdentityNodesToDeduplicatedInitializers) {
  CORELOCKER_ONNX_FIXTURES(fx);
  onnx::ModelProto p = read_proto(fx + "/resnet_bn.onnx");
  auto* inits = p.mutable_graph()->mutable_initializer();
  for (int i = 0; i < inits->size(); ++i) {
    if (inits->Get(i).name() == "layer2.short.1.bias") inits->DeleteSubrange(i, 1);
  }
  auto* nodes = p.mutable_graph()->mutable_node();
  onnx::NodeProto* id = nodes->Add();
  id->set_op_type("Identity");
  id->set_name("Identity_0");
  id->add_input("layer2.bn2.bias");
  id->add_output("layer2.short.1.bias");
  for (int i = nodes->size() - 1; i > 0; --i) nodes->SwapElements(i, i - 1);  // first node
  write_proto(dir_.file("dedup.onnx"), p);
  OnnxModel m = load_onnx_model(dir_.file("dedup.onnx"));
  const LayerSpec* bn = layer_named(m.structure(), "layer2.short.1.weight");
  ASSERT_NE(bn, nullptr);
  EXPECT_EQ(bn->bias, "layer2.bn2.bias");
  EXPECT_EQ(m.structure()[static_cast<size_t>(bn->producer)].weight, "layer2.short.0.weight");
  const Digest fp0 = onnx_fingerprint(m);
  LockOutcome lo = lock_onnx_model(m, options(Criterion::kBn, 0.5));
  save_onnx_model(dir_.file("locked.onnx"), m);
  OnnxModel locked = load_onnx_model(dir_.file("locked.onnx"));
  unlock_onnx_model(locked, {lo.key});
  EXPECT_EQ(onnx_fingerprint(locked), fp0);
}

TEST_F(Onnx, FoldedExportHasNoBatchNormAndBnIsRefused) {
  CORELOCKER_ONNX_FIXTURES(fx);
  OnnxModel m = load_onnx_model(fx + "/resnet_folded.onnx");
  ASSERT_EQ(m.structure().size(), 7u);
  for (const auto& l : m.structure()) EXPECT_NE(l.kind, LayerKind::kBatchNorm);
  EXPECT_FALSE(m.structure()[1].bias.empty());  // folding gives the convs a bias
  EXPECT_THROW(lock_onnx_model(m, options(Criterion::kBn, 0.1)), UsageError);
}

TEST_F(Onnx, L1LockZeroesTheKeysUnitsAndUnlockRestoresTheFileBitForBit) {
  CORELOCKER_ONNX_FIXTURES(fx);
  const std::string orig = copy(fx, "resnet_bn.onnx");
  OnnxModel m = load_onnx_model(orig);
  const Digest fp0 = onnx_fingerprint(m);
  LockOutcome lo = lock_onnx_model(m, options(Criterion::kL1, 0.1));
  EXPECT_EQ(lo.key.header.original_fingerprint, fp0);
  EXPECT_EQ(lo.key.header.locked_fingerprint, onnx_fingerprint(m));
  EXPECT_GT(lo.stats.units, 0);
  // l1 scope layer: conv kernels of the inner convs and weights of no other layer
  for (const auto& e : lo.key.entries) {
    EXPECT_NE(e.tensor, "conv1.weight");  // first layer
    EXPECT_NE(e.tensor, "fc.weight");     // last layer
    EXPECT_EQ(e.dtype, DType::kF32);
    EXPECT_EQ(e.unit_size, e.shape[2] * e.shape[3]) << e.tensor;
    const OnnxTensor* t = m.find(e.tensor);
    for (uint64_t u : e.units) {
      for (uint64_t k = 0; k < e.unit_size; ++k) {
        float v;
        std::memcpy(&v, t->bytes.data() + (u * e.unit_size + k) * 4, 4);
        EXPECT_EQ(v, 0.0f);
      }
    }
  }
  write_key_file(dir_.file("k.clk"), lo.key);
  save_onnx_model(dir_.file("locked.onnx"), m);
  OnnxModel locked = load_onnx_model(dir_.file("locked.onnx"));  // runs the checker again
  EXPECT_EQ(onnx_fingerprint(locked), lo.key.header.locked_fingerprint);
  EXPECT_FALSE(onnx_lock_info(locked).key_id.empty());
  EXPECT_EQ(onnx_lock_info(locked).criterion, "l1");
  if (testing::python_onnx_available()) {
    EXPECT_EQ(testing::python_onnx_check(dir_.file("locked.onnx")), 0);
  }

  unlock_onnx_model(locked, {read_key_file(dir_.file("k.clk"))});
  EXPECT_TRUE(onnx_lock_info(locked).key_id.empty());
  save_onnx_model(dir_.file("restored.onnx"), locked);
  EXPECT_EQ(onnx_fingerprint(load_onnx_model(dir_.file("restored.onnx"))), fp0);
  EXPECT_EQ(stored_bytes(read_proto(dir_.file("restored.onnx"))), stored_bytes(read_proto(orig)));
  EXPECT_EQ(read_file(dir_.file("restored.onnx")), read_file(orig));  // the whole file, too
}

TEST_F(Onnx, IncludeIoAlsoTakesTheFirstAndLastLayer) {
  CORELOCKER_ONNX_FIXTURES(fx);
  OnnxModel m = load_onnx_model(fx + "/resnet_bn.onnx");
  LockOptions o = options(Criterion::kL1, 0.5);
  o.include_io = true;
  LockOutcome lo = lock_onnx_model(m, o);
  std::set<std::string> names;
  for (const auto& e : lo.key.entries) names.insert(e.tensor);
  EXPECT_TRUE(names.count("conv1.weight"));
  EXPECT_TRUE(names.count("fc.weight"));
  EXPECT_TRUE(lo.key.header.include_io);
}

TEST_F(Onnx, BnLockTakesGammaBetaAndTheProducingConvFilter) {
  CORELOCKER_ONNX_FIXTURES(fx);
  OnnxModel m = load_onnx_model(fx + "/resnet_bn.onnx");
  LockOutcome lo = lock_onnx_model(m, options(Criterion::kBn, 0.3));
  std::map<std::string, const KeyEntry*> by;
  for (const auto& e : lo.key.entries) by[e.tensor] = &e;
  bool saw_filter = false;
  for (const auto& e : lo.key.entries) {
    if (e.tensor.find(".bn") == std::string::npos && e.tensor.find("short.1") == std::string::npos)
      continue;
    if (e.tensor.size() < 7 || e.tensor.compare(e.tensor.size() - 7, 7, ".weight") != 0) continue;
    const std::string stem = e.tensor.substr(0, e.tensor.size() - 6);
    ASSERT_TRUE(by.count(stem + "bias")) << "beta goes with gamma: " << e.tensor;
    EXPECT_EQ(by[stem + "bias"]->units, e.units);
    const LayerSpec* l = layer_named(m.structure(), e.tensor);
    ASSERT_NE(l, nullptr);
    const std::string conv = m.structure()[static_cast<size_t>(l->producer)].weight;
    if (conv == "conv1.weight") {
      EXPECT_EQ(by.count(conv), 0u) << "the first layer's filters stay";
      continue;
    }
    ASSERT_TRUE(by.count(conv)) << conv;
    EXPECT_EQ(by[conv]->units, e.units);
    EXPECT_EQ(by[conv]->unit_size, by[conv]->shape[1] * by[conv]->shape[2] * by[conv]->shape[3]);
    saw_filter = true;
  }
  EXPECT_TRUE(saw_filter);
  EXPECT_EQ(lo.key.header.scope, Scope::kGlobal);
}

TEST_F(Onnx, RandomLockIsReproducibleFromItsSeed) {
  CORELOCKER_ONNX_FIXTURES(fx);
  OnnxModel a = load_onnx_model(fx + "/resnet_bn.onnx");
  OnnxModel b = load_onnx_model(fx + "/resnet_bn.onnx");
  LockOutcome ka = lock_onnx_model(a, options(Criterion::kRandom, 0.2));
  LockOutcome kb = lock_onnx_model(b, options(Criterion::kRandom, 0.2));
  EXPECT_EQ(ka.key.header.locked_fingerprint, kb.key.header.locked_fingerprint);
  EXPECT_EQ(ka.key.header.seed, 7u);
}

TEST_F(Onnx, TypedDataLocksAndUnlocksKeepingItsStorage) {
  CORELOCKER_ONNX_FIXTURES(fx);
  write_proto(dir_.file("typed.onnx"), testing::to_typed(read_proto(fx + "/resnet_bn.onnx")));
  OnnxModel m = load_onnx_model(dir_.file("typed.onnx"));
  EXPECT_EQ(m.find("conv1.weight")->storage, OnnxStorage::kTyped);
  // Storage does not change the fingerprint: it covers values, not their encoding.
  EXPECT_EQ(onnx_fingerprint(m), onnx_fingerprint(load_onnx_model(fx + "/resnet_bn.onnx")));
  const Digest fp0 = onnx_fingerprint(m);
  LockOutcome lo = lock_onnx_model(m, options(Criterion::kL1, 0.1));
  save_onnx_model(dir_.file("locked.onnx"), m);
  OnnxModel locked = load_onnx_model(dir_.file("locked.onnx"));
  EXPECT_EQ(locked.find("layer1.conv1.weight")->storage, OnnxStorage::kTyped);
  unlock_onnx_model(locked, {lo.key});
  save_onnx_model(dir_.file("restored.onnx"), locked);
  EXPECT_EQ(onnx_fingerprint(load_onnx_model(dir_.file("restored.onnx"))), fp0);
  EXPECT_EQ(stored_bytes(read_proto(dir_.file("restored.onnx"))),
            stored_bytes(read_proto(dir_.file("typed.onnx"))));
}

TEST_F(Onnx, ExternalDataLocksAndUnlocksIntoItsOwnDataFile) {
  CORELOCKER_ONNX_FIXTURES(fx);
  write_proto(dir_.file("ext.onnx"),
              testing::to_external(read_proto(fx + "/resnet_bn.onnx"), dir_.path(), "weights.bin"));
  const auto weights = read_file(dir_.file("weights.bin"));
  OnnxModel m = load_onnx_model(dir_.file("ext.onnx"));
  EXPECT_EQ(m.find("fc.weight")->storage, OnnxStorage::kExternal);
  const Digest fp0 = onnx_fingerprint(m);
  EXPECT_EQ(fp0, onnx_fingerprint(load_onnx_model(fx + "/resnet_bn.onnx")));
  LockOutcome lo = lock_onnx_model(m, options(Criterion::kBn, 0.2));
  save_onnx_model(dir_.file("locked.onnx"), m);
  EXPECT_TRUE(file_exists(dir_.file("locked.onnx.data")));
  EXPECT_EQ(read_file(dir_.file("weights.bin")), weights);  // the input's data file is untouched
  OnnxModel locked = load_onnx_model(dir_.file("locked.onnx"));
  EXPECT_EQ(onnx_fingerprint(locked), lo.key.header.locked_fingerprint);
  if (testing::python_onnx_available()) {
    EXPECT_EQ(testing::python_onnx_check(dir_.file("locked.onnx")), 0);
  }
  unlock_onnx_model(locked, {lo.key});
  save_onnx_model(dir_.file("restored.onnx"), locked);
  EXPECT_EQ(onnx_fingerprint(load_onnx_model(dir_.file("restored.onnx"))), fp0);
  EXPECT_EQ(read_file(dir_.file("restored.onnx.data")), weights);  // same order, same bytes
}

TEST_F(Onnx, KeyOfAnotherModelIsRefusedAndChangesNothing) {
  CORELOCKER_ONNX_FIXTURES(fx);
  OnnxModel a = load_onnx_model(fx + "/resnet_bn.onnx");
  OnnxModel b = load_onnx_model(fx + "/resnet_bn.onnx");
  LockOutcome ka = lock_onnx_model(a, options(Criterion::kL1, 0.1));
  lock_onnx_model(b, options(Criterion::kL1, 0.2));
  const Digest before = onnx_fingerprint(b);
  EXPECT_THROW(unlock_onnx_model(b, {ka.key}), MismatchError);
  EXPECT_EQ(onnx_fingerprint(b), before);
  EXPECT_THROW(lock_onnx_model(a, options(Criterion::kL1, 0.1)), UsageError);  // already locked
  unlock_onnx_model(a, {ka.key});
  EXPECT_THROW(unlock_onnx_model(a, {ka.key}), MismatchError);  // already unlocked
}

// ------------------------------------------------------------------ hostile files

struct HostileCase {
  testing::Defect defect;
  const char* message;  // a part of the error that names the problem
};

class OnnxHostile : public ::testing::TestWithParam<HostileCase> {};

TEST_P(OnnxHostile, IsRefusedWithAClearError) {
  CORELOCKER_ONNX_FIXTURES(fx);
  testing::TempDir dir;
  const std::string path = testing::make_hostile(fx, dir, GetParam().defect);
  try {
    load_onnx_model(path);
    FAIL() << "loaded a hostile file; expected an error containing '" << GetParam().message << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(GetParam().message), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("m.onnx"), std::string::npos)
        << "names the file: " << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(
    Defects, OnnxHostile,
    ::testing::Values(
        HostileCase{testing::Defect::kExternalDotDot, "has a '..' component"},
        HostileCase{testing::Defect::kExternalAbsolute, "is an absolute path"},
        HostileCase{testing::Defect::kExternalSymlinkOut, "leaves the model's folder"},
        HostileCase{testing::Defect::kExternalOffsetPastEnd, "offset 99999999 is past the end"},
        HostileCase{testing::Defect::kExternalLengthPastEnd, "is past the end of 'w.bin'"},
        HostileCase{testing::Defect::kExternalLengthWrong,
                    "external data length 636, dims and data type need 640"},
        HostileCase{testing::Defect::kExternalMissingFile, "cannot open external data"},
        HostileCase{testing::Defect::kExternalUnknownKey, "unknown external data key 'basepath'"},
        HostileCase{testing::Defect::kRawDataWrongSize,
                    "raw_data has 2300 bytes, dims [8, 8, 3, 3] of FLOAT need 2304"},
        HostileCase{testing::Defect::kTypedCountWrong, "159 typed values"},
        HostileCase{testing::Defect::kRawAndTyped, "both raw_data and typed values"},
        HostileCase{testing::Defect::kDuplicateInitializer, "initializer 'fc.bias' appears twice"},
        HostileCase{testing::Defect::kTruncated, "not a valid ONNX ModelProto"},
        HostileCase{testing::Defect::kNotProtobuf, "not a valid ONNX ModelProto"}),
    [](const ::testing::TestParamInfo<HostileCase>& i) {
      return "defect" + std::to_string(static_cast<int>(i.param.defect));
    });

TEST(OnnxFormat, DataTypeNamesAndSizes) {
  EXPECT_EQ(onnx_type_name(1), "FLOAT");
  EXPECT_EQ(onnx_type_name(16), "BFLOAT16");
  EXPECT_EQ(onnx_type_name(99), "UNDEFINED(99)");
  EXPECT_EQ(onnx_element_size(10), 2u);
  EXPECT_EQ(onnx_element_size(8), 0u);  // STRING is not read
  EXPECT_TRUE(is_onnx_file("a/b/Model.ONNX"));
  EXPECT_FALSE(is_onnx_file("model.onnx.data"));
  EXPECT_FALSE(is_onnx_file("onnx"));
}

}  // namespace
}  // namespace corelocker::onnx_test
