#include "locking/defaults.h"

#include "util/error.h"

namespace corelocker {

Scope default_scope(Criterion c) { return c == Criterion::kBn ? Scope::kGlobal : Scope::kLayer; }

UnitChoice default_units() { return UnitChoice{Criterion::kL1, Scope::kGlobal, true}; }

UnitChoice resolve_units(const std::string& criterion, const std::string& scope, bool include_io,
                         bool exclude_io) {
  if (include_io && exclude_io) throw UsageError("give --include-io or --exclude-io, not both");
  UnitChoice u = default_units();
  if (!criterion.empty() && criterion != "default") {
    u.criterion = parse_criterion(criterion);
    u.scope = default_scope(u.criterion);
    u.include_io = false;
  }
  if (!scope.empty()) u.scope = parse_scope(scope);
  if (include_io) u.include_io = true;
  if (exclude_io) u.include_io = false;
  return u;
}

std::string describe_units(const UnitChoice& u) {
  const UnitChoice d = default_units();
  const bool default_ranking = u.criterion == d.criterion && u.scope == d.scope;
  const bool is_default = default_ranking && u.include_io == d.include_io;
  std::string s = is_default                        ? "default (l1, "
                  : default_ranking && d.include_io ? "default without first/last (l1, "
                                                    : std::string(to_string(u.criterion)) + " (";
  s += to_string(u.scope);
  if (u.include_io) s += ", first/last included";
  return s + ")";
}

}  // namespace corelocker
