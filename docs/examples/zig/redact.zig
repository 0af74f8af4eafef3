//! redact: replace every occurrence of a pattern with as many '*', so the output keeps its length.
//!   wasmstream run redact.wasm --framing lines --init init --config 's3cr3t' < app.log
//! --framing lines keeps an occurrence from being cut in two between frames.
const ws = @import("wasmstream.zig");

comptime {
    _ = ws.exports; // the ABI exports wasmstream calls
}

pub fn transform(input: []const u8, out: *ws.Output) !void {
    const pattern = ws.config();
    if (pattern.len == 0) return ws.fail("no pattern: run with --init init --config PATTERN");
    var rest = input;
    while (ws.find(rest, pattern)) |at| {
        try out.write(rest[0..at]);
        for (pattern) |_| try out.put('*');
        rest = rest[at + pattern.len ..];
    }
    try out.write(rest);
}
