// The C API (runtime/include/bhvit_runtime.h): argument checks, exceptions turned into one-line messages,
// nothing thrown across the boundary.
#include <algorithm>
#include <cstdlib>
#include <functional>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include "bhvit_runtime.h"
#include "kernels.h"
#include "error.h"
#include "image.h"
#include "model.h"
#include "safetensors.h"

struct bhvit_model {
  std::unique_ptr<bhr::Model> m;
};

namespace {

// The message as one line (bhr::one_line: control bytes as \xNN), truncated to errlen - 1 bytes.
void set_err(char* err, size_t errlen, const std::string& msg) {
  if (!err || errlen == 0) return;
  const std::string line = bhr::one_line(msg);
  const size_t n = std::min(errlen - 1, line.size());
  std::memcpy(err, line.data(), n);
  err[n] = '\0';
}

// Runs f, turning any exception into the message "<where>: <what>" (with the fix for bad files).
template <class F>
bool guarded(const char* where, char* err, size_t errlen, F&& f) {
  try {
    f();
    return true;
  } catch (const bhr::FileError& e) {
    set_err(err, errlen, std::string(where) + ": " + e.what() +
                             " (the file is damaged or was not written by `bhvit pack`; "
                             "re-create it with `bhvit pack`)");
  } catch (const std::bad_alloc&) {
    set_err(err, errlen, std::string(where) + ": out of memory; free memory or use a smaller batch");
  } catch (const std::exception& e) {
    set_err(err, errlen, std::string(where) + ": " + e.what());
  } catch (...) {
    set_err(err, errlen, std::string(where) + ": unknown error");
  }
  return false;
}

// BHVIT_ISA, applied at the first load that finds it valid (loads may run on several threads at once).
void apply_env_isa() {
  static std::mutex mu;
  static bool applied = false;
  const std::lock_guard<std::mutex> lock(mu);
  if (applied) return;
  const char* isa = std::getenv("BHVIT_ISA");
  if (isa && *isa) {
    try {
      bhv::set_isa(isa);
    } catch (const std::exception&) {
      std::string have;
      for (const std::string& s : bhv::available_isas()) have += (have.empty() ? "" : ", ") + s;
      bhr::fail(std::string("BHVIT_ISA=") + isa + " is not available on this CPU/build; use one of: " + have);
    }
  }
  applied = true;
}

// A run after the argument checks every run entry shares.
int run_checked(const char* where, bhvit_model* m, const float* images, int batch, float* logits, bhr::Profile* prof,
                char* err, size_t errlen) {
  const std::string w(where);
  if (!m) return set_err(err, errlen, w + ": model is NULL; load one with bhvit_load"), -1;
  if (!images || !logits) return set_err(err, errlen, w + ": images and logits must not be NULL"), -1;
  if (batch < 1) return set_err(err, errlen, w + ": batch must be >= 1, got " + std::to_string(batch)), -1;
  return guarded(where, err, errlen, [&] { m->m->run(images, batch, logits, prof); }) ? 0 : -1;
}

// The checks every 8-bit image entry shares (bhvit_run_rgb8, bhvit_preprocess_rgb8, ...): the model, the
// pixels and their sizes, and the output buffer; false (with the message in err) when one fails.
bool image_args_ok(const std::string& where, const bhvit_model* m, const bhr::Image8& im, const void* out,
                   const char* out_name, char* err, size_t errlen) {
  if (!m) return set_err(err, errlen, where + ": model is NULL; load one with bhvit_load"), false;
  const std::string problem = bhr::image_problem(im);
  if (!problem.empty()) return set_err(err, errlen, where + ": " + problem), false;
  if (!out) return set_err(err, errlen, where + ": " + out_name + " must not be NULL"), false;
  return true;
}

int preprocess_8bit(const char* where, const bhvit_model* m, const bhr::Image8& im, float* image, char* err,
                    size_t errlen) {
  if (!image_args_ok(where, m, im, image, "image", err, errlen)) return -1;
  return guarded(where, err, errlen, [&] { bhr::preprocess_image(*m->m, im, image); }) ? 0 : -1;
}

// Preprocesses into a buffer of its own, then runs batch 1.
int run_8bit(const char* where, bhvit_model* m, const bhr::Image8& im, float* logits, char* err, size_t errlen) {
  if (!image_args_ok(where, m, im, logits, "logits", err, errlen)) return -1;
  return guarded(where, err, errlen, [&] {
           const bhr::Model& model = *m->m;
           std::unique_ptr<float[]> input(new (std::nothrow)
                                              float[static_cast<size_t>(model.in_c * model.in_h * model.in_w)]);
           if (!input) bhr::fail("not enough memory for the model's input; free some memory");
           bhr::preprocess_image(model, im, input.get());
           m->m->run(input.get(), 1, logits, nullptr);
         })
             ? 0
             : -1;
}

// The caller's limits (NULL: the defaults), checked.
bhr::Limits limits_of(const bhvit_limits* l) {
  const bhr::Limits d = bhr::default_limits();
  if (!l) return d;
  const std::pair<const char*, uint64_t> fields[] = {{"header_bytes", l->header_bytes},
                                                     {"activation_bytes", l->activation_bytes},
                                                     {"binary_macs", l->binary_macs},
                                                     {"float_macs", l->float_macs}};
  for (const auto& f : fields)
    if (f.second == 0) bhr::fail(std::string("limits: ") + f.first + " is 0; start from bhvit_default_limits()");
  if (l->header_bytes > bhr::kMaxHeaderBytes)
    bhr::fail("limits: header_bytes " + std::to_string(l->header_bytes) + " is over the format's limit of " +
              std::to_string(bhr::kMaxHeaderBytes));
  return bhr::Limits{l->header_bytes, l->activation_bytes, l->binary_macs, l->float_macs};
}

bhvit_model* load_with(const char* where, const bhvit_limits* limits, char* err, size_t errlen,
                       const std::function<bhr::SafeTensors(uint64_t)>& read) {
  bhvit_model* out = nullptr;
  guarded(where, err, errlen, [&] {
    apply_env_isa();
    const bhr::Limits l = limits_of(limits);
    bhr::SafeTensors st = read(l.header_bytes);
    auto m = std::make_unique<bhvit_model>();
    m->m = bhr::load_model(st, l);
    out = m.release();
  });
  return out;
}
}  // namespace

extern "C" {

bhvit_limits bhvit_default_limits(void) {
  const bhr::Limits d = bhr::default_limits();
  return bhvit_limits{d.header_bytes, d.activation_bytes, d.binary_macs, d.float_macs};
}

bhvit_model* bhvit_load_ex(const char* path, const bhvit_limits* limits, char* err, size_t errlen) {
  if (!path) {
    set_err(err, errlen, "bhvit_load: path is NULL; pass the path of a .bhvp file");
    return nullptr;
  }
  const std::string where = std::string("bhvit_load: ") + path;
  return load_with(where.c_str(), limits, err, errlen,
                   [&](uint64_t max_header) { return bhr::SafeTensors::from_file(path, max_header); });
}

bhvit_model* bhvit_load(const char* path, char* err, size_t errlen) { return bhvit_load_ex(path, nullptr, err, errlen); }

bhvit_model* bhvit_load_memory_ex(const void* data, size_t size, const bhvit_limits* limits, char* err,
                                  size_t errlen) {
  return load_with("bhvit_load_memory", limits, err, errlen,
                   [&](uint64_t max_header) { return bhr::SafeTensors::from_memory(data, size, max_header); });
}

bhvit_model* bhvit_load_memory(const void* data, size_t size, char* err, size_t errlen) {
  return bhvit_load_memory_ex(data, size, nullptr, err, errlen);
}

int bhvit_get_cost(const bhvit_model* m, bhvit_cost* cost) {
  if (!m || !cost) return -1;
  const bhr::Cost& c = m->m->cost;
  *cost = bhvit_cost{c.activation_bytes, c.weight_bytes, c.binary_macs, c.float_macs};
  return 0;
}

int bhvit_input_dims(const bhvit_model* m, int* channels, int* height, int* width) {
  if (!m) return -1;
  if (channels) *channels = static_cast<int>(m->m->in_c);
  if (height) *height = static_cast<int>(m->m->in_h);
  if (width) *width = static_cast<int>(m->m->in_w);
  return 0;
}

int bhvit_num_classes(const bhvit_model* m) { return m ? static_cast<int>(m->m->num_classes) : -1; }

int bhvit_run(bhvit_model* m, const float* images, int batch, float* logits, char* err, size_t errlen) {
  return run_checked("bhvit_run", m, images, batch, logits, nullptr, err, errlen);
}

int bhvit_preprocess_rgb8(const bhvit_model* m, const uint8_t* pixels, int width, int height, size_t stride,
                          float* image, char* err, size_t errlen) {
  return preprocess_8bit("bhvit_preprocess_rgb8", m, bhr::Image8{pixels, width, height, stride, 3}, image, err,
                         errlen);
}

int bhvit_preprocess_grey8(const bhvit_model* m, const uint8_t* pixels, int width, int height, size_t stride,
                           float* image, char* err, size_t errlen) {
  return preprocess_8bit("bhvit_preprocess_grey8", m, bhr::Image8{pixels, width, height, stride, 1}, image, err,
                         errlen);
}

int bhvit_run_rgb8(bhvit_model* m, const uint8_t* pixels, int width, int height, size_t stride, float* logits,
                   char* err, size_t errlen) {
  return run_8bit("bhvit_run_rgb8", m, bhr::Image8{pixels, width, height, stride, 3}, logits, err, errlen);
}

int bhvit_run_grey8(bhvit_model* m, const uint8_t* pixels, int width, int height, size_t stride, float* logits,
                    char* err, size_t errlen) {
  return run_8bit("bhvit_run_grey8", m, bhr::Image8{pixels, width, height, stride, 1}, logits, err, errlen);
}

const char* bhvit_metadata(const bhvit_model* m, const char* key) {
  if (!m || !key) return nullptr;
  const auto it = m->m->metadata.find(key);
  return it == m->m->metadata.end() ? nullptr : it->second.c_str();
}

int bhvit_preprocess(const bhvit_model* m, float* mean, float* std, int* resize, char* err, size_t errlen) {
  if (!m) return set_err(err, errlen, "bhvit_preprocess: model is NULL"), -1;
  if (mean) std::memcpy(mean, m->m->mean.data(), sizeof(float) * m->m->mean.size());
  if (std) std::memcpy(std, m->m->std.data(), sizeof(float) * m->m->std.size());
  if (resize) *resize = static_cast<int>(m->m->resize);
  return 0;
}

const char* bhvit_label(const bhvit_model* m, int i) {
  if (!m || i < 0 || static_cast<size_t>(i) >= m->m->labels.size()) return nullptr;
  return m->m->labels[static_cast<size_t>(i)].c_str();
}

void bhvit_set_num_threads(int n) { bhv::set_num_threads(n < 1 ? bhv::default_num_threads() : n); }

int bhvit_get_num_threads(void) { return bhv::get_num_threads(); }

const char* bhvit_isa(void) {
  static thread_local std::string name;
  try {
    name = bhv::current_isa();
  } catch (...) {
    return "unknown";
  }
  return name.c_str();
}

const char* bhvit_isas(void) {
  static const std::string list = [] {  // fixed for the process: the CPU and the build decide it
    std::string s;
    for (const std::string& isa : bhv::available_isas()) s += (s.empty() ? "" : ",") + isa;
    return s;
  }();
  return list.c_str();
}

int bhvit_set_isa(const char* name, char* err, size_t errlen) {
  if (!name) return set_err(err, errlen, "bhvit_set_isa: name is NULL"), -1;
  return guarded("bhvit_set_isa", err, errlen, [&] {
           try {
             bhv::set_isa(name);
           } catch (const std::invalid_argument&) {
             std::string have;
             for (const std::string& s : bhv::available_isas()) have += (have.empty() ? "" : ", ") + s;
             bhr::fail(std::string("ISA '") + name + "' is not available on this CPU/build; use one of: " + have);
           }
         })
             ? 0
             : -1;
}

int bhvit_profile_kinds(const bhvit_model* m, const char** kinds, int n) {
  if (!m) return -1;
  int count = 0;
  for (int k = 0; k < bhr::kNumProf; ++k) {
    if (!m->m->kinds_used[k]) continue;
    if (kinds && count < n) kinds[count] = bhr::kProfNames[k];
    ++count;
  }
  return count;
}

int bhvit_run_profiled(bhvit_model* m, const float* images, int batch, float* logits, double* seconds, int n,
                       char* err, size_t errlen) {
  if (n > 0 && !seconds) return set_err(err, errlen, "bhvit_run_profiled: seconds is NULL but n > 0"), -1;
  bhr::Profile prof;
  const int status = run_checked("bhvit_run_profiled", m, images, batch, logits, &prof, err, errlen);
  if (status != 0) return status;
  int count = 0;
  for (int k = 0; k < bhr::kNumProf; ++k) {
    if (!m->m->kinds_used[k]) continue;
    if (count < n) seconds[count] = prof.seconds[k];
    ++count;
  }
  return 0;
}

void bhvit_free(bhvit_model* m) { delete m; }

}  // extern "C"
