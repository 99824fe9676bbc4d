#include "keyfile/unit_list.h"

#include <algorithm>

#include "util/error.h"

namespace corelocker {

UnitList::UnitList(std::initializer_list<uint64_t> units) {
  for (const uint64_t u : units) push_back(u);
}

void UnitList::throw_negative(int64_t unit) {
  throw Error("unit index " + std::to_string(unit) + " is negative");
}

void UnitList::push_back(uint64_t unit) {
  if (count_ > 0 && unit <= last_) {
    throw Error("unit index " + std::to_string(unit) + " after " + std::to_string(last_) +
                ": unit lists are strictly increasing");
  }
  uint64_t v = count_ == 0 ? unit : unit - last_ - 1;
  while (v >= 0x80) {
    bytes_.push_back(static_cast<uint8_t>(v | 0x80));
    v >>= 7;
  }
  bytes_.push_back(static_cast<uint8_t>(v));
  last_ = unit;
  ++count_;
}

void UnitList::clear() {
  bytes_.clear();
  count_ = 0;
  last_ = 0;
}

UnitList UnitList::decode(const uint8_t* p, uint64_t size, uint64_t count, uint64_t limit,
                          const std::string& at) {
  if (count > size) {
    throw FormatError(at + ": " + std::to_string(count) +
                      " unit indices cannot fit in an index block of " + std::to_string(size) +
                      " bytes");
  }
  uint64_t pos = 0, next = 0, last = 0;
  for (uint64_t i = 0; i < count; ++i) {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      if (pos == size) {
        throw FormatError(at + ": index block of " + std::to_string(size) +
                          " bytes ends inside index " + std::to_string(i));
      }
      const uint8_t b = p[pos++];
      if (shift == 63 && b > 1)
        throw FormatError(at + ": index " + std::to_string(i) + " overflows 64 bits");
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) {
        if (b == 0 && shift > 0)
          throw FormatError(at + ": index " + std::to_string(i) + " is not minimally encoded");
        break;
      }
    }
    if (v >= limit || next > limit - 1 - v) {
      const std::string index =
          v >= limit ? std::to_string(v) + " or more" : std::to_string(next + v);
      throw FormatError(at + ": unit index " + index + " out of range (tensor has " +
                        std::to_string(limit) + " units)");
    }
    last = next + v;
    next = last + 1;
  }
  if (pos != size) {
    throw FormatError(at + ": index block of " + std::to_string(size) + " bytes holds " +
                      std::to_string(count) + " indices in " + std::to_string(pos) + " bytes");
  }
  // Checked: minimal, in range and increasing, so the block is this list's own encoding.
  UnitList out;
  out.bytes_.assign(p, p + size);
  out.count_ = count;
  out.last_ = last;
  return out;
}

UnitList UnitList::merge(const UnitList& a, const UnitList& b) {
  UnitList out;
  out.bytes_.reserve(std::max(a.bytes_.size(), b.bytes_.size()) +
                     std::min(a.bytes_.size(), b.bytes_.size()));
  auto i = a.begin(), j = b.begin();
  const auto ie = a.end(), je = b.end();
  while (i != ie || j != je) {
    uint64_t u;
    if (j == je || (i != ie && *i < *j)) {
      u = *i++;
    } else if (i == ie || *j < *i) {
      u = *j++;
    } else {
      u = *i++;
      ++j;
    }
    out.push_back(u);
  }
  out.shrink_to_fit();
  return out;
}

std::string to_string(const UnitList& units) {
  std::string s = "{";
  size_t n = 0;
  for (const uint64_t u : units) {
    if (n == 16) {
      s += ", ...";
      break;
    }
    if (n++ > 0) s += ", ";
    s += std::to_string(u);
  }
  return s + "} (" + std::to_string(units.size()) + " units)";
}

}  // namespace corelocker
