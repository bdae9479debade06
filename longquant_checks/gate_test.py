"""The gate as a test module, for `longquant run` / `baseline` / `demo` (a project of its own writes the same two lines
in its tests, see README)."""


def test_long_context(lq_cell):
    lq_cell.check()
