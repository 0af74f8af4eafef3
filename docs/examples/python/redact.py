"""Replace each occurrence of --config's text with as many '*' (run with --framing lines, so
that no occurrence is cut in two by a frame's end)."""

import wit_world
from componentize_py_types import Err

secret = ""


class WitWorld(wit_world.WitWorld):
    def init(self, config: bytes) -> None:
        global secret
        secret = config.decode()
        if not secret:
            raise Err("no pattern to redact: give --config TEXT")

    def process(self, frame: str) -> str:
        return frame.replace(secret, "*" * len(secret))
