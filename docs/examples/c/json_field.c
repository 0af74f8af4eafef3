/*
 * json_field: print one top-level field of every JSON-lines record, like `jq -r .FIELD` for a
 * string or a number; records without the field print nothing.
 *   wasmstream run json_field.wasm --framing lines --init init --config user < events.jsonl
 * A sketch rather than a JSON parser: it takes the first "FIELD": in the line, and prints a
 * string's escapes as written.
 */
#include "wasmstream.h"

static const uint8_t *skip_blanks(const uint8_t *p, const uint8_t *end) {
    while (p < end && (*p == ' ' || *p == '\t')) p++;
    return p;
}

/* Where the value of "field": starts in [line, end), or NULL. */
static const uint8_t *value_of(const uint8_t *line, const uint8_t *end, ws_bytes field) {
    for (const uint8_t *p = line; end - p >= (ptrdiff_t)field.len + 2; p++) {
        if (p[0] != '"' || memcmp(p + 1, field.data, field.len) != 0 || p[field.len + 1] != '"') {
            continue;
        }
        const uint8_t *colon = skip_blanks(p + field.len + 2, end);
        if (colon < end && *colon == ':') return skip_blanks(colon + 1, end);
    }
    return NULL;
}

/* Append the value at p (a string's contents, or a number or literal), then a newline. */
static void put_value(const uint8_t *p, const uint8_t *end, ws_output *out) {
    const uint8_t *stop;
    if (p < end && *p == '"') {
        for (stop = ++p; stop < end && *stop != '"'; stop += (*stop == '\\') ? 2 : 1) {
        }
        if (stop > end) stop = end;
    } else {
        for (stop = p; stop < end && !strchr(",} \t\r\n", *stop); stop++) {
        }
    }
    ws_write(out, p, (size_t)(stop - p));
    ws_put(out, '\n');
}

int ws_transform(ws_bytes input, ws_output *out) {
    ws_bytes field = ws_config();
    if (field.len == 0) return ws_fail("no field: run with --init init --config FIELD");
    const uint8_t *line = input.data, *end = input.data + input.len;
    while (line < end) {
        const uint8_t *newline = memchr(line, '\n', (size_t)(end - line));
        const uint8_t *line_end = newline ? newline : end;
        const uint8_t *value = value_of(line, line_end, field);
        if (value != NULL) put_value(value, line_end, out);
        line = line_end + 1;
    }
    return WS_OK;
}
