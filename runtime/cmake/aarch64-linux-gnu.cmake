# Toolchain file: cross-compile libbhvit_runtime and bhvit-run for 64-bit ARM Linux (NEON kernels) with
# Debian/Ubuntu's cross compilers (apt-get install g++-aarch64-linux-gnu; qemu-user to run the result):
#
#   cmake -S runtime -B build-arm -DCMAKE_TOOLCHAIN_FILE=runtime/cmake/aarch64-linux-gnu.cmake
#   cmake --build build-arm -j
#   qemu-aarch64 -L /usr/aarch64-linux-gnu build-arm/bhvit-run model.bhvp image.ppm
#
# BHVIT_AARCH64_PREFIX selects another toolchain prefix (default aarch64-linux-gnu-).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

if(NOT DEFINED BHVIT_AARCH64_PREFIX)
  set(BHVIT_AARCH64_PREFIX "aarch64-linux-gnu-")
endif()
set(CMAKE_C_COMPILER "${BHVIT_AARCH64_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${BHVIT_AARCH64_PREFIX}g++")

# Libraries and headers come from the target's sysroot, programs (cmake's helpers) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# How ctest / add_custom_command run a target program on the host (when qemu-user is installed).
find_program(BHVIT_QEMU_AARCH64 qemu-aarch64)
if(BHVIT_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${BHVIT_QEMU_AARCH64};-L;/usr/aarch64-linux-gnu")
endif()
