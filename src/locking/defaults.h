// Which units a lock takes when the user names no criterion, and what each of the paper's
// criteria means by name. Torch-free, so that both binaries (and every format) resolve the
// options the same way.
//
// The default lock ranks l1 units (conv kernels by sum |w|, linear weights by |w|) over the whole
// model with one threshold per kind of unit (the paper's "global extraction ratio"), first and
// last layers included. It is the product's choice, not the paper's: the paper's per-layer l1
// lock is undone by re-estimating BatchNorm statistics on a few hundred unlabelled images, while
// this one holds (docs/results.md, "Locks that hold", has the measurements behind it). Naming a
// criterion gives the paper's lock: l1 and random per layer, bn globally, first and last layers
// left alone.
#pragma once

#include <string>

#include "keyfile/key_file.h"

namespace corelocker {

// The paper's scope for a criterion: l1 (and random) rank per layer, bn globally.
Scope default_scope(Criterion c);

struct UnitChoice {
  Criterion criterion = Criterion::kL1;
  Scope scope = Scope::kGlobal;
  bool include_io = true;
};

// The default lock: l1, scope global, first and last layers included.
UnitChoice default_units();

// Resolves the user's options: `criterion` empty means the default lock, otherwise the paper's
// criterion of that name; a non-empty `scope` replaces the scope; `include_io` / `exclude_io`
// (at most one) replace the first/last-layer rule. Throws UsageError for unknown names or both
// io flags.
UnitChoice resolve_units(const std::string& criterion, const std::string& scope, bool include_io,
                         bool exclude_io);

// "default (l1, global, first/last included)" or "l1 (layer)": how reports name a choice.
std::string describe_units(const UnitChoice& u);

}  // namespace corelocker
