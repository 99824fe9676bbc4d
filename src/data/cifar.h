// CIFAR-10 / CIFAR-100 binary files (https://www.cs.toronto.edu/~kriz/cifar.html).
//
// A file is a sequence of fixed-size records and nothing else:
//   CIFAR-10   1 byte label (0..9),                         3072 bytes image
//   CIFAR-100  1 byte coarse label (0..19), 1 byte fine label (0..99), 3072 bytes image
// The image is 32x32 in three planes (1024 red, 1024 green, 1024 blue), each row-major.
// Files: CIFAR-10 data_batch_1.bin .. data_batch_5.bin and test_batch.bin;
//        CIFAR-100 train.bin and test.bin.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace corelocker {

enum class CifarKind { kCifar10, kCifar100 };

constexpr uint64_t kCifarImageBytes = 3 * 32 * 32;

struct CifarArray {
  uint64_t count = 0;
  std::vector<uint8_t> images;  // count x 3 x 32 x 32
  std::vector<uint8_t> labels;  // the class label (CIFAR-100: the fine label)
  std::vector<uint8_t> coarse;  // CIFAR-100 only: the superclass label
};

// Bytes per record: 3073 (CIFAR-10) or 3074 (CIFAR-100).
uint64_t cifar_record_bytes(CifarKind kind);

// Parses the records of one file; `what` names the source in errors. Throws FormatError for an
// empty file, a size that is not a whole number of records, or a label out of range.
CifarArray parse_cifar(const std::vector<uint8_t>& bytes, CifarKind kind, const std::string& what);

// Appends b's records to a.
void append_cifar(CifarArray& a, const CifarArray& b);

// The files of a split, in order (relative to the data folder).
std::vector<std::string> cifar_files(CifarKind kind, bool train);

}  // namespace corelocker
