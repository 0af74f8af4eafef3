"""Print the field named by --config of every JSON line, like `jq -r .FIELD`: a string as it
is, any other value as JSON; records without it print nothing (run with --framing lines)."""

import json

import wit_world
from componentize_py_types import Err

field = ""


class WitWorld(wit_world.WitWorld):
    def init(self, config: bytes) -> None:
        global field
        field = config.decode()
        if not field:
            raise Err("no field named: give --config NAME")

    def process(self, frame: str) -> str:
        out = []
        for line in frame.split("\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise Err(f"not a JSON line: {line[:40]!r}") from None
            value = record.get(field) if isinstance(record, dict) else None
            if value is not None:
                out.append((value if isinstance(value, str) else json.dumps(value)) + "\n")
        return "".join(out)
