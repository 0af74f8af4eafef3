/*
 * A wasmstream transform: upper-cases ASCII letters, leaves every other byte alone.
 * Change ws_transform below; `make` builds @NAME@.wasm, `make test` checks it on sample.txt.
 */
#include "wasmstream.h"

int ws_transform(ws_bytes input, ws_output *out) {
    if (ws_reserve(out, input.len) != WS_OK) return WS_ERROR;  /* one size check, not one per byte */
    for (size_t i = 0; i < input.len; i++) {
        uint8_t c = input.data[i];
        out->data[out->len++] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - 'a' + 'A') : c;
    }
    return WS_OK;
}
