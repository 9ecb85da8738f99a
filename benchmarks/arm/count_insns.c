/* count_insns.c: a qemu-user TCG plugin that counts the guest instructions executed between markers.
 *
 * Build (the header comes with QEMU's source, include/qemu/qemu-plugin.h, of the qemu-aarch64 that loads it):
 *   cc -O2 -shared -fPIC -I<dir of qemu-plugin.h> -o libcount_insns.so count_insns.c
 * Run:
 *   qemu-aarch64 -plugin ./libcount_insns.so,out=counts.txt -L <root> ./program
 *
 * A marker is the getpid system call (172 on aarch64) made with MARKER_MAGIC as its first argument and a tag
 * as its second (`syscall(172, 0x62687669, tag)`; getpid ignores its arguments, so the program runs the same
 * without the plugin). At each marker the plugin appends a line `mark <tag> <vcpu> <own> <all>` to the out
 * file: the instructions executed so far by the marking thread (own) and by every thread (all). The
 * difference of two markers' counts is the cost of the code between them. At exit: `exit <all> <threads>`.
 *
 * Counting is per translated block: entering a block adds its instruction count (a block is left early
 * only by a fault, which the measured programs do not take). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

enum { MAX_VCPUS = 1024, MARKER_SYSCALL = 172 };
static const uint64_t MARKER_MAGIC = 0x62687669; /* "bhvi" */

static uint64_t own_count[MAX_VCPUS]; /* written only by its vCPU's thread */
static uint64_t all_count;            /* every thread, atomic */
static unsigned int vcpus_seen;       /* highest vCPU index + 1, atomic */
static FILE *out;

static void on_block(unsigned int vcpu, void *n_insns) {
    uint64_t n = (uint64_t)(uintptr_t)n_insns;
    if (vcpu < MAX_VCPUS) {
        own_count[vcpu] += n;
    }
    __atomic_fetch_add(&all_count, n, __ATOMIC_RELAXED);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    uintptr_t n = qemu_plugin_tb_n_insns(tb);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block, QEMU_PLUGIN_CB_NO_REGS, (void *)n);
}

static void on_vcpu_init(qemu_plugin_id_t id, unsigned int vcpu) {
    (void)id;
    unsigned int seen = __atomic_load_n(&vcpus_seen, __ATOMIC_RELAXED);
    while (vcpu + 1 > seen && !__atomic_compare_exchange_n(&vcpus_seen, &seen, vcpu + 1, 0, __ATOMIC_RELAXED,
                                                           __ATOMIC_RELAXED)) {
    }
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1, uint64_t a2, uint64_t a3,
                       uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
    (void)id, (void)a3, (void)a4, (void)a5, (void)a6, (void)a7, (void)a8;
    if (num != MARKER_SYSCALL || a1 != MARKER_MAGIC) {
        return;
    }
    uint64_t own = vcpu < MAX_VCPUS ? own_count[vcpu] : 0;
    fprintf(out, "mark %" PRIu64 " %u %" PRIu64 " %" PRIu64 "\n", a2, vcpu, own,
            __atomic_load_n(&all_count, __ATOMIC_RELAXED));
    fflush(out);
}

static void on_atexit(qemu_plugin_id_t id, void *userdata) {
    (void)id, (void)userdata;
    fprintf(out, "exit %" PRIu64 " %u\n", __atomic_load_n(&all_count, __ATOMIC_RELAXED),
            __atomic_load_n(&vcpus_seen, __ATOMIC_RELAXED));
    fclose(out);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
    (void)info;
    const char *path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            path = argv[i] + 4;
        } else {
            fprintf(stderr, "count_insns: unknown argument '%s' (the one argument is out=PATH)\n", argv[i]);
            return -1;
        }
    }
    if (path == NULL) {
        fprintf(stderr, "count_insns: give the output file as out=PATH\n");
        return -1;
    }
    out = fopen(path, "w");
    if (out == NULL) {
        fprintf(stderr, "count_insns: cannot write %s\n", path);
        return -1;
    }
    qemu_plugin_register_vcpu_init_cb(id, on_vcpu_init);
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, on_atexit, NULL);
    return 0;
}
