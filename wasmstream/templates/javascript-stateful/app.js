// @NAME@: a stateful wasmstream transform in JavaScript, built into a WebAssembly component.
//
// It numbers lines across frames and ends with their count. wasmstream runs a stateful
// component as one instance that sees every frame in order; each checkpoint saves
// `snapshot()` beside the position, and a resumed run `restore`s it into a fresh instance, so
// its output is the same as an uninterrupted run's. See README.md.

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const NEWLINE = 0x0a;

// Everything carried from one frame to the next: keep snapshot and restore in step.
let lines = 0; // lines begun so far
let atStart = true; // whether the next byte begins a line

export function init(config) {
  // `--config`'s bytes (a Uint8Array, empty without); throw "why" to refuse them
}

export function process(frame) {
  const pieces = [];
  for (let start = 0; start < frame.length; ) {
    if (atStart) pieces.push(encoder.encode(`${++lines}: `));
    const newline = frame.indexOf(NEWLINE, start);
    const end = newline < 0 ? frame.length : newline + 1;
    pieces.push(frame.subarray(start, end));
    atStart = newline >= 0;
    start = end;
  }
  return concat(pieces);
}

export function finish() {
  return encoder.encode(`${lines} lines\n`);
}

export function snapshot() {
  return encoder.encode(`${lines} ${atStart ? 1 : 0}`);
}

export function restore(saved) {
  const [count, flag] = decoder.decode(saved).split(" ");
  if (flag === undefined || Number.isNaN(Number(count))) {
    throw "not a state of this transform";
  }
  lines = Number(count);
  atStart = flag === "1";
}

function concat(pieces) {
  const out = new Uint8Array(pieces.reduce((total, piece) => total + piece.length, 0));
  let at = 0;
  for (const piece of pieces) {
    out.set(piece, at);
    at += piece.length;
  }
  return out;
}
