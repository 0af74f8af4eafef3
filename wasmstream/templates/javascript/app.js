// @NAME@: a wasmstream transform in JavaScript, built into a WebAssembly component.
//
// wasmstream calls `process` once per frame (64 KiB of the input by default; whole lines with
// `--framing lines`) and writes what it returns, in input order. Throwing a string (`throw
// "why"`) fails the frame with that message, and `--on-error` decides what becomes of it.
// See README.md.

// ASCII letters only, as `tr a-z A-Z`: any bytes pass. The frame is a Uint8Array of its own,
// changed in place and returned.
export function process(frame) {
  for (let i = 0; i < frame.length; i++) {
    const c = frame[i];
    if (c >= 0x61 && c <= 0x7a) frame[i] = c - 0x20;
  }
  return frame;
}
