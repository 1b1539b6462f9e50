"""The image file as a migration's peer (node/migration/filelink.py), without
a node: SaveLink writes beside NAME.img and renames onto it only at the
commit, so a save that fails midway -- `save --force` over an existing
image included -- leaves the previous image whole."""
import os

import pytest

from jmig.node.migration.filelink import SaveLink
from jmig.proto import migration as m

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
