"""The image file as a migration's peer (node/migration/filelink.py), without
a node: SaveLink writes a hidden file of its own beside NAME.img (mode
0600) and renames it onto NAME.img only at the commit, so a save that
fails midway -- `save --force` over an existing image included -- leaves
the previous image whole; LoadLink reads an image into a restorer.  Both
close what they open, whatever happens."""
import os
import stat
import time

import pytest
import trio

from jmig import programs
from jmig.kernel.kernel import Kernel
from jmig.node.migration.filelink import LoadLink, SaveLink
from jmig.node.migration.stream import StreamRestorer, StreamWriter, stream_bytes
from jmig.proto import migration as m
from jmig.proto.image import max_image_bytes
from jmig.proto.pstream import StreamError

OLD = b"the previous image, whole" * 100


def _dir_listing(d):
    return sorted(os.listdir(d))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "snap.img"
    path.write_bytes(OLD)
    return path


async def test_the_image_is_untouched_while_a_save_over_it_is_being_written(image):
    link = SaveLink(image, 0x1000)
    try:
        await link.send_stream([b"new stream, first part" * 50])
        assert image.read_bytes() == OLD
        assert link.tmp != image and link.tmp.parent == image.parent
    finally:
        await link.aclose()


async def test_a_save_that_fails_midway_leaves_the_previous_image_and_no_temporary_file(image):
    link = SaveLink(image, 0x1000)
    await link.send_stream([b"new stream, cut short" * 50])
    await link.aclose()                                # aborted before the commit
    assert image.read_bytes() == OLD
    assert _dir_listing(image.parent) == ["snap.img"]


async def test_a_committed_save_replaces_the_image_whole_and_leaves_no_temporary_file(image):
    link = SaveLink(image, 0x1000)
    new = [b"new stream " * 300, b"and its second part" * 20]
    await link.send_stream(new)
    await link.send(m.Commit())
    assert await link.receive({m.Committed}) == m.Committed(0x1000)
    await link.aclose()
    assert image.read_bytes() == b"".join(new)
    assert _dir_listing(image.parent) == ["snap.img"]


# -- a real image, through both links -------------------------------------------------------

def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _standard_fds_open() -> bool:
    return all(os.fstat(fd) is not None for fd in (0, 1, 2))


@pytest.fixture(scope="module")
def memtest():
    """A paused memtest of 320 pages (its image is over 1 MiB, so that a
    load reads past the first chunk) and the image's bytes."""
    k = Kernel(memory=16 << 20, clock=lambda: time.monotonic() * 1000.0)
    e = k.env_create(programs.load("memtest"), ["memtest", "320", "8"], name="memtest")
    out = ""
    while "pass 1 ok" not in out:
        k.run(50_000)
        out += "".join(getattr(x, "text", "") for x in k.take_events())
    k.pause(e.env_id)
    return k, e.env_id, stream_bytes(k, e.env_id, "src")


async def _save(path, k, envid) -> tuple[SaveLink, bytes]:
    """Save env envid to path through a SaveLink, committed; (the link, the
    bytes sent)."""
    link = SaveLink(path, envid)
    sent = []
    for parts in StreamWriter(k, envid, "src", "image").parts():
        sent += [bytes(p) for p in parts]
        await link.send_stream(parts)
    assert await link.receive({m.Prepared}) == m.Prepared(envid)
    await link.send(m.Commit())
    assert await link.receive({m.Committed}) == m.Committed(envid)
    return link, b"".join(sent)


async def test_a_save_writes_the_whole_stream_readable_by_its_owner_only(tmp_path, memtest):
    """An image holds a process's memory: mode 0600 whatever the umask.
    The link counts every byte it wrote as sent, none as received, and
    closes what it opened -- twice is harmless."""
    k, envid, _ = memtest
    path = tmp_path / "m.img"
    before = _fds()
    old = os.umask(0o022)
    try:
        link, data = await _save(path, k, envid)
    finally:
        os.umask(old)
    assert len(data) > 1 << 20
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (link.bytes_sent, link.bytes_received) == (len(data), 0)
    await link.aclose()
    await link.aclose()
    assert not _fds() - before and _standard_fds_open()
    assert _dir_listing(tmp_path) == ["m.img"]


async def test_two_saves_of_one_name_at_once_each_write_a_file_of_their_own(image):
    """`save --force` twice at once: each writes its own hidden file; the
    image is the last one committed, whole."""
    first, second = SaveLink(image, 0x1000), SaveLink(image, 0x1001)
    assert first.tmp != second.tmp
    try:
        await first.send_stream([b"first " * 2000])
        await second.send_stream([b"second " * 1000])
        await first.send_stream([b"first, again " * 10])
        for link in (first, second):
            await link.send(m.Commit())
            await link.receive({m.Committed})
    finally:
        await first.aclose()
        await second.aclose()
    assert image.read_bytes() == b"second " * 1000
    assert _dir_listing(image.parent) == ["snap.img"]


async def test_a_close_in_a_cancelled_scope_still_ends_the_write_and_removes_its_file(image):
    """Closing a save's link when the caller is cancelled (a cancelled
    migration) waits for the write in flight, then closes the file and
    removes it: no descriptor and no hidden file left."""
    before = _fds()
    link = SaveLink(image, 0x1000)
    await link.send_stream([b"x" * (8 << 20)])
    with trio.CancelScope() as scope:
        scope.cancel()
        await link.aclose()
    assert not _fds() - before
    assert _dir_listing(image.parent) == ["snap.img"]
    await link.aclose()                                # again: nothing more to do
    assert not _fds() - before and _standard_fds_open()
    assert image.read_bytes() == OLD


async def test_a_load_reads_the_whole_image_without_waiting_on_a_timer(tmp_path, memtest,
                                                                        autojump_clock):
    """LoadLink feeds every byte of the file to the restorer (its pages
    straight into their frames, the records between them read a piece at a
    time) and only yields to other tasks, never sleeps (the clock here
    jumps over any sleep, so a sleep shows as time passed)."""
    k, envid, data = memtest
    path = tmp_path / "m.img"
    path.write_bytes(data)
    before = _fds()
    link = LoadLink(path, k.phys.nframes)
    restorer = StreamRestorer(None, create=False)
    t0 = trio.current_time()
    await link.receive_stream(restorer)
    assert trio.current_time() == t0
    assert restorer.done and restorer.pages == restorer.total == len(k.page_frames(envid)[0])
    assert link.bytes_received == len(data)
    await link.aclose()
    await link.aclose()
    assert not _fds() - before and _standard_fds_open()


async def test_an_image_cut_inside_a_batch_of_pages_is_refused_as_truncated(tmp_path, memtest):
    k, _, data = memtest
    path = tmp_path / "cut.img"
    path.write_bytes(data[:len(data) // 2])
    link = LoadLink(path, k.phys.nframes)
    try:
        with pytest.raises(StreamError, match="truncated inside a batch"):
            await link.receive_stream(StreamRestorer(None, create=False))
    finally:
        await link.aclose()


async def test_a_file_as_large_as_the_largest_image_that_fits_is_opened_one_byte_more_is_not(
        tmp_path):
    path = tmp_path / "big.img"
    limit = max_image_bytes(16)
    with open(path, "wb") as f:
        f.truncate(limit)
    await LoadLink(path, 16).aclose()
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(StreamError, match=f"file is {limit + 1} bytes; no image that fits "
                                          f"here can exceed {limit}"):
        LoadLink(path, 16)
