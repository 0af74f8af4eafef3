// Print the field named by --config of every JSON line, like `jq -r .FIELD`: a string as it
// is, any other value as JSON; records without it print nothing (run with --framing lines).

let field = "";

export function init(config) {
  field = new TextDecoder().decode(config);
  if (field === "") throw "no field named: give --config NAME";
}

export function process(frame) {
  let out = "";
  for (const line of frame.split("\n")) {
    if (line.trim() === "") continue;
    let record;
    try {
      record = JSON.parse(line);
    } catch {
      throw `not a JSON line: ${line.slice(0, 40)}`;
    }
    const isObject = typeof record === "object" && record !== null && !Array.isArray(record);
    const value = isObject && Object.hasOwn(record, field) ? record[field] : null;
    if (value !== null) {
      out += (typeof value === "string" ? value : JSON.stringify(value)) + "\n";
    }
  }
  return out;
}
