"""--output-parts s3://bucket/prefix/ on moto's S3 server (127.0.0.1): the commit protocol as
multipart uploads completed only where no part is, and the CLI run here, in shards and on a
local Dask cluster, killed and resumed, tampered with, locked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wasmstream.stream.framing import Framing

from conftest import ROOT, fixture, kill_once_recorded, records, spawn, wasmstream

s3fs = pytest.importorskip("s3fs")
from wasmstream.stream.object_parts import ObjectPrefix  # noqa: E402  (needs s3fs to be)

UPPER = fixture("upper.wasm")
MARKS = fixture("marks.wasm")  # its output shows where every frame was cut


class Bucket:
    """A fresh bucket on the server, seen through s3fs in this process."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**env, "PYTHONPATH": str(ROOT)}
        self.fs = s3fs.S3FileSystem(
            key=env["AWS_ACCESS_KEY_ID"],
            secret=env["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": env["AWS_ENDPOINT_URL_S3"]},
            skip_instance_cache=True,
        )
        self.name = f"wasmstream-{uuid.uuid4().hex[:12]}"
        self.fs.mkdir(self.name)

    def url(self, prefix: str) -> str:
        return f"s3://{self.name}/{prefix}/"

    def listing(self, prefix: str) -> list[str]:
        try:
            found = self.fs.ls(f"{self.name}/{prefix}", detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(path.rsplit("/", 1)[-1] for path in found)

    def read(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(f"{self.name}/{key}"))

    def write(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(f"{self.name}/{key}", data)

    def joined(self, prefix: str) -> bytes:
        names = [n for n in self.listing(prefix) if n.startswith("part-")]
        return b"".join(self.read(f"{prefix}/{name}") for name in names)

    def uploads(self, prefix: str) -> list[str]:
        """The keys of incomplete multipart uploads under the prefix."""
        page = self.fs.call_s3("list_multipart_uploads", Bucket=self.name, Prefix=f"{prefix}/")
        return sorted(upload["Key"] for upload in page.get("Uploads", []))

    def start_upload(self, key: str) -> None:
        """An attempt that died mid-part: an upload begun, one block sent, never completed."""
        started = self.fs.call_s3("create_multipart_upload", Bucket=self.name, Key=key)
        self.fs.call_s3(
            "upload_part",
            Bucket=self.name,
            Key=key,
            UploadId=started["UploadId"],
            PartNumber=1,
            Body=b"x" * (5 << 20),
        )

    def run(self, prefix: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        """`wasmstream run ARGS --output-parts s3://…/prefix/`, its checkpoint `prefix.json`."""
        more = ["--output-parts", self.url(prefix)]
        if "--checkpoint" not in args:
            more += ["--checkpoint", f"{prefix}.json"]
        return wasmstream("run", *args, *more, env=self.env, **kwargs)


@pytest.fixture
def bucket(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Bucket]:
    for name, value in s3_server.items():  # for ObjectPrefix in this process
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield Bucket(s3_server)
    s3fs.S3FileSystem.clear_instance_cache()


# --- the protocol ---------------------------------------------------------------------------


def test_an_upload_is_invisible_until_committed_and_then_committed_once(bucket: Bucket) -> None:
    prefix = ObjectPrefix(bucket.url("out"))
    first, second = prefix.attempt(3), prefix.attempt(3)
    big = b"one " * (3 << 20)  # 12 MiB: past a block, so the upload is under way
    first.write(big)
    second.write(b"two")
    assert bucket.listing("out") == []  # nothing visible yet
    assert bucket.uploads("out") == [f"{bucket.name}/out/part-00003"[len(bucket.name) + 1 :]]
    won = first.commit(b'{"frame":1}\n')
    kept = second.commit(b'{"frame":2}\n')  # the same part run again: the first one stays
    assert bucket.read("out/part-00003") == big
    assert bucket.read("out/_dead-letters-00003.jsonl") == b'{"frame":1}\n'
    assert won == kept == prefix.describe("part-00003")._replace(dead_letters=12)
    assert bucket.listing("out") == ["_dead-letters-00003.jsonl", "part-00003"]
    late = prefix.attempt(3)  # begun after the commit (a worker thought lost came back)
    late.write(b"late")
    assert late.commit() == won._replace(dead_letters=None)
    assert bucket.read("out/part-00003") == big
    lost = prefix.attempt(4)
    lost.write(big)
    lost.abandon()
    assert bucket.listing("out") == ["_dead-letters-00003.jsonl", "part-00003"]
    assert bucket.uploads("out") == []  # every upload completed or aborted


# --- the CLI --------------------------------------------------------------------------------


@pytest.mark.parametrize("framing", [Framing.LINES, Framing.FIXED])
def test_parts_in_a_prefix_joined_are_one_run(
    bucket: Bucket, tmp_path: Path, framing: Framing
) -> None:
    data = records(framing, [n % 53 for n in range(3000)])
    (tmp_path / "in").write_bytes(data)
    if framing is Framing.FIXED:
        args = [MARKS, "in", "--free", "release", "--frame-size", "1000"]
    else:
        args = [UPPER, "in", "--framing", "lines", "--frame-size", "1K"]
    whole = wasmstream("run", *args, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    done = bucket.run("out", *args, "--part-size", "7K", "-j", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"" and bucket.joined("out") == whole.stdout
    names = bucket.listing("out")
    parts = [n for n in names if n.startswith("part-")]
    assert names == ["_SUCCESS", "_checkpoint.json", *parts]  # no lock left, nothing else
    assert bucket.uploads("out") == []
    local = json.loads((tmp_path / "out.json").read_text())
    assert local["status"] == "complete" and local["output"] == bucket.url("out")
    assert [f"part-{p['number']:05d}" for p in local["position"]["parts"]] == parts
    assert json.loads(bucket.read("out/_checkpoint.json")) == local  # the record, beside


@pytest.mark.wasmtime_only  # sleepy.wasm is a WASI command, which wasmer cannot run
def test_a_killed_run_resumes_exactly_and_leaves_no_upload(bucket: Bucket, tmp_path: Path) -> None:
    data = b"".join(b"2%03d" % n for n in range(16))  # sleepy: 200 ms per 4-byte part
    (tmp_path / "in").write_bytes(data)
    args = [fixture("sleepy.wasm"), "in", "--frame-size", "4", "--part-size", "4", "-j", "2"]
    args += ["--checkpoint-interval", "10ms", "--checkpoint", "ckpt.json"]
    client = spawn(
        ["run", *args, "--output-parts", bucket.url("out")],
        cwd=tmp_path,
        env={**os.environ, **bucket.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    kill_once_recorded(client, tmp_path / "ckpt.json", 2)
    names = bucket.listing("out")
    assert "_SUCCESS" not in names and "_lock" in names  # the lock of a run that died
    bucket.start_upload("out/part-00009")  # an attempt that died mid-part
    bucket.write("out/part-00015", b"committed, never recorded")
    resumed = bucket.run("out", *args, "--resume", cwd=tmp_path)  # takes its own lock over
    assert resumed.returncode == 0, resumed.stderr
    assert bucket.joined("out") == data
    parts = [f"part-{n:05d}" for n in range(16)]
    assert bucket.listing("out") == ["_SUCCESS", "_checkpoint.json", *parts]
    assert bucket.uploads("out") == []


def test_shards_into_one_prefix_are_one_run_and_succeed_once_all_are_done(
    bucket: Bucket, tmp_path: Path
) -> None:
    data = records(Framing.LINES, [n % 47 for n in range(4000)])
    (tmp_path / "in").write_bytes(data)
    args = [UPPER, "in", "--framing", "lines", "--part-size", "9K"]
    for k in (2, 3, 1):  # in any order, each with a checkpoint of its own
        assert "_SUCCESS" not in bucket.listing("many")
        shard = bucket.run(
            "many", *args, "--shard", f"{k}/3", "--checkpoint", f"{k}.json", cwd=tmp_path
        )
        assert shard.returncode == 0, shard.stderr
    names = bucket.listing("many")
    assert [n for n in names if n.startswith("_")] == [
        "_SUCCESS",
        "_checkpoint.1-of-3.json",
        "_checkpoint.2-of-3.json",
        "_checkpoint.3-of-3.json",
    ]
    assert bucket.joined("many") == data.upper()


def test_a_prefix_another_run_holds_is_refused_and_nothing_is_written(
    bucket: Bucket, tmp_path: Path
) -> None:
    (tmp_path / "in").write_bytes(b"abc\n" * 100)
    bucket.write("out/_lock", b"elsewhere:/var/run/other.json")
    refused = bucket.run("out", UPPER, "in", cwd=tmp_path)
    assert refused.returncode == 9, refused.stderr
    assert b"in use by the run of checkpoint elsewhere:/var/run/other.json" in refused.stderr
    assert bucket.listing("out") == ["_lock"] and bucket.read("out/_lock").startswith(b"else")
    bucket.fs.rm(f"{bucket.name}/out/_lock")
    bucket.write("out/_lock.1-of-2", b"elsewhere:/var/run/shard.json")
    beside = bucket.run("out", UPPER, "in", cwd=tmp_path)  # a whole run beside a shard's
    assert beside.returncode == 9 and b"in use by a shard run" in beside.stderr
    assert bucket.listing("out") == ["_lock.1-of-2"]


def test_a_resume_refuses_a_recorded_part_that_changed(bucket: Bucket, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"a" * 1000 + b"!" + b"a" * 999)
    args = [fixture("trap.wasm"), "in", "--frame-size", "100", "--part-size", "300", "-j", "2"]
    failed = bucket.run("out", *args, cwd=tmp_path)
    assert failed.returncode == 4 and b"frame 10 at offset 1000" in failed.stderr
    assert bucket.listing("out") == ["part-00000", "part-00001", "part-00002"]
    bucket.write("out/part-00001", b"b" * 300)
    refused = bucket.run("out", *args, "--resume", cwd=tmp_path)
    assert refused.returncode == 9, refused.stderr
    lines = refused.stderr.decode().splitlines()
    assert len(lines) == 1 and f"{bucket.url('out')}part-00001 is not the part" in lines[0]
    assert bucket.listing("out") == ["part-00000", "part-00001", "part-00002"]


def test_what_a_prefix_cannot_take_is_refused_before_anything_is_written(
    bucket: Bucket, tmp_path: Path
) -> None:
    (tmp_path / "in").write_bytes(b"abc\n")
    url = bucket.url("out")
    no_checkpoint = wasmstream("run", UPPER, "in", "--output-parts", url, cwd=tmp_path)
    assert no_checkpoint.returncode == 2 and b"needs --checkpoint FILE" in no_checkpoint.stderr
    memory = wasmstream(
        "run",
        UPPER,
        "in",
        "--output-parts",
        "memory://x/out/",
        "--checkpoint",
        "c.json",
        cwd=tmp_path,
    )
    assert memory.returncode == 2 and b"not to memory://" in memory.stderr
    bucket.write("in/data", b"abc\n")
    inside = bucket.run("in", UPPER, f"s3://{bucket.name}/in/data", cwd=tmp_path)
    assert inside.returncode == 2 and b"is inside --output-parts" in inside.stderr
    missing = wasmstream(
        "run",
        UPPER,
        "in",
        "--output-parts",
        "s3://no-such-bucket-here/out/",
        "--checkpoint",
        "c.json",
        cwd=tmp_path,
        env=bucket.env,
    )
    assert missing.returncode == 8 and b"there is no bucket no-such-bucket-here" in missing.stderr
    for refused in (no_checkpoint, memory, inside, missing):
        assert len(refused.stderr.splitlines()) == 1 and b"Traceback" not in refused.stderr
    assert bucket.listing("out") == [] and bucket.listing("in") == ["data"]
    assert not (tmp_path / "c.json").exists()


@pytest.mark.cluster
def test_workers_of_a_local_cluster_write_the_parts_into_the_prefix(
    bucket: Bucket, tmp_path: Path
) -> None:
    data = records(Framing.LINES, [n % 41 for n in range(6000)])
    (tmp_path / "in").write_bytes(data)
    args = [UPPER, "in", "--framing", "lines", "--part-size", "16K", "--cluster", "local:2"]
    done = bucket.run("out", *args, "--stats-json", "stats.json", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert bucket.joined("out") == data.upper()
    assert "cluster workers" in json.loads((tmp_path / "stats.json").read_text())["jobs"]
    assert "_SUCCESS" in bucket.listing("out") and bucket.uploads("out") == []


# --- edges a hostile look found ---------------------------------------------------------------


def test_an_empty_attempt_at_a_committed_part_keeps_that_part(bucket: Bucket) -> None:
    prefix = ObjectPrefix(bucket.url("out"))
    first, empty = prefix.attempt(2), prefix.attempt(2)
    first.write(b"data")
    won = first.commit()
    assert empty.commit() == won  # an empty part is committed as any other: only if it is free
    assert bucket.read("out/part-00002") == b"data"
    alone = prefix.attempt(5)
    assert alone.commit().size == 0 and bucket.read("out/part-00005") == b""
    assert prefix.attempt(5).commit().size == 0


def test_a_prefix_leaves_the_uploads_of_the_prefixes_below_it_alone(bucket: Bucket) -> None:
    below = ObjectPrefix(bucket.url("out/sub"))
    beside = ObjectPrefix(bucket.url("outx"))
    big = b"x" * (9 << 20)  # past a block: a multipart upload under way in each
    running = [below.attempt(3), beside.attempt(3)]
    for attempt in running:
        attempt.write(big)
    ObjectPrefix(bucket.url("out")).remove([], range(0, 10))  # what a run in out/ clears
    ObjectPrefix(f"s3://{bucket.name}/").remove([], range(0, 10))  # and one at the root
    for attempt in running:
        assert attempt.commit().size == len(big)  # their uploads were not aborted
    assert bucket.fs.size(f"{bucket.name}/out/sub/part-00003") == len(big)


def test_a_resume_of_a_run_killed_before_its_success_releases_the_lock_it_left(
    bucket: Bucket, tmp_path: Path
) -> None:
    (tmp_path / "in").write_bytes(b"abc\n" * 3000)
    args = [UPPER, "in", "--framing", "lines", "--part-size", "4K"]
    assert bucket.run("out", *args, cwd=tmp_path).returncode == 0
    # what a kill after the last save leaves: no _SUCCESS, the run's own lock
    bucket.fs.rm(f"{bucket.name}/out/_SUCCESS")
    bucket.write("out/_lock", f"{socket.gethostname()}:{tmp_path / 'out.json'}".encode())
    resumed = wasmstream("resume", "--checkpoint", "out.json", cwd=tmp_path, env=bucket.env)
    assert resumed.returncode == 0, resumed.stderr
    names = bucket.listing("out")
    assert "_SUCCESS" in names and "_lock" not in names
    other = bucket.run("out", *args, "--checkpoint", "other.json", "--restart", cwd=tmp_path)
    assert other.returncode == 0, other.stderr  # the prefix is free for the next run


def test_a_server_that_cannot_be_reached_is_not_said_to_have_no_bucket(
    bucket: Bucket, tmp_path: Path
) -> None:
    (tmp_path / "in").write_bytes(b"abc\n")
    nowhere = "http://127.0.0.1:9"  # the discard port: nothing listens
    env = {"AWS_ENDPOINT_URL_S3": nowhere, "FSSPEC_S3_ENDPOINT_URL": nowhere}
    args = ["--output-parts", bucket.url("out"), "--checkpoint", "c.json"]
    refused = wasmstream(
        "run", UPPER, "in", *args, cwd=tmp_path, env={**bucket.env, **env, "AWS_MAX_ATTEMPTS": "1"}
    )
    assert refused.returncode == 8 and len(refused.stderr.splitlines()) == 1
    assert b"Could not connect" in refused.stderr and b"no bucket" not in refused.stderr


def test_objects_under_a_part_s_name_are_refused_not_left_among_the_parts(
    bucket: Bucket, tmp_path: Path
) -> None:
    (tmp_path / "in").write_bytes(b"abc\n" * 3000)
    args = [UPPER, "in", "--framing", "lines", "--part-size", "4K", "--restart"]
    bucket.write("out/part-00001/x", b"not a part")  # `cat part-*` in key order would take it
    refused = bucket.run("out", *args, cwd=tmp_path)
    assert refused.returncode == 8 and len(refused.stderr.splitlines()) == 1
    assert f"{bucket.url('out')}part-00001/ holds objects".encode() in refused.stderr
    assert bucket.listing("out") == ["part-00001"]  # as a folder's subfolder: nothing removed
    bucket.fs.rm(f"{bucket.name}/out/part-00001/x")
    assert bucket.run("out", *args, cwd=tmp_path).returncode == 0
    assert bucket.joined("out") == b"ABC\n" * 3000


def test_an_input_inside_the_prefix_is_refused_however_the_url_spells_it(
    bucket: Bucket, tmp_path: Path
) -> None:
    bucket.write("in/part-00000", b"abc\n")  # named as a part: a --restart would remove it
    for given, parts in (("s3", "s3a"), ("s3a", "s3")):
        inside = wasmstream(
            "run",
            UPPER,
            f"{given}://{bucket.name}/in/part-00000",
            "--output-parts",
            f"{parts}://{bucket.name}/in/",
            "--checkpoint",
            "c.json",
            "--restart",
            cwd=tmp_path,
            env=bucket.env,
        )
        assert inside.returncode == 2 and b"is inside --output-parts" in inside.stderr
        assert bucket.read("in/part-00000") == b"abc\n"


@pytest.mark.wasmtime_only  # sleepy.wasm is a WASI command, which wasmer cannot run
def test_a_shard_run_again_and_killed_is_not_taken_for_done_by_the_others(
    bucket: Bucket, tmp_path: Path
) -> None:
    data = b"".join(b"2%03d" % n for n in range(8))  # sleepy: 200 ms per 4-byte part
    (tmp_path / "in").write_bytes(data)
    args = [fixture("sleepy.wasm"), "in", "--frame-size", "4", "--part-size", "4", "-j", "2"]
    args += ["--checkpoint-interval", "10ms"]
    for k in (1, 2):
        done = bucket.run(
            "p", *args, "--shard", f"{k}/2", "--checkpoint", f"{k}.json", cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr
    assert "_SUCCESS" in bucket.listing("p")
    args += ["--shard", "1/2", "--checkpoint", "1.json", "--output-parts", bucket.url("p")]
    again = spawn(
        ["run", *args, "--restart"],
        cwd=tmp_path,
        env={**os.environ, **bucket.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def restarted() -> bool:
        try:
            saved = json.loads((tmp_path / "1.json").read_text())
        except (OSError, ValueError):
            return False
        return saved["status"] == "running" and len(saved["position"]["parts"]) >= 1

    deadline = time.monotonic() + 30
    while not restarted():
        assert time.monotonic() < deadline and again.poll() is None
        time.sleep(0.01)
    again.send_signal(signal.SIGKILL)  # shard 1 is half done again
    again.wait()
    other = wasmstream("resume", "--checkpoint", "2.json", cwd=tmp_path, env=bucket.env)
    assert other.returncode == 0, other.stderr
    assert "_SUCCESS" not in bucket.listing("p")  # shard 1's old copy no longer says done
    resumed = wasmstream("resume", "--checkpoint", "1.json", cwd=tmp_path, env=bucket.env)
    assert resumed.returncode == 0, resumed.stderr
    assert "_SUCCESS" in bucket.listing("p") and bucket.joined("p") == data


def test_a_url_that_names_no_bucket_is_a_usage_error(bucket: Bucket, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"abc\n")
    for url in ("s3://", "s3:///out/"):
        refused = wasmstream(
            "run", UPPER, "in", "--output-parts", url, "--checkpoint", "c.json", cwd=tmp_path
        )
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1
        assert f"--output-parts {url} names no bucket".encode() in refused.stderr
    assert not (tmp_path / "c.json").exists()


def test_a_finished_run_resumed_over_a_missing_part_writes_no_success(
    bucket: Bucket, tmp_path: Path
) -> None:
    (tmp_path / "in").write_bytes(b"abc\n" * 3000)
    args = [UPPER, "in", "--framing", "lines", "--part-size", "4K"]
    assert bucket.run("out", *args, cwd=tmp_path).returncode == 0
    bucket.fs.rm([f"{bucket.name}/out/_SUCCESS", f"{bucket.name}/out/part-00001"])
    resumed = wasmstream("resume", "--checkpoint", "out.json", cwd=tmp_path, env=bucket.env)
    assert resumed.returncode == 9, resumed.stderr
    assert f"{bucket.url('out')}part-00001, recorded in checkpoint".encode() in resumed.stderr
    assert "_SUCCESS" not in bucket.listing("out") and "_lock" not in bucket.listing("out")


class StallingProxy:
    """A TCP relay to the S3 server that can stop relaying: a store that stops answering
    (requests are taken, never passed on), as a server that hangs or a network that drops."""

    def __init__(self, endpoint: str) -> None:
        import threading

        self._target = ("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))
        self.relaying = threading.Event()
        self.relaying.set()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.relaying.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            sink.close()

    def close(self) -> None:
        self.relaying.set()
        self._listener.close()


@pytest.mark.wasmtime_only  # sleepy.wasm is a WASI command, which wasmer cannot run
def test_an_interrupt_ends_the_run_when_the_store_stops_answering(
    bucket: Bucket, tmp_path: Path
) -> None:
    data = b"".join(b"2%03d" % n for n in range(16))  # sleepy: 200 ms per 4-byte part
    (tmp_path / "in").write_bytes(data)
    proxy = StallingProxy(bucket.env["AWS_ENDPOINT_URL_S3"])
    env = {"AWS_ENDPOINT_URL_S3": proxy.endpoint, "FSSPEC_S3_ENDPOINT_URL": proxy.endpoint}
    args = [fixture("sleepy.wasm"), "in", "--frame-size", "4", "--part-size", "4", "-j", "2"]
    args += ["--checkpoint-interval", "10ms", "--checkpoint", "c.json"]
    client = spawn(
        ["run", *args, "--output-parts", bucket.url("out")],
        cwd=tmp_path,
        env={**os.environ, **bucket.env, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while len(bucket.listing("out")) < 3:  # the lock and two parts
            assert time.monotonic() < deadline and client.poll() is None
            time.sleep(0.02)
        proxy.relaying.clear()
        time.sleep(0.3)  # parts under way are now stuck in their requests
        client.send_signal(signal.SIGINT)
        assert client.wait(timeout=30) == 130  # the requests left behind, not waited for
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        proxy.close()
    resumed = bucket.run("out", *args, "--resume", cwd=tmp_path)  # the store answers again
    assert resumed.returncode == 0, resumed.stderr
    assert bucket.joined("out") == data and bucket.uploads("out") == []


def test_shards_of_another_count_do_not_share_a_prefix(bucket: Bucket, tmp_path: Path) -> None:
    (tmp_path / "in").write_bytes(b"abc\n" * 100)
    bucket.write("out/_lock.1-of-2", b"elsewhere:/var/run/shard.json")  # shard 1/2 runs
    other = bucket.run("out", UPPER, "in", "--shard", "1/3", "--restart", cwd=tmp_path)
    assert other.returncode == 9 and b"a shard run of another shard count" in other.stderr
    assert bucket.listing("out") == ["_lock.1-of-2"]  # its range overlaps 1/2's: kept apart
    sibling = bucket.run("out", UPPER, "in", "--shard", "2/2", cwd=tmp_path)
    assert sibling.returncode == 0, sibling.stderr
