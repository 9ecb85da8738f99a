// Op dispatch: the "op" field picks the parse function; every op object is checked for unknown fields and
// for the rule that outputs differ from inputs (§4).
#include "ops.h"

#include <cstring>

namespace bhr {

namespace {
struct Entry {
  const char* name;
  std::unique_ptr<Op> (*parse)(Fields&, Loader&);
};
const Entry kOps[] = {
    {"patch_conv", parse_patch_conv}, {"affine", parse_affine},           {"sign_pack", parse_sign_pack},
    {"avg_pool", parse_avg_pool},     {"bconv", parse_bconv},             {"blinear", parse_blinear},
    {"shift_add", parse_shift_add},   {"window_attention", parse_window_attention},
    {"mean_tokens", parse_mean_tokens}, {"linear", parse_linear},
};
}  // namespace

std::unique_ptr<Op> parse_op(Json j, int index, Loader& L) {
  const std::string where = "op " + std::to_string(index);
  Fields head(j, where);
  const std::string kind = head.str("op");
  for (const Entry& e : kOps) {
    if (kind != e.name) continue;
    Fields f(j, where + " (" + kind + ")");
    f.opt("op");
    L.begin_op(index);
    std::unique_ptr<Op> op = e.parse(f, L);
    f.finish();
    L.end_op(f);
    if (op->prof_kind() >= 0) L.use(op->prof_kind());
    return op;
  }
  std::string known;
  for (const Entry& e : kOps) known += std::string(known.empty() ? "" : ", ") + e.name;
  head.error("op", "unknown op '" + kind + "' (this runtime knows " + known + ")");
}

}  // namespace bhr
