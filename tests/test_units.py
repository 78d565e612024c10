import pytest

from ctstore.units import parse_bytes

CASES = ["100", "100 MB", "100M", "5kB", "5.4 kB", "1kiB", "1e6", "1e6 kB", "MB", "4GB", "4GiB", "2gb", "1.5 TiB",
         "3Pi", "7 b", "0", "12 k", "1_000"]


@pytest.mark.parametrize("text", CASES + [123, 2.5])
def test_parse_bytes_equals_dask(text):
    from dask.utils import parse_bytes as dask_parse_bytes

    assert parse_bytes(text) == dask_parse_bytes(text)


@pytest.mark.parametrize("text", ["5 foos", "GB4", "x", "1..2GB"])
def test_parse_bytes_refuses_what_dask_refuses(text):
    from dask.utils import parse_bytes as dask_parse_bytes

    with pytest.raises(ValueError) as ours:
        parse_bytes(text)
    with pytest.raises(ValueError) as theirs:
        dask_parse_bytes(text)
    assert str(ours.value) == str(theirs.value)
