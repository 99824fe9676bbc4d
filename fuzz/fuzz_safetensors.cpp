// libFuzzer harness for the safetensors header parser: any bytes must either parse into tensors
// that tile the data region or throw a corelocker::Error; never crash, hang or read out of bounds.
#include <cstddef>
#include <cstdint>

#include "formats/safetensors/safetensors.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const corelocker::StHeader h = corelocker::parse_st_header(data, size, size, "fuzz");
    uint64_t at = 0;
    for (const auto& t : h.tensors) {
      if (t.begin != at || t.end > h.data_size) __builtin_trap();
      at = t.end;
    }
    if (at != h.data_size) __builtin_trap();
  } catch (const corelocker::Error&) {
  }
  return 0;
}
