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


def alive(pid):
    """Running (a zombie nobody has reaped yet is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def wait_gone(pid, secs=30):
    """Waits up to secs for pid to end; True when it did."""
    import time
    end = time.time() + secs
    while alive(pid) and time.time() < end:
        time.sleep(0.1)
    return not alive(pid)


def run(title, name_filter, *args):
    """Runs the registered tests whose function name contains name_filter, passing args;
    prints one line per test and a total; returns the number that failed."""
    import time
    passed = failed = 0
    for fn in TESTS:
        if name_filter and name_filter not in fn.__name__:
            continue
        doc = (fn.__doc__ or fn.__name__).strip().splitlines()[0]
        t = time.time()
        try:
            fn(*args)
            print(f"ok   {fn.__name__}: {doc} ({time.time() - t:.0f} s)", flush=True)
            passed += 1
        except Exception as e:  # noqa: BLE001
            print(f"FAIL {fn.__name__}: {doc}: {e}", flush=True)
            failed += 1
    print(f"{title}: {passed} passed, {failed} failed")
    return failed
