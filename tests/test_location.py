"""Location: pickles as address + options, atomic writes leave all or nothing."""

import os
import pickle

import numpy as np
import pytest

from ctstore.location import Location, atomic_path


def test_location_pickles_without_its_filesystem_and_keeps_options(tmp_path):
    loc = Location("memory://bucket/a", {"skip_instance_cache": True})
    _ = loc.fs  # opened once on this side
    again = pickle.loads(pickle.dumps(loc))
    assert again == loc and again.storage_options == {"skip_instance_cache": True}
    assert "fs" not in again.__dict__, "the open filesystem travelled with it"
    assert again.child("b", "c").url == "memory://bucket/a/b/c"


def test_local_location_is_absolute_and_zarr_gets_no_options(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loc = Location.of("rel/dir", {"anon": True})
    assert loc.url == os.path.join(str(tmp_path), "rel/dir") and loc.is_local and loc.zarr_options is None


def test_write_atomic_and_atomic_path_publish_only_complete_outputs(tmp_path):
    target = Location.of(str(tmp_path / "out.bin"))
    target.write_atomic(b"abc")
    assert target.read_bytes() == b"abc"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with tmp.open("wb") as f:
                f.write(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"abc" and os.listdir(tmp_path) == ["out.bin"]
    with atomic_path(str(tmp_path / "dir")) as tmp:
        os.makedirs(tmp)
        np.save(os.path.join(tmp, "x.npy"), np.arange(3))
    assert sorted(os.listdir(tmp_path)) == ["dir", "out.bin"]


def test_atomic_path_on_an_object_store_filesystem():
    target = Location("memory://ctstore-test/atomic/out.json")
    target.write_atomic(b"{}")
    assert target.read_bytes() == b"{}"
    assert target.fs.ls("/ctstore-test/atomic", detail=False) == ["/ctstore-test/atomic/out.json"]
