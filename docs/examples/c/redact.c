/*
 * redact: replace every occurrence of a pattern with as many '*', so the output keeps its length.
 *   wasmstream run redact.wasm --framing lines --init init --config 's3cr3t' < app.log
 * --framing lines keeps an occurrence from being cut in two between frames.
 */
#include "wasmstream.h"

int ws_transform(ws_bytes input, ws_output *out) {
    ws_bytes pattern = ws_config();
    if (pattern.len == 0) return ws_fail("no pattern: run with --init init --config PATTERN");
    if (ws_reserve(out, input.len) != WS_OK) return WS_ERROR; /* as long as the input */
    size_t i = 0;
    while (i < input.len) {
        if (input.len - i >= pattern.len && memcmp(input.data + i, pattern.data, pattern.len) == 0) {
            memset(out->data + out->len, '*', pattern.len);
            out->len += pattern.len;
            i += pattern.len;
        } else {
            out->data[out->len++] = input.data[i++];
        }
    }
    return WS_OK;
}
