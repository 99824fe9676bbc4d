// ONNX fixtures for the ONNX tests: PyTorch exports made by tests/fixtures/make_onnx_fixtures.py
// with /usr/bin/python3 (Debian's python3-torch) at test time, cached in the build folder, plus
// helpers that rewrite a ModelProto (typed data, external data, one defect each).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "onnx/onnx_pb.h"
#include "temp_dir.h"
#include "util/atomic_file.h"

namespace corelocker::testing {

// Folder holding resnet_bn.onnx and resnet_folded.onnx; empty (with `why` set) when they cannot
// be made here.
inline std::string onnx_fixture_dir(std::string* why) {
  const std::string dir = std::string(CORELOCKER_TEST_CACHE) + "/onnx-fixtures";
  if (file_exists(dir + "/resnet_bn.onnx") && file_exists(dir + "/resnet_folded.onnx")) return dir;
  if (std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
    *why =
        "/usr/bin/python3 cannot import torch (install Debian's python3-torch) to export the ONNX "
        "fixtures";
    return "";
  }
  // Export into a private folder, then move the files in: tests run in parallel.
  std::system(("mkdir -p '" + std::string(CORELOCKER_TEST_CACHE) + "'").c_str());
  std::string tmpl = std::string(CORELOCKER_TEST_CACHE) + "/onnx-export-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    *why = "cannot create " + tmpl;
    return "";
  }
  const std::string cmd = "/usr/bin/python3 '" + std::string(CORELOCKER_ONNX_FIXTURE_SCRIPT) +
                          "' '" + tmpl + "' >'" + tmpl + "/log' 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    *why = "the fixture script failed: " + cmd;
    return "";
  }
  std::system(("mkdir -p '" + dir + "'").c_str());
  for (const char* f : {"resnet_bn.onnx", "resnet_folded.onnx"}) {
    std::rename((tmpl + "/" + f).c_str(), (dir + "/" + f).c_str());
  }
  std::system(("rm -rf '" + tmpl + "'").c_str());
  return dir;
}

// A trained ONNX model for the tests whose searches need an accuracy well above chance: the
// fixture network trained by PyTorch on 6,000 Fashion-MNIST training images for two epochs
// (bench/onnx_peer.py train, seed 1; about 60% top-1) and exported with BatchNorm kept, made once
// into the test cache. Empty when it cannot be made: `why` says why, and `skip` is set when this
// machine lacks PyTorch (anything else is a failure).
inline std::string trained_onnx_fixture(std::string* why, bool* skip) {
  const std::string dir = std::string(CORELOCKER_TEST_CACHE) + "/onnx-fixtures";
  const std::string path = dir + "/trained.onnx";
  *skip = false;
  if (file_exists(path)) return path;
  if (std::system("/usr/bin/python3 -c 'import torch, onnx' >/dev/null 2>&1") != 0) {
    *why = "/usr/bin/python3 cannot import torch and onnx (Debian's python3-torch, python3-onnx)";
    *skip = true;
    return "";
  }
  std::system(("mkdir -p '" + dir + "'").c_str());
  std::string tmpl = std::string(CORELOCKER_TEST_CACHE) + "/onnx-train-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    *why = "cannot create " + tmpl;
    return "";
  }
  const std::string cmd = "/usr/bin/python3 '" + std::string(CORELOCKER_ONNX_PEER_SCRIPT) +
                          "' train --out '" + tmpl + "/trained.onnx' --train-subset 6000 " +
                          "--epochs 2 --seed 1 --threads 2 >'" + tmpl + "/log' 2>&1";
  if (std::system(cmd.c_str()) != 0) {
    *why = "training the ONNX fixture failed: " + cmd;
    return "";
  }
  std::rename((tmpl + "/trained.onnx").c_str(), path.c_str());
  std::system(("rm -rf '" + tmpl + "'").c_str());
  return path;
}

#define CORELOCKER_ONNX_FIXTURES(dir_var)                     \
  std::string dir_var;                                        \
  {                                                           \
    std::string why_;                                         \
    dir_var = ::corelocker::testing::onnx_fixture_dir(&why_); \
    if (dir_var.empty()) GTEST_SKIP() << why_;                \
  }

inline onnx::ModelProto read_proto(const std::string& path) {
  onnx::ModelProto m;
  const auto bytes = read_file(path);
  EXPECT_TRUE(m.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) << path;
  return m;
}

inline void write_proto(const std::string& path, const onnx::ModelProto& m) {
  std::string s;
  ASSERT_TRUE(m.SerializeToString(&s));
  write_file_atomic(path, s);
}

// Float initializers moved from raw_data to float_data.
inline onnx::ModelProto to_typed(onnx::ModelProto m) {
  for (auto& t : *m.mutable_graph()->mutable_initializer()) {
    if (t.data_type() != onnx::TensorProto::FLOAT || !t.has_raw_data()) continue;
    const std::string raw = t.raw_data();
    t.clear_raw_data();
    for (size_t i = 0; i + 4 <= raw.size(); i += 4) {
      float v;
      std::memcpy(&v, raw.data() + i, 4);
      t.add_float_data(v);
    }
  }
  return m;
}

// Every raw initializer moved, one after another, into `dir/location` (external data).
inline onnx::ModelProto to_external(onnx::ModelProto m, const std::string& dir,
                                    const std::string& location) {
  std::string data;
  for (auto& t : *m.mutable_graph()->mutable_initializer()) {
    if (!t.has_raw_data()) continue;
    auto add = [&t](const std::string& k, const std::string& v) {
      auto* e = t.add_external_data();
      e->set_key(k);
      e->set_value(v);
    };
    add("location", location);
    add("offset", std::to_string(data.size()));
    add("length", std::to_string(t.raw_data().size()));
    data += t.raw_data();
    t.clear_raw_data();
    t.set_data_location(onnx::TensorProto::EXTERNAL);
  }
  write_file_atomic(dir + "/" + location, data);
  return m;
}

// Sets one external data key of initializer `name`.
inline void set_external_key(onnx::ModelProto& m, const std::string& name, const std::string& key,
                             const std::string& value) {
  for (auto& t : *m.mutable_graph()->mutable_initializer()) {
    if (t.name() != name) continue;
    for (auto& e : *t.mutable_external_data()) {
      if (e.key() == key) e.set_value(value);
    }
  }
}

inline onnx::TensorProto* initializer(onnx::ModelProto& m, const std::string& name) {
  for (auto& t : *m.mutable_graph()->mutable_initializer()) {
    if (t.name() == name) return &t;
  }
  return nullptr;
}

// True when /usr/bin/python3 has the onnx package (Debian's python3-onnx).
inline bool python_onnx_available() {
  return std::system("/usr/bin/python3 -c 'import onnx' >/dev/null 2>&1") == 0;
}

// Runs onnx.checker.check_model in Python on a file; returns the exit status.
inline int python_onnx_check(const std::string& path) {
  const std::string cmd =
      "/usr/bin/python3 -c 'import onnx, sys; onnx.checker.check_model(sys.argv[1])' '" + path +
      "' >/dev/null 2>&1";
  return std::system(cmd.c_str());
}

// One defect each, for the hostile-file tests.
enum class Defect {
  kExternalDotDot,
  kExternalAbsolute,
  kExternalSymlinkOut,
  kExternalOffsetPastEnd,
  kExternalLengthPastEnd,
  kExternalLengthWrong,
  kExternalMissingFile,
  kExternalUnknownKey,
  kRawDataWrongSize,
  kTypedCountWrong,
  kRawAndTyped,
  kDuplicateInitializer,
  kTruncated,
  kNotProtobuf,
};

// Writes the fixture with one defect into `dir/model/m.onnx` (external data beside it).
inline std::string make_hostile(const std::string& fx, const TempDir& dir, Defect d) {
  const std::string folder = dir.file("model");
  std::system(("mkdir -p '" + folder + "'").c_str());
  onnx::ModelProto m = read_proto(fx + "/resnet_bn.onnx");
  const std::string path = folder + "/m.onnx";
  auto external = [&] { m = to_external(m, folder, "w.bin"); };
  switch (d) {
    case Defect::kExternalDotDot:
      external();
      write_file_atomic(dir.file("w.bin"), read_file(folder + "/w.bin"));
      set_external_key(m, "fc.weight", "location", "../w.bin");
      break;
    case Defect::kExternalAbsolute:
      external();
      set_external_key(m, "fc.weight", "location", folder + "/w.bin");
      break;
    case Defect::kExternalSymlinkOut:
      external();
      write_file_atomic(dir.file("outside.bin"), read_file(folder + "/w.bin"));
      EXPECT_EQ(::symlink(dir.file("outside.bin").c_str(), (folder + "/link.bin").c_str()), 0);
      set_external_key(m, "fc.weight", "location", "link.bin");
      break;
    case Defect::kExternalOffsetPastEnd:
      external();
      set_external_key(m, "fc.weight", "offset", "99999999");
      break;
    case Defect::kExternalLengthPastEnd: {
      external();
      const auto size = read_file(folder + "/w.bin").size();
      set_external_key(m, "fc.weight", "offset", std::to_string(size - 100));
      break;
    }
    case Defect::kExternalLengthWrong:
      external();
      set_external_key(m, "fc.weight", "length", "636");
      break;
    case Defect::kExternalMissingFile:
      external();
      set_external_key(m, "fc.weight", "location", "nothere.bin");
      break;
    case Defect::kExternalUnknownKey: {
      external();
      auto* e = initializer(m, "fc.weight")->add_external_data();
      e->set_key("basepath");
      e->set_value("/etc");
      break;
    }
    case Defect::kRawDataWrongSize:
      initializer(m, "layer1.conv1.weight")->mutable_raw_data()->resize(2300);
      break;
    case Defect::kTypedCountWrong:
      m = to_typed(m);
      initializer(m, "fc.weight")->mutable_float_data()->RemoveLast();
      break;
    case Defect::kRawAndTyped:
      initializer(m, "fc.bias")->add_float_data(1.0f);
      break;
    case Defect::kDuplicateInitializer:
      *m.mutable_graph()->add_initializer() = *initializer(m, "fc.bias");
      break;
    case Defect::kTruncated: {
      auto bytes = read_file(fx + "/resnet_bn.onnx");
      bytes.resize(bytes.size() / 2);
      write_file_atomic(path, bytes);
      return path;
    }
    case Defect::kNotProtobuf:
      write_file_atomic(path, std::string("\xff\xff\xff\xff not an onnx model at all"));
      return path;
  }
  write_proto(path, m);
  return path;
}

}  // namespace corelocker::testing
