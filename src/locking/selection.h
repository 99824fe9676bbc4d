// Which units a lock extracts. Units are ranked once per criterion (the ranking can be reused
// across ratios, tiers and sweeps); a plan takes the top fraction of each group.
//
//   l1      conv kernel F[o,i,:,:] scored by sum |w|; linear weight W[i,j] scored by |W[i,j]|
//   bn      BatchNorm / LayerNorm channel c scored by |gamma_c|; takes gamma_c, beta_c and, when
//           an eligible conv feeds the norm directly, that conv's filter F[c,:,:,:] and bias
//   random  the l1 units (or the bn units) in a seeded uniformly random order
//
// Scope `layer` ranks inside each eligible layer and takes the same fraction of each; scope
// `global` ranks all units of a kind (conv kernels, linear weights, norm channels) together.
// Eligible: every layer of the structure except the first and the last, unless include_io, and
// except the layers LockOptions::keep names.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "keyfile/key_file.h"
#include "locking/defaults.h"
#include "models/network.h"

namespace corelocker {

struct LockOptions {
  Criterion criterion = Criterion::kL1;
  Scope scope = Scope::kLayer;
  double ratio = 0.05;
  uint64_t seed = 0;
  bool include_io = false;
  bool random_bn_units = false;  // random criterion: draw bn units instead of l1 units
  Fill fill = Fill::kZero;       // what extracted positions hold in the locked model
  // Layers left alone: glob patterns (fnmatch) on a layer's name or its weight tensor's name.
  std::vector<std::string> keep;
};

// The names of the layers `keep` leaves alone, in structure order. Throws UsageError when a
// pattern matches no layer (a typo would otherwise lock what the owner meant to keep).
std::vector<std::string> kept_layers(const Structure& structure,
                                     const std::vector<std::string>& keep);

// The LockOptions of a resolved choice of units (locking/defaults.h) at `ratio`.
LockOptions lock_options_for(const UnitChoice& units, double ratio);

struct RankedUnit {
  int layer;      // index into the structure
  int64_t index;  // unit index within the layer
  float score;
};

// Units competing for one fraction: one layer (scope layer) or one kind of unit (scope global).
struct UnitGroup {
  std::string label;
  std::vector<RankedUnit> ranked;  // best first
};

struct Ranking {
  LockOptions options;  // ratio unused
  std::vector<UnitGroup> groups;
  int64_t total_units() const;
};

// Ranks the units of the eligible layers. Throws UsageError when there is nothing eligible
// (for example bn on a network without normalisation layers) and Error when a tensor the
// structure names is missing.
Ranking rank_units(const std::vector<NamedTensor>& tensors, const Structure& structure,
                   const LockOptions& options);

struct PlanEntry {
  std::string tensor;
  int64_t unit_size = 1;
  UnitList units;  // strictly increasing
};

// A unit list as LibTorch index tensor (int64) or as plain indices.
torch::Tensor unit_tensor(const UnitList& units);
std::vector<int64_t> unit_vector(const UnitList& units);

struct ExtractionPlan {
  std::vector<PlanEntry> entries;  // in structure order
  int64_t units = 0;               // units as the criterion counts them
};

// Number of units a group of n contributes at `ratio` (rounded to nearest).
int64_t units_at_ratio(int64_t n, double ratio);

// The top `ratio` of every group, expanded into per-tensor unit indices.
ExtractionPlan plan_at(const Ranking& ranking, const std::vector<NamedTensor>& tensors,
                       const Structure& structure, double ratio);

struct UnitSelection {
  ExtractionPlan plan;
  int64_t candidates = 0;  // units that competed (Ranking::total_units())
};

// The plan of one lock at options.ratio: the same plan, entry for entry, as plan_at(rank_units(
// tensors, structure, options), tensors, structure, options.ratio), found without ranking every
// unit: a histogram of scores finds each group's k-th best, a second pass takes the units above
// it (memory: a histogram per group, the units taken and those scored near the k-th; freed pages
// go back to the kernel before it returns, so the key built next does not land beside them).
// Throws what those two throw.
UnitSelection select_units(const std::vector<NamedTensor>& tensors, const Structure& structure,
                           const LockOptions& options);

}  // namespace corelocker
