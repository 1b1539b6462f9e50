"""A save whose image cannot be written: the job fails with the system's
reason, the half-written file goes, and the env is as it was.

The image is written by a worker thread while the next batch is built
(node/migration/filelink.py); this drives a real write error through that
path: the file size limit of this process (RLIMIT_FSIZE, with SIGXFSZ
ignored so that a write past it fails with EFBIG) stops the save of a
4 MiB process after 1 MiB.
"""
import resource
import signal

import pytest

from jmig.proto.control import RemoteError

from .helpers import call, env_ids, memory, ps_entry, same_memory, start, wait_pass


async def test_a_save_that_cannot_write_its_image_fails_and_leaves_the_env_and_no_file(cluster):
    a = await start(cluster, "a")
    env = (await call(cluster, a, "spawn", {"program": "memtest", "args": ["1024", "64"]}))["envid"]
    await wait_pass(a, env)
    await call(cluster, a, "pause", {"envid": env})
    before = memory(a, env)
    images = a.disk.image_path("big").parent
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, limit[1]))
    try:
        with pytest.raises(RemoteError) as err:
            await call(cluster, a, "save", {"envid": env, "name": "big"})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    assert "File too large" in err.value.message, err.value
    assert list(images.iterdir()) == [], "the half-written image was left behind"
    assert env_ids(a) == [env] and ps_entry(a, env)["state"] == "paused", ps_entry(a, env)
    same_memory(memory(a, env), before)
    # Nothing stays stuck: the same save works now, and loads as the process.
    r = await call(cluster, a, "save", {"envid": env, "name": "big"})
    assert r["pages"] == len(before) and r["bytes"] > 4 << 20
    loaded = (await call(cluster, a, "load", {"name": "big"}))["envid"]
    same_memory(memory(a, loaded), before)
