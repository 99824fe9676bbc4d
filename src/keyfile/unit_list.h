// A strictly increasing list of unit indices, held in memory as the key file holds it: unsigned
// LEB128 numbers, the first index, then each index's distance to the one before minus 1. A 5%
// lock of single weights takes about 1.1 bytes an index instead of 8, which is what lets a lock
// in memory hold no more than its key file (issue 21's memory bar); plans and keys both use it.
//
// The list is read front to back (a forward iterator); it has no random access. Equal lists have
// equal bytes: the encoding is minimal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <string>
#include <type_traits>
#include <vector>

namespace corelocker {

class UnitList {
 public:
  using value_type = uint64_t;
  using size_type = size_t;

  class const_iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = uint64_t;
    using difference_type = std::ptrdiff_t;
    using pointer = const uint64_t*;
    using reference = const uint64_t&;

    const_iterator() = default;
    reference operator*() const { return value_; }
    pointer operator->() const { return &value_; }
    const_iterator& operator++() {
      at_ = next_;
      if (at_ != end_) value_ += read(next_) + 1;
      return *this;
    }
    const_iterator operator++(int) {
      const_iterator old = *this;
      ++*this;
      return old;
    }
    friend bool operator==(const const_iterator& a, const const_iterator& b) {
      return a.at_ == b.at_;
    }
    friend bool operator!=(const const_iterator& a, const const_iterator& b) {
      return a.at_ != b.at_;
    }

   private:
    friend class UnitList;
    const_iterator(const uint8_t* at, const uint8_t* end) : at_(at), next_(at), end_(end) {
      if (at_ != end_) value_ = read(next_);
    }
    // Decodes the number at p and moves p past it (the bytes were checked when stored).
    static uint64_t read(const uint8_t*& p) {
      uint64_t v = 0;
      for (int shift = 0;; shift += 7) {
        const uint8_t b = *p++;
        v |= static_cast<uint64_t>(b & 0x7f) << shift;
        if ((b & 0x80) == 0) return v;
      }
    }
    const uint8_t* at_ = nullptr;    // the current index's first byte (end_: past the end)
    const uint8_t* next_ = nullptr;  // the next index's first byte
    const uint8_t* end_ = nullptr;
    uint64_t value_ = 0;
  };
  using iterator = const_iterator;

  UnitList() = default;
  UnitList(std::initializer_list<uint64_t> units);
  // From any strictly increasing, non-negative range; throws Error otherwise.
  template <typename It>
  UnitList(It first, It last) {
    for (; first != last; ++first) {
      const auto v = *first;
      if constexpr (std::is_signed_v<std::decay_t<decltype(v)>>) {
        if (v < 0) throw_negative(static_cast<int64_t>(v));
      }
      push_back(static_cast<uint64_t>(v));
    }
  }

  // Appends `unit`, which must be greater than back(); throws Error otherwise.
  void push_back(uint64_t unit);
  size_t size() const { return count_; }
  bool empty() const { return count_ == 0; }
  uint64_t front() const { return *begin(); }  // non-empty lists only
  uint64_t back() const { return last_; }      // non-empty lists only
  const_iterator begin() const { return {bytes_.data(), bytes_.data() + bytes_.size()}; }
  const_iterator end() const {
    return {bytes_.data() + bytes_.size(), bytes_.data() + bytes_.size()};
  }
  void clear();
  // Frees the capacity beyond the encoded bytes (a list built by push_back may hold up to twice).
  void shrink_to_fit() { bytes_.shrink_to_fit(); }
  // Room for about `units` more indices without reallocating (one byte each).
  void reserve(size_t units) { bytes_.reserve(bytes_.size() + units); }

  // The encoded bytes: the key file's version-3 index block.
  const std::vector<uint8_t>& encoded() const { return bytes_; }
  // Bytes held, capacity included.
  size_t memory() const { return bytes_.capacity(); }
  std::vector<uint64_t> to_vector() const { return {begin(), end()}; }

  // A list from a key file's index block: `count` numbers in exactly `size` bytes, each index
  // below `limit`. Refuses overlong, overflowing and non-minimal numbers; `at` names the block in
  // the FormatError.
  static UnitList decode(const uint8_t* p, uint64_t size, uint64_t count, uint64_t limit,
                         const std::string& at);

  // The union of two lists.
  static UnitList merge(const UnitList& a, const UnitList& b);

  friend bool operator==(const UnitList& a, const UnitList& b) {
    return a.count_ == b.count_ && a.bytes_ == b.bytes_;
  }
  friend bool operator!=(const UnitList& a, const UnitList& b) { return !(a == b); }

 private:
  [[noreturn]] static void throw_negative(int64_t unit);

  std::vector<uint8_t> bytes_;
  size_t count_ = 0;
  uint64_t last_ = 0;
};

// gtest and error messages: "{3, 7, 9}" (the first 16 indices, then "...").
std::string to_string(const UnitList& units);

}  // namespace corelocker
