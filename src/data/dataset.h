// Data sets held in memory as uint8 image tensors, and the preprocessing that turns a batch of
// them into network input.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "models/model_meta.h"

namespace corelocker {

constexpr const char* kDefaultFashionMnistDir = "/usr/share/datasets/fashion-mnist";

enum class Split { kTrain, kTest };

struct DatasetInfo {
  std::string name;
  InputShape input;
  int64_t classes;
  std::vector<double> mean;
  std::vector<double> std;
  std::string default_dir;  // empty: the user must name the folder
  bool flip = false;        // horizontal flips are a valid augmentation
};

// Facts about a named data set (fashion-mnist, cifar10, cifar100). Throws UsageError for an
// unknown name.
DatasetInfo dataset_info(const std::string& name);

// Records a data set's facts in a model's metadata: name, input shape, classes and
// normalisation; the rest of the preprocessing (padding, resizing, channels) is left as it is.
void use_dataset(const DatasetInfo& info, ModelMeta& meta);

struct Dataset {
  torch::Tensor images;  // uint8 [N, C, H, W]
  torch::Tensor labels;  // int64 [N]
  int64_t classes = 10;
  std::string name;

  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

// Loads a split of a named data set from `dir` (empty: the data set's default folder).
// Throws IoError / FormatError naming the file at fault.
Dataset load_dataset(const std::string& name, const std::string& dir, Split split);

// Fashion-MNIST from {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] in `dir`.
Dataset load_fashion_mnist(const std::string& dir, Split split);

// CIFAR-10 (data_batch_{1..5}.bin / test_batch.bin) or CIFAR-100 (train.bin / test.bin, fine
// labels) in `dir`. Throws IoError for a missing file, FormatError for a malformed one.
Dataset load_cifar(const std::string& dir, bool cifar100, Split split);

// A random subset of n samples (all when n <= 0 or n >= size), chosen with `seed`.
Dataset subset(const Dataset& data, int64_t n, uint64_t seed);

// Rows `index` (int64) of a data set.
Dataset select(const Dataset& data, const torch::Tensor& index);

// Turns uint8 images [B,C,H,W] into normalised float input: scale to [0,1], pad to pp.pad_to
// with pp.pad_value, with `augment` a random crop from a 4-pixel zero border (and a horizontal
// flip when `flip`), then per-channel normalisation (with pp.pad_normalised, the padding after
// it instead: Preprocess, models/model_meta.h).
torch::Tensor preprocess_batch(const torch::Tensor& images, const Preprocess& pp, bool augment,
                               bool flip = false);

}  // namespace corelocker
