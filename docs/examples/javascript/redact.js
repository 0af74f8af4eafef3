// Replace each occurrence of --config's text with as many '*' (run with --framing lines, so
// that no occurrence is cut in two by a frame's end).

let secret = "";
let stars = "";

export function init(config) {
  secret = new TextDecoder().decode(config);
  if (secret === "") throw "no pattern to redact: give --config TEXT";
  stars = "*".repeat([...secret].length); // one per character, not per UTF-16 unit
}

export function process(frame) {
  return frame.replaceAll(secret, stars);
}
