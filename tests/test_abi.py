"""resolve_abi: the guest ABI decided from exports alone (pure, no engine)."""

from __future__ import annotations

import pytest

from wasmstream.errors import ModuleError
from wasmstream.guest.abi import (
    AbiOptions,
    ExportDesc,
    FuncSig,
    ImportDesc,
    ModuleInfo,
    ResultKind,
    resolve_abi,
)

I32, I64 = "i32", "i64"
MEMORY = ExportDesc("memory", "memory")
ALLOC = ExportDesc("alloc", "func", FuncSig((I32,), (I32,)))
IN_PLACE = ExportDesc("process_chunk", "func", FuncSig((I32, I32), (I32,)))
PACKED = ExportDesc("process_chunk", "func", FuncSig((I32, I32), (I64,)))


def info(*exports: ExportDesc, imports: tuple[ImportDesc, ...] = ()) -> ModuleInfo:
    return ModuleInfo(exports=exports, imports=imports)


def test_in_place_module() -> None:
    abi = resolve_abi(info(MEMORY, ALLOC, IN_PLACE), AbiOptions(), "m.wasm")
    assert abi.result is ResultKind.IN_PLACE
    assert abi.alloc == "alloc"
    assert abi.dealloc is None
    assert not abi.reactor and not abi.wasi


def test_packed_result_with_one_argument_free() -> None:
    free = ExportDesc("free", "func", FuncSig((I32,), ()))
    malloc = ExportDesc("malloc", "func", FuncSig((I32,), (I32,)))
    abi = resolve_abi(info(MEMORY, malloc, free, PACKED), AbiOptions(), "m.wasm")
    assert (abi.result, abi.alloc, abi.dealloc) == (ResultKind.PACKED, "malloc", "free")
    assert abi.dealloc_takes_length is False


def test_allocator_preference_order() -> None:
    names = [
        ExportDesc(n, "func", FuncSig((I32,), (I32,))) for n in ("malloc", "allocate", "alloc")
    ]
    assert resolve_abi(info(MEMORY, *names, IN_PLACE), AbiOptions(), "m").alloc == "alloc"
    assert resolve_abi(info(MEMORY, *names[:2], IN_PLACE), AbiOptions(), "m").alloc == "allocate"


def test_named_exports_override_defaults() -> None:
    mine = ExportDesc("mine", "func", FuncSig((I32,), (I32,)))
    run = ExportDesc("run", "func", FuncSig((I32, I32), (I32,)))
    abi = resolve_abi(info(MEMORY, ALLOC, mine, run), AbiOptions(function="run", alloc="mine"), "m")
    assert (abi.transform, abi.alloc) == ("run", "mine")


def test_missing_transform_lists_the_exports() -> None:
    with pytest.raises(ModuleError) as caught:
        resolve_abi(info(MEMORY, ALLOC), AbiOptions(), "m.wasm")
    message = str(caught.value)
    assert "missing export process_chunk (transform)" in message
    assert "memory (memory), alloc (func (i32) -> i32)" in message


def test_missing_allocator() -> None:
    with pytest.raises(
        ModuleError, match=r"missing export alloc or allocate or malloc \(allocator\)"
    ):
        resolve_abi(info(MEMORY, IN_PLACE), AbiOptions(), "m.wasm")


def test_unusable_signature_names_found_and_accepted() -> None:
    bad = ExportDesc("process_chunk", "func", FuncSig((I32,), ("f32",)))
    with pytest.raises(ModuleError) as caught:
        resolve_abi(info(MEMORY, ALLOC, bad), AbiOptions(), "m.wasm")
    assert str(caught.value) == (
        "m.wasm: export process_chunk (transform) has signature (i32) -> f32; "
        "expected (i32, i32) -> i32 or (i32, i32) -> i64"
    )


def test_memory_must_be_a_memory() -> None:
    with pytest.raises(ModuleError, match="export memory is a func, not a memory"):
        resolve_abi(
            info(ExportDesc("memory", "func", FuncSig((), ())), ALLOC, IN_PLACE), AbiOptions(), "m"
        )


def test_only_wasi_imports_can_be_satisfied() -> None:
    wasi = ImportDesc("wasi_snapshot_preview1", "fd_write", "func")
    assert resolve_abi(info(MEMORY, ALLOC, IN_PLACE, imports=(wasi,)), AbiOptions(), "m").wasi
    env = ImportDesc("env", "abort", "func")
    with pytest.raises(
        ModuleError, match=r"imports env.abort \(func\), which wasmstream does not provide"
    ):
        resolve_abi(info(MEMORY, ALLOC, IN_PLACE, imports=(env,)), AbiOptions(), "m")


def test_init_and_reactor() -> None:
    init = ExportDesc("setup", "func", FuncSig((I32, I32), (I32,)))
    reactor = ExportDesc("_initialize", "func", FuncSig((), ()))
    abi = resolve_abi(info(MEMORY, ALLOC, IN_PLACE, init, reactor), AbiOptions(init="setup"), "m")
    assert abi.init == "setup" and abi.init_returns_status and abi.reactor


def test_named_init_must_exist() -> None:
    with pytest.raises(ModuleError, match=r"missing export setup \(init function\)"):
        resolve_abi(info(MEMORY, ALLOC, IN_PLACE), AbiOptions(init="setup"), "m")
