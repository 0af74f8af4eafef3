"""Keep the lines that contain --config's text, like `grep -F TEXT` (run with --framing lines)."""

import re

import wit_world
from componentize_py_types import Err

LINE = re.compile(r".*\n|.+\Z")  # a line with its newline, or the input's last without one
needle = ""


class WitWorld(wit_world.WitWorld):
    def init(self, config: bytes) -> None:
        global needle
        needle = config.decode()
        if not needle:
            raise Err("no text to look for: give --config TEXT")

    def process(self, frame: str) -> str:
        return "".join(line for line in LINE.findall(frame) if needle in line)
