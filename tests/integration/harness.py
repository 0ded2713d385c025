"""What every integration test script shares: the @test registry and the two checks.
The scripts run as `python3 tests/integration/test_X.py BUILD [FILTER]`, so this file
is importable from their directory."""

TESTS = []


def test(fn):
    """Registers fn (run in file order by the script's main)."""
    TESTS.append(fn)
    return fn


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def eq(a, b, what=""):
    if a != b:
        raise AssertionError(f"{what}: {a!r} != {b!r}")
