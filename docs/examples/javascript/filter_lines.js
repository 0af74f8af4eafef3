// Keep the lines that contain --config's text, like `grep -F TEXT` (run with --framing lines).

const LINE = /[^\n]*\n|[^\n]+$/g; // a line with its newline, or the input's last without one
let needle = "";

export function init(config) {
  needle = new TextDecoder().decode(config);
  if (needle === "") throw "no text to look for: give --config TEXT";
}

export function process(frame) {
  const lines = frame.match(LINE) ?? [];
  return lines.filter((line) => line.includes(needle)).join("");
}
