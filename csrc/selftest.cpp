// Standalone self-test of the per-ISA kernels against the portable ones, bit for bit, over awkward
// sizes. Needs no Python, so it also runs under an emulator for other architectures, e.g.
//   aarch64-linux-gnu-g++ -O2 -std=c++17 -static -Icsrc csrc/selftest.cpp csrc/isa_*.cpp -o selftest
//   qemu-aarch64 ./selftest
// (on x86-64, compile isa_avx2.cpp etc. with the flags listed in setup.py).
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "bitpack.h"

namespace {

int check_isa(const bhv::IsaKernels* k, const bhv::IsaKernels* ref, std::mt19937_64& rng) {
  int failures = 0;
  const int64_t ks[] = {1, 3, 31, 33, 63, 64, 65, 127, 128, 1984, 1985, 2048};
  const int64_t ms[] = {1, 3, 5, 8, 9, 17};
  for (int64_t K : ks)
    for (int64_t M : ms) {
      const int64_t KW = bhv::words_for(K), N = 13, NP = bhv::panels_for(N);
      std::vector<float> x(M * K), bias(K);
      std::normal_distribution<float> nd;
      for (float& v : x) v = nd(rng);
      for (float& v : bias) v = nd(rng);
      std::vector<uint64_t> a(M * KW), a_ref(M * KW);
      k->pack_rows(x.data(), K, M, K, bias.data(), a.data());
      ref->pack_rows(x.data(), K, M, K, bias.data(), a_ref.data());
      if (a != a_ref) ++failures, std::printf("%s pack_rows K=%lld M=%lld\n", k->name, (long long)K, (long long)M);
      std::vector<uint64_t> bp(NP * KW * 8, 0);
      for (int64_t n = 0; n < N; ++n)
        for (int64_t w = 0; w < KW; ++w) {
          uint64_t v = rng();
          if (w == KW - 1 && K % 64) v &= (uint64_t(1) << (K % 64)) - 1;
          bp[((n / 8) * KW + w) * 8 + n % 8] = v;
        }
      for (bool op_and : {false, true}) {
        std::vector<int32_t> p(M * NP * 8), p_ref(M * NP * 8);
        k->popc_block(a.data(), KW, M, bp.data(), 0, NP, KW, op_and, p.data(), NP * 8);
        ref->popc_block(a.data(), KW, M, bp.data(), 0, NP, KW, op_and, p_ref.data(), NP * 8);
        if (p != p_ref)
          ++failures, std::printf("%s popc_block K=%lld M=%lld and=%d\n", k->name, (long long)K, (long long)M, op_and);
      }
    }
  return failures;
}

}  // namespace

int main() {
  std::mt19937_64 rng(42);
  const bhv::IsaKernels* ref = bhv::isa_generic();
  int failures = 0, tested = 0;
  for (auto f : {bhv::isa_avx512vpopcnt, bhv::isa_avx512bw, bhv::isa_avx2, bhv::isa_neon, bhv::isa_popcnt}) {
    if (const bhv::IsaKernels* k = f()) {
      failures += check_isa(k, ref, rng);
      std::printf("checked %s\n", k->name);
      ++tested;
    }
  }
  std::printf("%d ISA(s) checked against generic, %d failure(s)\n", tested, failures);
  return failures ? 1 : 0;
}
