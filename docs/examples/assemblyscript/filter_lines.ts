// filter_lines: keep the lines that contain a pattern, like `grep -F PATTERN`.
//   wasmstream run filter_lines.wasm --framing lines --init init --config ERROR < app.log
// --framing lines gives every frame whole lines; the last line may lack its newline.
import { Bytes, Output, config, fail } from "./wasmstream";

export { alloc, init, process_chunk, error_message } from "./wasmstream";

export function transform(input: Bytes, out: Output): i32 {
  const pattern = config();
  if (pattern.length == 0) return fail("no pattern: run with --init init --config PATTERN");
  let start = 0;
  while (start < input.length) {
    const newline = input.indexOfByte(0x0a, start);
    const end = newline < 0 ? input.length : newline + 1;
    if (input.indexOf(pattern, start, end) >= 0) out.write(input, start, end - start);
    start = end;
  }
  return 0;
}
