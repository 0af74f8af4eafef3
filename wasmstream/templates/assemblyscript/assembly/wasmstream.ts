// wasmstream.ts -- the wasmstream guest SDK for AssemblyScript: one file, vendored into your
// project.
//
// Your entry file (assembly/index.ts) exports
//
//     export function transform(input: Bytes, out: Output): i32
//
// which reads a frame of input and appends its output to `out` (which grows as needed), and
// returns 0, or a negative number to fail the frame (`return fail("why")`). It also re-exports
// this file's ABI exports: `export { alloc, init, process_chunk, error_message } from
// "./wasmstream"`. Those are what wasmstream calls: the transform, the allocator, `init`, which
// keeps the bytes of `--config ...` for `config()`, and `error_message`, which tells it why a
// frame failed. The ABI behind it is documented in the wasmstream
// README, section "Guest ABI".
//
// The frame and the output live in raw memory (heap.alloc), outside the garbage collector, so
// a frame costs no managed allocation unless the transform makes some.
import { transform } from "./index";

/** Bytes in memory, such as a frame of input: `bytes[i]` is the i-th, `bytes.length` the count. */
export class Bytes {
  ptr: usize = 0;
  length: i32 = 0;

  @operator("[]")
  get(index: i32): u8 {
    return load<u8>(this.ptr + <usize>index);
  }

  /** Where `byte` first occurs at or after `from`, or -1. */
  indexOfByte(byte: u8, from: i32 = 0): i32 {
    for (let i = from; i < this.length; i++) {
      if (load<u8>(this.ptr + <usize>i) == byte) return i;
    }
    return -1;
  }

  /** Where `needle` first occurs within [from, to) (to < 0: the end), or -1. */
  indexOf(needle: Bytes, from: i32 = 0, to: i32 = -1): i32 {
    const end = (to < 0 ? this.length : to) - needle.length;
    for (let i = from; i <= end; i++) {
      if (memory.compare(this.ptr + <usize>i, needle.ptr, <usize>needle.length) == 0) return i;
    }
    return -1;
  }

  /** The bytes as a string, decoded from UTF-8 (a managed allocation). */
  toString(): string {
    return String.UTF8.decodeUnsafe(this.ptr, <usize>this.length);
  }
}

/** The frame's output: append with put, write and writeString. */
export class Output {
  ptr: usize = 0;
  length: i32 = 0;
  capacity: i32 = 0;

  /** Make room for `extra` more bytes. */
  reserve(extra: i32): void {
    if (this.capacity - this.length >= extra) return;
    let capacity = this.capacity > 0 ? this.capacity : 4096;
    while (capacity - this.length < extra) capacity *= 2;
    this.ptr = this.ptr == 0 ? heap.alloc(<usize>capacity) : heap.realloc(this.ptr, <usize>capacity);
    this.capacity = capacity;
  }

  put(byte: u8): void {
    this.reserve(1);
    store<u8>(this.ptr + <usize>this.length, byte);
    this.length += 1;
  }

  /** Append `length` bytes of `input` from `start`. */
  write(input: Bytes, start: i32, length: i32): void {
    this.reserve(length);
    memory.copy(this.ptr + <usize>this.length, input.ptr + <usize>start, <usize>length);
    this.length += length;
  }

  /** Append a string, encoded as UTF-8. */
  writeString(text: string): void {
    const size = String.UTF8.byteLength(text);
    this.reserve(size);
    String.UTF8.encodeUnsafe(
      changetype<usize>(text),
      text.length,
      this.ptr + <usize>this.length,
    );
    this.length += size;
  }
}

/** The bytes given with `--init init --config TEXT|@FILE` (empty without them). */
export function config(): Bytes {
  return configBytes;
}

@external("wasi_snapshot_preview1", "fd_write")
declare function fd_write(fd: u32, iovs: usize, iovsLength: usize, written: usize): u16;

// Why the last frame failed, for wasmstream's error message and dead letter (error_message).
let reason: ArrayBuffer | null = null;

/** Say why a frame failed, on wasmstream's stderr and in its error message and dead letter,
 * and return -1: `return fail("bad record")`. */
export function fail(message: string): i32 {
  const line = String.UTF8.encode("transform: " + message + "\n");
  const iov = memory.data(8); // one ciovec: base, length
  store<u32>(iov, <u32>changetype<usize>(line));
  store<u32>(iov, <u32>line.byteLength, 4);
  fd_write(2, iov, 1, memory.data(4));
  reason = String.UTF8.encode(message);
  return -1;
}

// ---- The ABI exports; nothing below is for you to call. ----

const configBytes = new Bytes();
const input = new Bytes();
// One output buffer per instance, grown to the largest frame's output and reused.
const output = new Output();

// The host allocates the input buffer (once per instance) and the config bytes here. There is
// deliberately no deallocator export: the output buffer is reused for every frame, and the
// config bytes must live as long as the instance, so there is nothing the host should free.
export function alloc(size: i32): usize {
  return heap.alloc(size > 0 ? <usize>size : 1);
}

export function init(ptr: usize, length: i32): i32 {
  configBytes.ptr = ptr;
  configBytes.length = length;
  return 0;
}

// The packed result: the output's address in the high 32 bits, its length in the low 32.
export function process_chunk(ptr: usize, length: i32): i64 {
  input.ptr = ptr;
  input.length = length;
  output.length = 0;
  reason = null;
  const status = transform(input, output);
  if (status < 0) return <i64>status;
  return (<i64>output.ptr << 32) | <i64>output.length;
}

// The reason `fail` gave for the frame that just failed (packed like process_chunk's result).
export function error_message(): i64 {
  const text = reason;
  if (text === null) return 0;
  return (<i64>changetype<usize>(text) << 32) | <i64>text.byteLength;
}
