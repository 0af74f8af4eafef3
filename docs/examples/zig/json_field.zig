//! json_field: print one top-level field of every JSON-lines record, like `jq -r .FIELD` for a
//! string or a number; records without the field print nothing.
//!   wasmstream run json_field.wasm --framing lines --init init --config user < events.jsonl
//! A sketch rather than a JSON parser: it takes the first "FIELD": in the line, and prints a
//! string's escapes as written.
const ws = @import("wasmstream.zig");

comptime {
    _ = ws.exports; // the ABI exports wasmstream calls
}

pub fn transform(input: []const u8, out: *ws.Output) !void {
    const field = ws.config();
    if (field.len == 0) return ws.fail("no field: run with --init init --config FIELD");
    var rest = input;
    while (rest.len > 0) {
        const end = ws.findByte(rest, '\n') orelse rest.len;
        if (valueOf(rest[0..end], field)) |value| {
            try out.write(value);
            try out.put('\n');
        }
        rest = rest[@min(end + 1, rest.len)..];
    }
}

/// The value of "field": in `line` (a string's contents, or a number or literal), or null.
fn valueOf(line: []const u8, field: []const u8) ?[]const u8 {
    var from: usize = 0;
    while (ws.find(line[from..], field)) |found| : (from += found + 1) {
        const at = from + found;
        if (at == 0 or line[at - 1] != '"' or at + field.len >= line.len) continue;
        if (line[at + field.len] != '"') continue;
        const colon = skipBlanks(line[at + field.len + 1 ..]);
        if (colon.len > 0 and colon[0] == ':') return scalar(skipBlanks(colon[1..]));
    }
    return null;
}

fn skipBlanks(text: []const u8) []const u8 {
    var i: usize = 0;
    while (i < text.len and (text[i] == ' ' or text[i] == '\t')) i += 1;
    return text[i..];
}

fn scalar(text: []const u8) []const u8 {
    if (text.len > 0 and text[0] == '"') {
        var i: usize = 1;
        while (i < text.len and text[i] != '"') i += if (text[i] == '\\') 2 else 1;
        return text[1..@min(i, text.len)];
    }
    var end: usize = 0;
    while (end < text.len and ws.findByte(",} \t\r", text[end]) == null) end += 1;
    return text[0..end];
}
