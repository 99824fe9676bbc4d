#include "data/cifar.h"

#include <algorithm>

#include "util/error.h"

namespace corelocker {

uint64_t cifar_record_bytes(CifarKind kind) {
  return (kind == CifarKind::kCifar10 ? 1 : 2) + kCifarImageBytes;
}

CifarArray parse_cifar(const std::vector<uint8_t>& bytes, CifarKind kind, const std::string& what) {
  const uint64_t record = cifar_record_bytes(kind);
  const uint64_t size = bytes.size();
  // records
  if (size == 0)
    throw FormatError(what + ": empty file, expected " + std::to_string(record) + "-byte records");
  if (size % record != 0) {
    throw FormatError(what + ": " + std::to_string(size) + " bytes is not a whole number of " +
                      std::to_string(record) + "-byte records (" + std::to_string(size / record) +
                      " records and " + std::to_string(size % record) + " bytes left over)");
  }
  CifarArray out;
  out.count = size / record;
  out.images.resize(out.count * kCifarImageBytes);
  out.labels.resize(out.count);
  if (kind == CifarKind::kCifar100) out.coarse.resize(out.count);
  // labels and pixels
  const unsigned fine_limit = kind == CifarKind::kCifar10 ? 10 : 100;
  for (uint64_t i = 0; i < out.count; ++i) {
    const uint8_t* r = bytes.data() + i * record;
    if (kind == CifarKind::kCifar100) {
      if (r[0] >= 20) {
        throw FormatError(what + ": record " + std::to_string(i) + " has coarse label " +
                          std::to_string(r[0]) + ", expected 0..19");
      }
      out.coarse[i] = r[0];
      ++r;
    }
    if (r[0] >= fine_limit) {
      throw FormatError(what + ": record " + std::to_string(i) + " has label " +
                        std::to_string(r[0]) + ", expected 0.." + std::to_string(fine_limit - 1));
    }
    out.labels[i] = r[0];
    std::copy(r + 1, r + 1 + kCifarImageBytes,
              out.images.begin() + static_cast<std::ptrdiff_t>(i * kCifarImageBytes));
  }
  return out;
}

void append_cifar(CifarArray& a, const CifarArray& b) {
  a.count += b.count;
  a.images.insert(a.images.end(), b.images.begin(), b.images.end());
  a.labels.insert(a.labels.end(), b.labels.begin(), b.labels.end());
  a.coarse.insert(a.coarse.end(), b.coarse.begin(), b.coarse.end());
}

std::vector<std::string> cifar_files(CifarKind kind, bool train) {
  if (kind == CifarKind::kCifar100) return {train ? "train.bin" : "test.bin"};
  if (!train) return {"test_batch.bin"};
  std::vector<std::string> files;
  for (int i = 1; i <= 5; ++i) files.push_back("data_batch_" + std::to_string(i) + ".bin");
  return files;
}

}  // namespace corelocker
