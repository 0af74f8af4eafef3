//! A wasmstream transform: upper-cases ASCII letters, leaves every other byte alone.
//! Change `transform` below; `make` builds @NAME@.wasm, `make test` checks it on sample.txt.
const ws = @import("wasmstream.zig");

comptime {
    _ = ws.exports; // the ABI exports wasmstream calls
}

pub fn transform(input: []const u8, out: *ws.Output) !void {
    try out.reserve(input.len); // one size check, not one per byte
    for (input) |c| {
        out.buf[out.len] = if (c >= 'a' and c <= 'z') c - 'a' + 'A' else c;
        out.len += 1;
    }
}
