/*
 * filter_lines: keep the lines that contain a pattern, like `grep -F PATTERN`.
 *   wasmstream run filter_lines.wasm --framing lines --init init --config ERROR < app.log
 * --framing lines gives every frame whole lines; the last line may lack its newline.
 */
#include "wasmstream.h"

/* Whether `len` bytes at `line` contain `pattern`. */
static int contains(const uint8_t *line, size_t len, ws_bytes pattern) {
    for (size_t i = 0; i + pattern.len <= len; i++) {
        if (memcmp(line + i, pattern.data, pattern.len) == 0) return 1;
    }
    return 0;
}

int ws_transform(ws_bytes input, ws_output *out) {
    ws_bytes pattern = ws_config();
    if (pattern.len == 0) return ws_fail("no pattern: run with --init init --config PATTERN");
    size_t start = 0;
    while (start < input.len) {
        const uint8_t *newline = memchr(input.data + start, '\n', input.len - start);
        size_t end = newline ? (size_t)(newline - input.data) + 1 : input.len;
        if (contains(input.data + start, end - start, pattern)) {
            ws_write(out, input.data + start, end - start);
        }
        start = end;
    }
    return WS_OK;
}
