//! wasmstream.zig -- the wasmstream guest SDK for Zig: one file, vendored into your project.
//!
//! Your root source file declares
//!
//!     pub fn transform(input: []const u8, out: *ws.Output) !void
//!
//! which reads a frame of input and appends its output to `out` (which grows as needed); an
//! error fails the frame. This file provides what wasmstream calls: the `process_chunk` transform
//! export, the `alloc` allocator export, and an `init` export that keeps the bytes of
//! `--init init --config ...` for `config()`. The ABI behind it is documented in the wasmstream
//! README, section "Guest ABI".
const std = @import("std");
const builtin = @import("builtin");
const root = @import("root");

const allocator = std.heap.wasm_allocator;

/// The frame's output. Append with `put` / `write`, or `reserve` and fill `buf[len..]`.
pub const Output = struct {
    buf: []u8 = &.{},
    len: usize = 0,

    /// Make room for `extra` more bytes.
    pub fn reserve(self: *Output, extra: usize) error{OutOfMemory}!void {
        if (self.buf.len - self.len >= extra) return;
        var cap: usize = if (self.buf.len == 0) 4096 else self.buf.len;
        while (cap - self.len < extra) cap *= 2;
        self.buf = try allocator.realloc(self.buf, cap);
    }

    pub fn put(self: *Output, byte: u8) error{OutOfMemory}!void {
        try self.reserve(1);
        self.buf[self.len] = byte;
        self.len += 1;
    }

    pub fn write(self: *Output, bytes: []const u8) error{OutOfMemory}!void {
        try self.reserve(bytes.len);
        @memcpy(self.buf[self.len..][0..bytes.len], bytes);
        self.len += bytes.len;
    }

    /// The output so far.
    pub fn written(self: *const Output) []const u8 {
        return self.buf[0..self.len];
    }
};

/// Where `needle` first occurs in `haystack`, or null. (The SDK's own, so that examples do not
/// follow std.mem's renames from one Zig release to the next.) An empty needle is found at 0.
pub fn find(haystack: []const u8, needle: []const u8) ?usize {
    if (needle.len > haystack.len) return null;
    var at: usize = 0;
    while (at + needle.len <= haystack.len) : (at += 1) {
        if (std.mem.eql(u8, haystack[at..][0..needle.len], needle)) return at;
    }
    return null;
}

/// Where `byte` first occurs in `haystack`, or null.
pub fn findByte(haystack: []const u8, byte: u8) ?usize {
    for (haystack, 0..) |c, at| {
        if (c == byte) return at;
    }
    return null;
}

/// The bytes given with `--init init --config TEXT|@FILE` (empty without them).
pub fn config() []const u8 {
    return config_bytes;
}

/// Say why a frame failed, on wasmstream's stderr and in its error message and dead letter:
/// `return ws.fail("bad record");`
pub fn fail(message: []const u8) error{TransformFailed} {
    log("transform: ", message);
    keepReason(message);
    return error.TransformFailed;
}

fn keepReason(message: []const u8) void {
    reason_len = @min(message.len, reason.len);
    @memcpy(reason[0..reason_len], message[0..reason_len]);
}

/// Write `prefix` and `message` as one line to stderr (WASI only; elsewhere nothing is shown).
fn log(prefix: []const u8, message: []const u8) void {
    if (builtin.os.tag != .wasi) return;
    for ([_][]const u8{ prefix, message, "\n" }) |part| {
        // One buffer per call, and again for the rest: a WASI write may take only part of it
        // (wasmtime's stderr takes at most the first buffer of several).
        var rest = part;
        while (rest.len > 0) {
            const iov = [1]std.os.wasi.ciovec_t{.{ .base = rest.ptr, .len = rest.len }};
            var written_len: usize = 0;
            const status = std.os.wasi.fd_write(2, &iov, 1, &written_len);
            if (status != .SUCCESS or written_len == 0) return;
            rest = rest[written_len..];
        }
    }
}

// ---- The ABI exports; nothing below is for you to call. ----

var config_bytes: []const u8 = &.{};
// Why the last frame failed, for wasmstream's error message and dead letter (error_message).
var reason: [1000]u8 = undefined;
var reason_len: usize = 0;
// One output buffer per instance, grown to the largest frame's output and reused.
var output: Output = .{};

/// The host allocates the input buffer (once per instance) and the config bytes here. There is
/// deliberately no deallocator export: the output buffer is reused for every frame, and the
/// config bytes must live as long as the instance, so there is nothing the host should free.
export fn alloc(size: i32) usize {
    const memory = allocator.alloc(u8, @max(@as(usize, @intCast(size)), 1)) catch return 0;
    return @intFromPtr(memory.ptr);
}

export fn init(data: [*]const u8, len: i32) i32 {
    config_bytes = data[0..@intCast(len)];
    return 0;
}

/// The packed result: the output's address in the high 32 bits, its length in the low 32;
/// -1 when the transform returned an error (its name goes to stderr).
export fn process_chunk(data: [*]const u8, len: i32) i64 {
    output.len = 0;
    reason_len = 0;
    root.transform(data[0..@intCast(len)], &output) catch |err| {
        if (err != error.TransformFailed) {
            log("transform failed: ", @errorName(err));
            keepReason(@errorName(err));
        }
        return -1;
    };
    const address: i64 = @intCast(@intFromPtr(output.buf.ptr));
    return (address << 32) | @as(i64, @intCast(output.len));
}

/// Referenced from your root file (`comptime { _ = ws.exports; }`): Zig analyses, and so
/// exports, only the functions something refers to.
/// The reason `fail` gave for the frame that just failed (packed like process_chunk's result).
export fn error_message() i64 {
    const address: i64 = @intCast(@intFromPtr(&reason));
    return (address << 32) | @as(i64, @intCast(reason_len));
}

pub const exports = .{ alloc, init, process_chunk, error_message };
