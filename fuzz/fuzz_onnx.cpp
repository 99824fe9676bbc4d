// libFuzzer harness for the ONNX reader: any bytes must either parse or throw a
// corelocker::Error; never crash, hang or read out of bounds. External data references resolve
// against a folder that does not exist, so no file outside is ever read.
#include <cstddef>
#include <cstdint>

#include "formats/onnx/onnx_model.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    corelocker::OnnxModel m =
        corelocker::parse_onnx_model(data, size, "/nonexistent-corelocker-fuzz", "fuzz");
    (void)corelocker::onnx_fingerprint(m);
  } catch (const corelocker::Error&) {
  }
  return 0;
}
