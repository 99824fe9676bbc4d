#include "data/dataset.h"

#include <random>

#include "data/cifar.h"
#include "data/idx.h"
#include "util/atomic_file.h"
#include "util/error.h"

namespace corelocker {

DatasetInfo dataset_info(const std::string& name) {
  if (name == "fashion-mnist" || name == "fmnist") {
    return {"fashion-mnist", {1, 28, 28}, 10, {0.2860}, {0.3530}, kDefaultFashionMnistDir, false};
  }
  // Per-channel mean and standard deviation of the training images.
  if (name == "cifar10" || name == "cifar-10") {
    return {"cifar10", {3, 32, 32}, 10, {0.4914, 0.4822, 0.4465}, {0.2470, 0.2435, 0.2616},
            "",        true};
  }
  if (name == "cifar100" || name == "cifar-100") {
    return {"cifar100", {3, 32, 32}, 100, {0.5071, 0.4865, 0.4409}, {0.2673, 0.2564, 0.2762},
            "",         true};
  }
  throw UsageError("dataset '" + name + "': unknown (known: fashion-mnist, cifar10, cifar100)");
}

void use_dataset(const DatasetInfo& info, ModelMeta& meta) {
  meta.dataset = info.name;
  meta.input = info.input;
  meta.classes = info.classes;
  meta.preprocess.mean = info.mean;
  meta.preprocess.std = info.std;
}

Dataset load_dataset(const std::string& name, const std::string& dir, Split split) {
  const DatasetInfo info = dataset_info(name);
  const std::string folder = dir.empty() ? info.default_dir : dir;
  if (folder.empty()) {
    throw UsageError("dataset '" + info.name + "' has no standard folder here: give --data-dir");
  }
  if (info.name == "cifar10" || info.name == "cifar100") {
    return load_cifar(folder, info.name == "cifar100", split);
  }
  return load_fashion_mnist(folder, split);
}

Dataset load_cifar(const std::string& dir, bool cifar100, Split split) {
  const CifarKind kind = cifar100 ? CifarKind::kCifar100 : CifarKind::kCifar10;
  CifarArray all;
  for (const auto& f : cifar_files(kind, split == Split::kTrain)) {
    const std::string path = dir + "/" + f;
    if (!file_exists(path)) {
      throw IoError("data set file '" + path + "' not found (" +
                    (cifar100 ? "CIFAR-100" : "CIFAR-10") +
                    " binary version expected in --data-dir)");
    }
    // A CIFAR file is at most 50,000 records; anything far larger is not one.
    append_cifar(all,
                 parse_cifar(read_maybe_gzip(path, uint64_t{1} << 28), kind, "'" + path + "'"));
  }
  const auto n = static_cast<int64_t>(all.count);
  Dataset d;
  d.name = cifar100 ? "cifar100" : "cifar10";
  d.classes = cifar100 ? 100 : 10;
  d.images = torch::from_blob(all.images.data(), {n, 3, 32, 32}, torch::kUInt8).clone();
  d.labels = torch::from_blob(all.labels.data(), {n}, torch::kUInt8).to(torch::kInt64);
  return d;
}

namespace {

std::string find_file(const std::string& dir, const std::string& base) {
  for (const char* suffix : {".gz", ""}) {
    std::string p = dir + "/" + base + suffix;
    if (file_exists(p)) return p;
  }
  throw IoError("data set file '" + dir + "/" + base +
                ".gz' not found (is dataset-fashion-mnist installed, or --data-dir right?)");
}

}  // namespace

Dataset load_fashion_mnist(const std::string& dir, Split split) {
  const std::string prefix = split == Split::kTrain ? "train" : "t10k";
  const std::string image_path = find_file(dir, prefix + "-images-idx3-ubyte");
  const std::string label_path = find_file(dir, prefix + "-labels-idx1-ubyte");
  IdxArray images = read_idx_file(image_path);
  IdxArray labels = read_idx_file(label_path);
  if (images.dims.size() != 3) {
    throw FormatError("'" + image_path + "': " + std::to_string(images.dims.size()) +
                      " dimensions, expected 3 (count, rows, columns)");
  }
  if (images.dims[1] != 28 || images.dims[2] != 28) {
    throw FormatError("'" + image_path + "': images are " + std::to_string(images.dims[1]) + "x" +
                      std::to_string(images.dims[2]) + ", expected 28x28");
  }
  if (labels.dims.size() != 1) {
    throw FormatError("'" + label_path + "': " + std::to_string(labels.dims.size()) +
                      " dimensions, expected 1");
  }
  if (images.dims[0] != labels.dims[0]) {
    throw FormatError("'" + image_path + "' has " + std::to_string(images.dims[0]) +
                      " images but '" + label_path + "' has " + std::to_string(labels.dims[0]) +
                      " labels");
  }
  if (images.dims[0] == 0) throw FormatError("'" + image_path + "': no images");
  for (size_t i = 0; i < labels.data.size(); ++i) {
    if (labels.data[i] >= 10) {
      throw FormatError("'" + label_path + "': label " + std::to_string(labels.data[i]) +
                        " at index " + std::to_string(i) + " out of range 0..9");
    }
  }
  const int64_t n = images.dims[0];
  Dataset d;
  d.name = "fashion-mnist";
  d.classes = 10;
  d.images = torch::from_blob(images.data.data(), {n, 1, 28, 28}, torch::kUInt8).clone();
  d.labels = torch::from_blob(labels.data.data(), {n}, torch::kUInt8).to(torch::kInt64);
  return d;
}

Dataset select(const Dataset& data, const torch::Tensor& index) {
  Dataset out = data;
  out.images = data.images.index_select(0, index);
  out.labels = data.labels.index_select(0, index);
  return out;
}

Dataset subset(const Dataset& data, int64_t n, uint64_t seed) {
  if (n <= 0 || n >= data.size()) return data;
  std::vector<int64_t> idx(static_cast<size_t>(data.size()));
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int64_t>(i);
  std::mt19937_64 rng(seed);
  // Partial Fisher-Yates with an explicit modulo-free draw keeps subsets identical across
  // standard libraries (std::uniform_int_distribution is implementation-defined).
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t span = idx.size() - static_cast<uint64_t>(i);
    const uint64_t limit = UINT64_MAX - UINT64_MAX % span;
    uint64_t r;
    do r = rng();
    while (r >= limit);
    std::swap(idx[static_cast<size_t>(i)], idx[static_cast<size_t>(i) + r % span]);
  }
  idx.resize(static_cast<size_t>(n));
  std::sort(idx.begin(), idx.end());
  return select(data, torch::tensor(idx, torch::kInt64));
}

torch::Tensor preprocess_batch(const torch::Tensor& images, const Preprocess& pp, bool augment,
                               bool flip) {
  auto x = images.to(torch::kFloat32).div_(255.0);
  if (pp.resize_to > 0 && (x.size(2) != pp.resize_to || x.size(3) != pp.resize_to)) {
    namespace F = torch::nn::functional;
    x = F::interpolate(x, F::InterpolateFuncOptions()
                              .size(std::vector<int64_t>{pp.resize_to, pp.resize_to})
                              .mode(torch::kBilinear)
                              .align_corners(false));
  }
  // Centred padding to pp.pad_to with pp.pad_value (before or after normalising).
  auto pad = [&pp](const torch::Tensor& t) {
    const int64_t h = t.size(2), w = t.size(3);
    if (pp.pad_to <= h && pp.pad_to <= w) return t;
    const int64_t ph = std::max<int64_t>(pp.pad_to - h, 0),
                  pw = std::max<int64_t>(pp.pad_to - w, 0);
    return torch::constant_pad_nd(t, {pw / 2, pw - pw / 2, ph / 2, ph - ph / 2}, pp.pad_value);
  };
  if (!pp.pad_normalised) x = pad(x);
  if (augment) {
    constexpr int64_t kBorder = 4;
    const int64_t b = x.size(0), hh = x.size(2), ww = x.size(3);
    auto padded = torch::constant_pad_nd(x, {kBorder, kBorder, kBorder, kBorder});
    auto offsets = torch::randint(0, 2 * kBorder + 1, {b, 2}, torch::kInt64);
    auto flips = torch::rand({b});
    auto out = torch::empty_like(x);
    auto off = offsets.accessor<int64_t, 2>();
    auto fl = flips.accessor<float, 1>();
    for (int64_t i = 0; i < b; ++i) {
      auto crop = padded[i].narrow(1, off[i][0], hh).narrow(2, off[i][1], ww);
      if (flip && fl[i] < 0.5f) crop = crop.flip({2});
      out[i].copy_(crop);
    }
    x = out;
  }
  if (pp.channels > 1 && x.size(1) == 1) x = x.expand({-1, pp.channels, -1, -1}).contiguous();
  const int64_t c = x.size(1);
  auto mean = torch::tensor(pp.mean, torch::kFloat64).to(torch::kFloat32).view({1, c, 1, 1});
  auto stdv = torch::tensor(pp.std, torch::kFloat64).to(torch::kFloat32).view({1, c, 1, 1});
  x.sub_(mean).div_(stdv);
  return pp.pad_normalised ? pad(x) : x;
}

}  // namespace corelocker
