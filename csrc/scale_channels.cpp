// scale_channels_, CPU kernel: w *= factor on every slice of the masked channels, one pass
// over the chunks holding a masked channel (an element of a masked row and a masked column is
// scaled twice, rows first, as a per-slice loop would).
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <vector>

#include "cpu_walk.h"
#include "oneprune.h"

namespace oneprune {
namespace {

void scale_channels_cpu(at::TensorList tensors, const at::Tensor& table, const at::Tensor& mask,
                        const at::Tensor& factor, c10::IntArrayRef frozen) {
  const LayoutCall call = check_scale_channels(tensors, table, mask, factor, frozen);
  const layout::Table& tab = call.table;
  const bool* mk = mask.data_ptr<bool>();
  const std::vector<int32_t> counts = cpu::mask_prefix(mk, tab.nchan);
  const std::vector<float> factors(static_cast<size_t>(tab.nchan), factor.item<float>());
  const cpu::TensorTable tt(tensors);
  const cpu::Coefs co{mk, factors.data()};
  cpu::for_each_chunk(tab, [&](int64_t, const layout::Tile& t, const layout::Chunk& c) {
    if (call.frozen[t.tensor] || !layout::chunk_has_masked_counted(t, c, counts.data())) return;
    cpu::dispatch_dtype(tt.dtype[t.tensor], [&](auto tag) {
      using T = decltype(tag);
      cpu::chunk_update<cpu::ScaleOp>(reinterpret_cast<T*>(tt.ptr[t.tensor]), static_cast<const T*>(nullptr), t, c,
                                      co);
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(oneprune, CPU, m) { m.impl("scale_channels_", &scale_channels_cpu); }

}  // namespace oneprune
