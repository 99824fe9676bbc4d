// Checks, at the start of a command run by a group, that every rank works on the same files:
// a mismatch would otherwise make the ranks' shares of one computation disagree silently.
#pragma once

#include <string>

#include "data/dataset.h"
#include "distributed/collective.h"
#include "models/checkpoint.h"

namespace corelocker {

// Every rank has the same images and labels (count and digests). Throws UsageError on every
// rank naming the first rank that differs (Collective::agree).
void agree_on_data(Collective& group, const std::string& what, const Dataset& data);

// Every rank has the same weights and buffers (the model's fingerprint).
void agree_on_model(Collective& group, const std::string& what, const LoadedModel& model);

}  // namespace corelocker
