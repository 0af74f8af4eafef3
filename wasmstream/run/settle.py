"""How a run's options settle once its module is loaded: what a stateful module and a
component change.

A module that keeps state, or has a finish function, runs as one instance, frames in order
(`settle_for_state`).

A text component (`process` over `string`) takes whole UTF-8 characters, so under fixed framing
its frames end on a character boundary (`FramingSpec.whole_chars`); such frames no longer fall
on multiples of the frame size, so shards and cluster parts, which are cut there, are refused
for it."""

from __future__ import annotations

import dataclasses

from wasmstream.errors import UsageError
from wasmstream.guest.abi import GuestAbi, StateKind
from wasmstream.run.options import OnError, RunConfig


def settle_for_component(config: RunConfig, abi: GuestAbi) -> RunConfig:
    """`config` as it runs `abi`'s module; raises UsageError for what cannot apply to it."""
    component = abi.component
    if component is None:
        return config
    if not component.text or config.framing.record_based:
        return config
    if config.shard is not None or config.in_parts:
        what = "--cluster" if config.clustered else "--shard"
        what = "--output-parts" if config.output_parts and not config.clustered else what
        raise UsageError(
            f"{what}: {config.module} is a text component, whose fixed frames end on whole "
            "characters and so cannot be cut into parts at multiples of the frame size; use "
            "--framing lines (or a delimiter)"
        )
    whole_chars = dataclasses.replace(config.framing, whole_chars=True)
    return dataclasses.replace(config, framing=whole_chars)


def settle_for_state(config: RunConfig, abi: GuestAbi) -> RunConfig:
    """A stateful module (or one with a finish function) runs as one instance, frames in input
    order: `--jobs auto` (the default) means 1 for it, and what cannot keep its state whole is
    refused up front."""
    if not abi.one_instance:
        return config
    why = abi.why_one_instance
    if config.jobs is not None and config.jobs > 1:
        raise UsageError(
            f"{config.module} {why}: it runs as one instance, frames in order; "
            f"-j {config.jobs} cannot apply (leave -j out, or give -j 1 or auto)"
        )
    if config.overload.policy != "block":
        raise UsageError(
            f"{config.module} {why}: every frame must reach it; --on-overload {config.overload} "
            "cannot apply"
        )
    if config.on_error is not OnError.FAIL and abi.state is not StateKind.NONE:
        raise UsageError(
            f"{config.module} {why}: a failed frame may leave that state half-updated, so "
            f"--on-error {config.on_error.value} is refused for it (use --on-error fail, or "
            "--state none)"
        )
    return dataclasses.replace(config, jobs=1)
