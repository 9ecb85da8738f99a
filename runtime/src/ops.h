// Parse functions of the ops (docs/packed-format.md §5, §6): each reads its fields through the loader
// (which validates tensors and registers), converts its weights once, and returns the op ready to run.
#pragma once
#include <memory>
#include <vector>

#include "loader.h"

namespace bhr {

std::unique_ptr<Op> parse_patch_conv(Fields& f, Loader& L);
std::unique_ptr<Op> parse_affine(Fields& f, Loader& L);
std::unique_ptr<Op> parse_sign_pack(Fields& f, Loader& L);
std::unique_ptr<Op> parse_avg_pool(Fields& f, Loader& L);
std::unique_ptr<Op> parse_mean_tokens(Fields& f, Loader& L);
std::unique_ptr<Op> parse_linear(Fields& f, Loader& L);
std::unique_ptr<Op> parse_shift_add(Fields& f, Loader& L);
std::unique_ptr<Op> parse_bconv(Fields& f, Loader& L);
std::unique_ptr<Op> parse_blinear(Fields& f, Loader& L);
std::unique_ptr<Op> parse_window_attention(Fields& f, Loader& L);

// Runtime-internal fusion of adjacent ops (same results); call after parsing, before planning buffers.
void fuse_ops(std::vector<std::unique_ptr<Op>>& ops, std::vector<Value>& values);

}  // namespace bhr
