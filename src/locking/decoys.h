// Decoy fill: what the extracted positions hold in a locked model when they are not zeroed, so
// that the locked weights do not show where the key was taken. Restore never depends on it (the
// key holds the original values).
//
//   decoy     (Fill::kDecoy) Conv kernels (kh x kw with kh*kw >= 2) are drawn from a model of the
//             same tensor's remaining kernels, fitted at lock time:
//               shape  = the tensor's mean kernel shape (unit l2 norm) + the filter's and the input
//                        channel's effects (a two-way random-effects model of the remaining
//                        kernels: each filter's and each channel's effect is drawn once from its
//                        distribution given the remaining kernels, the shrunk best linear
//                        prediction plus the part it leaves unexplained, and shared by the decoys
//                        of that filter / channel), + a residual drawn from a Gaussian copula of
//                        the remaining kernels' residuals; the residual model (copula over kernel
//                        positions or over principal coordinates, copula or Gaussian marginals,
//                        lengths, and scale where the moments are not matched) is chosen per
//                        tensor from a small grid so that the decoys' mean roughness, sparsity,
//                        peak share, sign balance and Mahalanobis distance match the remaining
//                        kernels'. Where the tensor has at least 4*kh*kw decoys and as many
//                        remaining kernels, each candidate's shapes are mapped to the remaining
//                        kernels' mean and covariance (the least-moving linear map, then back to
//                        unit norm), and the kept one to their mean sparsity by an elementwise
//                        power sign(x)|x|^p: when decoys outnumber the kernels (the default lock
//                        takes most of the first stage), the kernels stand out under the tensor's
//                        covariance unless the decoys share it;
//               size   = an l1 norm from a smoothed bootstrap of the remaining kernels' norms
//                        (log scale, variance kept), so no decoy shares a norm with a kernel.
//             A decoy copies no kernel: whole-kernel copies (with sign flips, flips and turns)
//             are found by a nearest-twin search at 10x chance (docs/keys.md). A tensor with
//             fewer than max(32, 4*kh*kw) remaining kernels (for example the stem the default
//             lock takes whole) draws its shapes (and, below 8 remaining kernels, its norms)
//             from the remaining kernels of every tensor with the same kernel shape, without
//             filter or channel effects; with no such kernel anywhere its decoys are 0.
//             Whole-filter units (the bn criterion) are drawn kernel by kernel, then scaled to
//             a smoothed draw of the remaining filters' l1 norms. Every other unit (linear
//             weights, 1x1 kernels, norm channels): each element is the sign of a random
//             remaining element times a smoothed draw of the remaining magnitudes (the unit
//             rescaled to a smoothed draw of the remaining unit norms when it has several
//             elements).
//   decoy-v1  (Fill::kDecoyV1) The first generator, kept to read and compare old locks: the l1
//             norm of a random remaining unit, elements drawn from random positions of random
//             remaining units. Its decoys lose the spatial correlation of a trained kernel
//             (a roughness ranking finds them) and share their norm with a real unit.
#pragma once

#include <cstdint>
#include <vector>

#include "keyfile/key_file.h"
#include "locking/selection.h"
#include "models/network.h"

namespace corelocker {

// Overwrites the plan's units in `tensors` with decoys of kind `fill` (kDecoy or kDecoyV1),
// deterministically in `seed`. Donors are the units in neither `plan` nor `no_donors` (for
// example units a later tier extracts), and kernels that are not exactly zero. Throws Error
// when the plan names a tensor `tensors` lacks or `fill` is kZero.
void fill_decoys(std::vector<NamedTensor>& tensors, const ExtractionPlan& plan,
                 const ExtractionPlan* no_donors, Fill fill, uint64_t seed);

// The kernel shape statistics the decoy model matches, for tests and the detector: per kernel of
// `kernels` [n, kh*kw], with kernel height kh and width kw.
struct KernelShapeStats {
  torch::Tensor roughness;   // sum of squared differences of neighbouring elements / energy
  torch::Tensor sparsity;    // l1 / (l2 * sqrt(kh*kw)): 1 for a flat kernel, smaller when peaked
  torch::Tensor peak_share;  // largest |element| / l1
};
KernelShapeStats kernel_shape_stats(const torch::Tensor& kernels, int64_t kh, int64_t kw);

}  // namespace corelocker
