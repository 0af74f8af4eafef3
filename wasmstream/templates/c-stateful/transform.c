/*
 * A stateful wasmstream transform: numbers the lines of its input across frames ("1: ...")
 * and, after the last frame, writes how many lines it saw. Its state survives a crash and
 * `--resume`: wasmstream saves what `snapshot` returns with each checkpoint and hands it back
 * to `restore` in a fresh instance. Change the state, ws_transform and finish below; `make`
 * builds @NAME@.wasm, `make test` checks it on sample.txt.
 *
 * A stateful module runs as one instance seeing every frame in order (no -j N above 1).
 */
#include <string.h>

#include "wasmstream.h"

/* Everything carried from one frame to the next, and nothing else: it is what is saved. */
static struct {
    uint32_t line;     /* the number of the line being read, from 1 */
    uint32_t at_start; /* whether the next byte starts a line */
} state = {1, 1};

static void put_number(ws_output *out, uint32_t n) {
    char digits[10];
    size_t count = 0;
    do {
        digits[count++] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    while (count) ws_put(out, (uint8_t)digits[--count]);
}

int ws_transform(ws_bytes input, ws_output *out) {
    for (size_t i = 0; i < input.len; i++) {
        uint8_t c = input.data[i];
        if (state.at_start) {
            put_number(out, state.line);
            ws_write(out, ": ", 2);
            state.at_start = 0;
        }
        ws_put(out, c);
        if (c == '\n') {
            state.line++;
            state.at_start = 1;
        }
    }
    return out->failed ? WS_ERROR : WS_OK;
}

static int64_t packed(const void *data, size_t len) {
    return ((int64_t)(uintptr_t)data << 32) | (uint32_t)len;
}

/* The state's bytes, where they are: the host copies them out (the SDK exports no deallocator,
 * so nothing is freed). */
__attribute__((export_name("snapshot"))) int64_t snapshot(void) {
    return packed(&state, sizeof state);
}

/* Back from snapshot's bytes, in a fresh instance; a negative result refuses them. */
__attribute__((export_name("restore"))) int32_t restore(const uint8_t *data, int32_t len) {
    if (len != (int32_t)sizeof state) return WS_ERROR; /* not a state of this module */
    memcpy(&state, data, sizeof state);
    return WS_OK;
}

/* Called once after the last frame: its bytes end the output (here, the number of lines). */
__attribute__((export_name("finish"))) int64_t finish(void) {
    static ws_output total;
    total.len = 0;
    uint32_t lines = state.line - (state.at_start ? 1 : 0);
    put_number(&total, lines);
    ws_write(&total, " lines\n", 7);
    if (total.failed) return WS_ERROR;
    return packed(total.data, total.len);
}
