"""run_cli: the project's own errors become one ``error: ...`` line; programming errors keep their traceback."""
import pytest

from training.setup import run_cli
from utils.errors import CheckpointError, ConfigError, DataError, DataKeyError, DistributedError


def _raiser(exc: Exception):
    def main():
        raise exc
    return main


@pytest.mark.parametrize("exc", [
    ConfigError("run.json: config key 'seed': expected int"),
    DataError("cap_en.db: example 3 has no input_ids"),
    DataKeyError("cap_en.db: no key 'x'"),
    CheckpointError("model.pt: not a readable checkpoint"),
    DistributedError("rank 1 failed"),
])
def test_project_errors_exit_with_one_line(exc, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(_raiser(exc))
    assert info.value.code == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {exc}"]


@pytest.mark.parametrize("exc", [
    ValueError("too many values to unpack"),        # e.g. a shape bug inside the code
    KeyError("input_ids"),
    FileNotFoundError("/tmp/some/internal/file"),
    TypeError("unsupported operand"),
])
def test_programming_errors_keep_their_traceback(exc):
    """The old run_cli turned every ValueError (and FileNotFoundError) into a one-liner, hiding bugs."""
    with pytest.raises(type(exc)) as info:
        run_cli(_raiser(exc))
    assert info.value is exc
