//! filter_lines: keep the lines that contain a pattern, like `grep -F PATTERN`.
//!   wasmstream run filter_lines.wasm --framing lines --init init --config ERROR < app.log
//! --framing lines gives every frame whole lines; the last line may lack its newline.
const ws = @import("wasmstream.zig");

comptime {
    _ = ws.exports; // the ABI exports wasmstream calls
}

pub fn transform(input: []const u8, out: *ws.Output) !void {
    const pattern = ws.config();
    if (pattern.len == 0) return ws.fail("no pattern: run with --init init --config PATTERN");
    var rest = input;
    while (rest.len > 0) {
        const end = if (ws.findByte(rest, '\n')) |newline| newline + 1 else rest.len;
        const line = rest[0..end];
        if (ws.find(line, pattern) != null) try out.write(line);
        rest = rest[end..];
    }
}
