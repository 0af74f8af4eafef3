/*
 * wasmstream.h -- the wasmstream guest SDK for C: one header, no library to link.
 *
 * You write one function,
 *
 *     int ws_transform(ws_bytes input, ws_output *out);
 *
 * that reads a frame of input and appends its output to `out` (which grows as needed), and
 * returns WS_OK or a negative code. This header provides everything wasmstream calls: the
 * `process_chunk` transform export, the `alloc` allocator export, and an `init` export that keeps
 * the bytes of `--init init --config ...` for ws_config(). Include it in exactly one .c file.
 *
 * Build with `make` (zig cc or clang, --target=wasm32-wasi -mexec-model=reactor).
 * The ABI behind it is documented in the wasmstream README, section "Guest ABI".
 */
#ifndef WASMSTREAM_H
#define WASMSTREAM_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WS_OK 0
#define WS_ERROR (-1) /* any negative result fails the frame (exit status 4, or --on-error) */

/* A read-only slice of bytes: the frame, or the --config bytes. */
typedef struct {
    const uint8_t *data;
    size_t len;
} ws_bytes;

/* The frame's output: append with ws_put / ws_write, or ws_reserve and fill data[len..]. */
typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
    int failed; /* set when growing failed; the frame then fails with WS_ERROR */
} ws_output;

/* Defined by you: transform one frame. Frames are independent (several instances run at once). */
int ws_transform(ws_bytes input, ws_output *out);

/* Make room for `extra` more bytes; WS_OK, or WS_ERROR (and out->failed) when memory ran out. */
static int ws_reserve(ws_output *out, size_t extra) {
    if (out->cap - out->len >= extra) return WS_OK;
    size_t cap = out->cap ? out->cap : 4096;
    while (cap - out->len < extra) cap *= 2;
    uint8_t *data = realloc(out->data, cap);
    if (data == NULL) {
        out->failed = 1;
        return WS_ERROR;
    }
    out->data = data;
    out->cap = cap;
    return WS_OK;
}

/* Append one byte. Failures are remembered in out->failed, so callers need not check each. */
static inline void ws_put(ws_output *out, uint8_t byte) {
    if (out->len == out->cap && ws_reserve(out, 1) != WS_OK) return;
    out->data[out->len++] = byte;
}

/* Append `len` bytes. */
static inline void ws_write(ws_output *out, const void *data, size_t len) {
    if (len == 0 || ws_reserve(out, len) != WS_OK) return;
    memcpy(out->data + out->len, data, len);
    out->len += len;
}

/* Why the frame failed, kept for wasmstream's error message and dead letter (error_message). */
static char ws_abi_reason[1000];
static size_t ws_abi_reason_len;

/* Say why a frame failed, on wasmstream's stderr and in its error message and dead letter, and
 * return WS_ERROR: `return ws_fail("...");` */
static int ws_fail(const char *message) {
    fprintf(stderr, "transform: %s\n", message);
    size_t len = strlen(message);
    ws_abi_reason_len = len < sizeof ws_abi_reason ? len : sizeof ws_abi_reason;
    memcpy(ws_abi_reason, message, ws_abi_reason_len);
    return WS_ERROR;
}

static ws_bytes ws_config_bytes;

/* The bytes given with `--init init --config TEXT|@FILE` (empty without them). */
static inline ws_bytes ws_config(void) { return ws_config_bytes; }

/* ---- The ABI exports; nothing below is for you to call. ---- */

/* The host allocates the input buffer (once per instance) and the config bytes here. There is
 * deliberately no deallocator export: the output buffer is reused for every frame, and the config
 * bytes must live as long as the instance, so there is nothing the host should free. */
__attribute__((export_name("alloc"))) void *ws_abi_alloc(int32_t size) {
    return malloc(size > 0 ? (size_t)size : 1);
}

__attribute__((export_name("init"))) int32_t ws_abi_init(const uint8_t *data, int32_t len) {
    ws_config_bytes.data = data;
    ws_config_bytes.len = (size_t)len;
    return WS_OK;
}

/* One output buffer per instance, grown to the largest frame's output and reused. */
static ws_output ws_abi_output;

/* The packed result: the output's address in the high 32 bits, its length in the low 32. */
__attribute__((export_name("process_chunk"))) int64_t ws_abi_process_chunk(const uint8_t *data,
                                                                          int32_t len) {
    ws_abi_output.len = 0;
    ws_abi_output.failed = 0;
    ws_abi_reason_len = 0;
    ws_bytes input = {data, (size_t)len};
    int status = ws_transform(input, &ws_abi_output);
    if (status < 0) return status;
    if (ws_abi_output.failed) return ws_fail("out of memory while growing the output");
    return ((int64_t)(uintptr_t)ws_abi_output.data << 32) | (uint32_t)ws_abi_output.len;
}

/* The reason ws_fail gave for the frame that just failed (packed like process_chunk's result). */
__attribute__((export_name("error_message"))) int64_t ws_abi_error_message(void) {
    return ((int64_t)(uintptr_t)ws_abi_reason << 32) | (uint32_t)ws_abi_reason_len;
}

#endif /* WASMSTREAM_H */
