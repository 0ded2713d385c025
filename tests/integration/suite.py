"""A small runner for integration test files: `@suite.test` registers a scenario (its
docstring's first line is its name), `suite.run(fixture)` runs those matching the
command line's filter and exits 1 if any failed. New test files use it; the older ones
carry their own copy of the same loop."""
import os
import sys
import time


class Suite:
    def __init__(self, title):
        self.title = title
        self.build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
        self.filter = sys.argv[2] if len(sys.argv) > 2 else ""
        self.g = os.path.join(self.build, "gondolin")
        self.tests = []

    def test(self, fn):
        self.tests.append(fn)
        return fn

    def run(self, *args):
        passed = failed = 0
        for fn in self.tests:
            name = fn.__doc__.strip().splitlines()[0]
            if self.filter and self.filter not in fn.__name__:
                continue
            t = time.time()
            try:
                fn(*args)
                print(f"ok   {fn.__name__}: {name} ({time.time() - t:.0f} s)", flush=True)
                passed += 1
            except Exception as e:  # noqa: BLE001
                print(f"FAIL {fn.__name__}: {name}: {e}", flush=True)
                failed += 1
        print(f"{self.title}: {passed} passed, {failed} failed")
        return failed


def expect(c, what):
    if not c:
        raise AssertionError(what)
