"""How a run's options settle once its module is loaded: what a component changes.

A text component (`process` over `string`) takes whole UTF-8 characters, so under fixed framing
its frames end on a character boundary (`FramingSpec.whole_chars`); such frames no longer fall
on multiples of the frame size, so shards and cluster parts, which are cut there, are refused
for it. A component receives `--config` through its `init` export, found by name, so there
`--config` does not need `--init`.
"""

from __future__ import annotations

import dataclasses

from .abi import GuestAbi
from .errors import UsageError
from .options import RunConfig


def settle_for_component(config: RunConfig, abi: GuestAbi, config_given: bool) -> RunConfig:
    """`config` as it runs `abi`'s module; raises UsageError for what cannot apply to it."""
    component = abi.component
    if component is None:
        return config
    if config_given and abi.init is None:
        raise UsageError(
            f"--config: {config.module} exports no init function to receive it "
            "(init: func(config: list<u8>) -> result<_, string>)"
        )
    if not component.text or config.framing.record_based:
        return config
    if config.shard is not None or config.clustered:
        what = "--cluster" if config.clustered else "--shard"
        raise UsageError(
            f"{what}: {config.module} is a text component, whose fixed frames end on whole "
            "characters and so cannot be cut into parts at multiples of the frame size; use "
            "--framing lines (or a delimiter)"
        )
    whole_chars = dataclasses.replace(config.framing, whole_chars=True)
    return dataclasses.replace(config, framing=whole_chars)
