#include "formats/onnx/onnx_runtime.h"

#include <cstdint>
#include <opencv2/core.hpp>
#include <opencv2/core/utils/logger.hpp>
#include <opencv2/dnn.hpp>

#include "util/error.h"

namespace corelocker {

struct OnnxRuntime::Impl {
  cv::dnn::Net net;
  std::string what;
  std::string output;  // the layer of the graph's first output
};

namespace {

// OpenCV logs import errors to stderr before it throws; the library never prints.
class QuietOpenCv {
 public:
  QuietOpenCv() : saved_(cv::utils::logging::setLogLevel(cv::utils::logging::LOG_LEVEL_SILENT)) {}
  ~QuietOpenCv() { cv::utils::logging::setLogLevel(saved_); }
  QuietOpenCv(const QuietOpenCv&) = delete;
  QuietOpenCv& operator=(const QuietOpenCv&) = delete;

 private:
  cv::utils::logging::LogLevel saved_;
};

std::string between(const std::string& s, const std::string& open, const std::string& close) {
  const size_t a = s.find(open);
  if (a == std::string::npos) return "";
  const size_t b = s.find(close, a + open.size());
  if (b == std::string::npos) return "";
  return s.substr(a + open.size(), b - a - open.size());
}

// The innermost reason of an OpenCV message ("OpenCV(4.6.0) file:line: error: (-2:...) REASON in
// function 'f'"), on one line.
std::string reason(const std::string& msg) {
  std::string s = msg;
  const size_t e = s.rfind("error: (");
  if (e != std::string::npos) {
    const size_t close = s.find(") ", e);
    if (close != std::string::npos) s = s.substr(close + 2);
  }
  const size_t fn = s.find(" in function");
  if (fn != std::string::npos) s = s.substr(0, fn);
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '>' || s.back() == ']')) s.pop_back();
  return s;
}

// "node 'n' (op Op): reason" when OpenCV's import message names a node ("Node [Op@domain]:
// (onnx_node!n) parse error: ..."); otherwise the reason alone.
std::string import_failure(const cv::Exception& e) {
  const std::string msg = e.msg;
  const std::string op = between(msg, "Node [", "]");
  std::string node = between(msg, "]:(", ") parse error");
  const std::string prefix = "onnx_node!";
  if (node.compare(0, prefix.size(), prefix) == 0) node = node.substr(prefix.size());
  const std::string why = reason(msg);
  if (op.empty()) return why;
  const std::string op_name = op.substr(0, op.find('@'));
  return "node '" + node + "' (op " + op_name + ") cannot be imported: " + why;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The name of the layer OpenCV made for an ONNX node: "onnx_node!NAME" (OpenCV 4.6), or NAME
// itself (older importers); empty when there is none.
std::string layer_of(const cv::dnn::Net& net, const std::string& node) {
  for (const std::string& name : {"onnx_node!" + node, node}) {
    if (net.getLayerId(name) >= 0) return name;
  }
  return "";
}

FloatBlob to_blob(const cv::Mat& m, const std::string& what) {
  if (m.type() != CV_32F)
    throw Error(what + ": OpenCV returned a blob of type " + std::to_string(m.type()) +
                ", not float32");
  FloatBlob b;
  for (int i = 0; i < m.dims; ++i) b.shape.push_back(m.size[i]);
  const cv::Mat c = m.isContinuous() ? m : m.clone();
  const float* p = c.ptr<float>();
  b.values.assign(p, p + c.total());
  return b;
}

}  // namespace

OnnxRuntime::OnnxRuntime(const std::string& serialized, const std::string& what, bool fuse)
    : impl_(std::make_unique<Impl>()) {
  impl_->what = what;
  QuietOpenCv quiet;
  try {
    impl_->net = cv::dnn::readNetFromONNX(serialized.data(), serialized.size());
  } catch (const cv::Exception& e) {
    throw FormatError(what + ": " + onnx_runtime_name() + " cannot run it: " + import_failure(e));
  }
  if (impl_->net.empty())
    throw FormatError(what + ": " + onnx_runtime_name() + " imported an empty network");
  impl_->net.setPreferableBackend(cv::dnn::DNN_BACKEND_OPENCV);
  impl_->net.setPreferableTarget(cv::dnn::DNN_TARGET_CPU);
  impl_->net.enableFusion(fuse);
  const std::vector<cv::String> outs = impl_->net.getUnconnectedOutLayersNames();
  if (outs.empty()) throw FormatError(what + ": the network OpenCV imported has no output");
  impl_->output = outs.front();
}

OnnxRuntime::~OnnxRuntime() = default;
OnnxRuntime::OnnxRuntime(OnnxRuntime&&) noexcept = default;
OnnxRuntime& OnnxRuntime::operator=(OnnxRuntime&&) noexcept = default;

bool OnnxRuntime::has_node(const std::string& node) const {
  return !layer_of(impl_->net, node).empty();
}

std::vector<FloatBlob> OnnxRuntime::forward(const float* input, const std::vector<int64_t>& shape,
                                            const std::vector<std::string>& nodes) {
  const std::string& what = impl_->what;
  std::vector<int> dims;
  for (int64_t d : shape) {
    if (d < 1 || d > INT32_MAX)
      throw Error(what + ": input shape " + shape_str(shape) + " has an invalid dimension");
    dims.push_back(static_cast<int>(d));
  }
  if (dims.empty()) throw Error(what + ": input without dimensions");
  std::vector<cv::String> names;
  if (nodes.empty()) names.push_back(impl_->output);
  for (const std::string& n : nodes) {
    const std::string layer = layer_of(impl_->net, n);
    if (layer.empty())
      throw Error(what + ": node '" + n + "' has no layer in the network OpenCV imported");
    names.push_back(layer);
  }
  QuietOpenCv quiet;
  std::vector<cv::Mat> outs;
  try {
    // OpenCV reads the input while it runs; the caller's buffer outlives the call.
    const cv::Mat x(static_cast<int>(dims.size()), dims.data(), CV_32F, const_cast<float*>(input));
    impl_->net.setInput(x);
    impl_->net.forward(outs, names);
  } catch (const cv::Exception& e) {
    throw Error(what + ": " + onnx_runtime_name() + " forward pass failed on input of shape " +
                shape_str(shape) + ": " + reason(e.msg));
  }
  if (outs.size() != names.size()) {
    throw Error(what + ": OpenCV returned " + std::to_string(outs.size()) + " outputs, expected " +
                std::to_string(names.size()));
  }
  std::vector<FloatBlob> out;
  for (const cv::Mat& m : outs) out.push_back(to_blob(m, what));
  return out;
}

void set_onnx_runtime_threads(int n) {
  if (n < 1) throw UsageError("threads " + std::to_string(n) + ": must be >= 1");
  cv::setNumThreads(n);
}

std::string onnx_runtime_name() { return std::string("OpenCV ") + CV_VERSION + " (dnn)"; }

}  // namespace corelocker
