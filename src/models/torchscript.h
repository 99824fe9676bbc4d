// Models the owner brings as TorchScript files (torch.jit.script or torch.jit.trace output).
// The extractable layers, their order and the conv -> BN wiring are read from the module's
// inlined forward graph (attribute reads followed back to parameter names), not guessed from
// names. Locked models stay TorchScript files; our metadata travels as an extra file of the
// archive ("corelocker_meta.json"), which PyTorch ignores.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/checkpoint.h"

namespace corelocker {

constexpr const char* kTorchScriptArch = "torchscript";
constexpr const char* kTorchScriptMetaFile = "corelocker_meta.json";

// A TorchScript module seen as a Network. Parameters and buffers keep the module's own dotted
// names ("layer1.0.conv1.weight") and share storage with it.
class TorchScriptNetwork : public Network {
 public:
  struct Impl;
  explicit TorchScriptNetwork(std::shared_ptr<Impl> impl);
  ~TorchScriptNetwork() override;

  torch::Tensor forward(torch::Tensor x) override;
  void train(bool on = true) override;
  std::vector<NamedTensor> tensors() const;
  // A deep copy: its own module object, parameters and buffers (cloned, trainable as here),
  // sharing nothing with this one.
  std::shared_ptr<TorchScriptNetwork> deep_copy() const;
  // Puts every submodule that keeps BatchNorm running statistics (running_mean and running_var
  // buffers of its own) in evaluation mode, so that they stay as they are while the rest trains.
  void freeze_batchnorm_statistics();
  // BatchNorm layers of the structure whose graph fixes evaluation mode (the training flag of
  // their batch_norm call is a constant false, as torch.jit.trace records it): they never
  // update their running statistics, whatever mode the module is in. Empty for scripted modules.
  const std::vector<std::string>& batchnorms_fixed_in_eval() const;
  // Writes the module (with its current tensors) and `extra_meta_json` as the extra file.
  void save(const std::string& path, const std::string& extra_meta_json) const;

 private:
  std::shared_ptr<Impl> impl_;
};

// Loads a TorchScript file. Metadata comes from the archive's corelocker_meta.json when we
// wrote one; otherwise arch "torchscript" with Fashion-MNIST input (1x28x28, its mean and
// std, 10 classes) and meta_stored false, so that the commands' preprocessing options apply.
// Throws IoError / FormatError (not TorchScript, no forward, nothing extractable found).
LoadedModel load_torchscript(const std::string& path);

// Writes a model loaded by load_torchscript, atomically. Throws IoError / UsageError.
void save_torchscript(const std::string& path, LoadedModel& model);

// Wraps a TorchScript module in memory (the Python module's lock of a torch.jit.script output)
// without copying it: the network's tensors are the module's own, so a lock changes the module.
// Metadata as for a file without corelocker_meta.json; `what` names the module in errors. The
// module's training flags stay as they are. Throws FormatError (no forward, nothing extractable).
LoadedModel wrap_torchscript(const torch::jit::Module& module, const std::string& what);

}  // namespace corelocker
