// A wasmstream transform: upper-cases ASCII letters, leaves every other byte alone.
// Change `transform` below; `make` builds @NAME@.wasm, `make test` checks it on sample.txt.
import { Bytes, Output } from "./wasmstream";

// What wasmstream calls; they call `transform`.
export { alloc, init, process_chunk, error_message } from "./wasmstream";

export function transform(input: Bytes, out: Output): i32 {
  out.reserve(input.length); // one size check, not one per byte
  for (let i = 0; i < input.length; i++) {
    const c = input[i];
    out.put(c >= 0x61 && c <= 0x7a ? c - 0x20 : c);
  }
  return 0;
}
