#!/usr/bin/env python3
"""The suite's fuzz step (scripts/fuzz.sh) must fail when the fuzzer fails: a stub that
exits 3, one killed by a signal, one that runs nothing, and a real libFuzzer target that
crashes or leaks all fail the step; a passing stub and a clean real run pass it, with the
summary printed. Usage: test_fuzz_step.py [BUILD_FUZZ_DIR] (real targets only if built)."""
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FUZZ_SH = os.path.join(ROOT, "scripts", "fuzz.sh")
BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "build-fuzz"))
SELFTEST = os.path.join(BUILD, "tests", "fuzz-selftest")
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def step(tmp, binary, seeds=(), secs=2):
    """Runs scripts/fuzz.sh in tmp (as the cwd) like test.sh does; returns (status, output)."""
    seed_dir = os.path.join(tmp, "seeds")
    os.makedirs(seed_dir, exist_ok=True)
    for i, s in enumerate(seeds):
        with open(os.path.join(seed_dir, f"seed{i}"), "wb") as f:
            f.write(s)
    r = subprocess.run(["bash", FUZZ_SH, binary, str(secs), os.path.join(tmp, "corpus"), seed_dir],
                       cwd=tmp, capture_output=True, timeout=120)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


def stub(tmp, body):
    p = os.path.join(tmp, "stub")
    with open(p, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(p, 0o755)
    return p


def artifacts(tmp, prefix):
    d = os.path.join(tmp, "corpus.artifacts")
    return [n for n in os.listdir(d) if n.startswith(prefix)] if os.path.isdir(d) else []


def stray_files(tmp):
    """Anything the run wrote outside its corpus, log and artifact directory."""
    return sorted(set(os.listdir(tmp)) - {"seeds", "corpus", "corpus.log", "corpus.artifacts", "stub"})


@test
def stub_exiting_3_fails_the_step():
    with tempfile.TemporaryDirectory() as tmp:
        st, out = step(tmp, stub(tmp, 'echo "stat::number_of_executed_units: 7"; exit 3'))
        expect(st == 3, f"status {st}, want 3:\n{out}")
        expect("failed (exit status 3)" in out, out)


@test
def stub_killed_by_a_signal_fails_the_step():
    with tempfile.TemporaryDirectory() as tmp:
        st, out = step(tmp, stub(tmp, 'echo "==1==ERROR: AddressSanitizer: SEGV"; kill -SEGV $$'))
        expect(st != 0, f"status 0:\n{out}")
        expect("ERROR: AddressSanitizer: SEGV" in out, out)


@test
def stub_that_runs_nothing_fails_the_step():
    with tempfile.TemporaryDirectory() as tmp:
        st, out = step(tmp, stub(tmp, "exit 0"))
        expect(st != 0, f"status 0:\n{out}")
        expect("without executing any input" in out, out)


@test
def missing_binary_fails_the_step():
    with tempfile.TemporaryDirectory() as tmp:
        st, out = step(tmp, os.path.join(tmp, "no-such-fuzzer"))
        expect(st != 0, f"status 0:\n{out}")


@test
def passing_stub_passes_with_its_summary_and_arguments():
    with tempfile.TemporaryDirectory() as tmp:
        args = os.path.join(tmp, "args")
        st, out = step(tmp, stub(tmp, f'printf "%s\\n" "$@" > {args}; echo "noise"; '
                                      'echo "stat::number_of_executed_units: 1234"'), secs=5)
        expect(st == 0, f"status {st}:\n{out}")
        expect(out.strip() == "stat::number_of_executed_units: 1234", out)
        got = open(args).read().split("\n")
        for want in ["-max_total_time=5", "-max_len=4096", f"-artifact_prefix={tmp}/corpus.artifacts/",
                     f"{tmp}/corpus", f"{tmp}/seeds"]:
            expect(want in got, f"{want} not passed: {got}")
        os.unlink(args)


@test
def real_fuzzer_crash_fails_the_step_and_keeps_the_reproducer():
    with tempfile.TemporaryDirectory() as tmp:
        st, out = step(tmp, SELFTEST, [b"hello", b"CRASH!!!"])
        expect(st != 0, f"status 0:\n{out}")
        expect("heap-buffer-overflow" in out, out)
        crashes = artifacts(tmp, "crash-")
        expect(len(crashes) == 1, f"crash artifacts: {crashes}")
        expect(f"reproducer: {tmp}/corpus.artifacts/{crashes[0]}" in out, out)
        expect(stray_files(tmp) == [], f"written outside the corpus: {stray_files(tmp)}")


@test
def real_fuzzer_leak_fails_the_step():
    with tempfile.TemporaryDirectory() as tmp:
        st, out = step(tmp, SELFTEST, [b"hello", b"LEAK"])
        expect(st != 0, f"status 0:\n{out}")
        expect("ERROR: LeakSanitizer: detected memory leaks" in out, out)
        expect(len(artifacts(tmp, "leak-")) == 1, f"leak artifacts: {os.listdir(tmp)}")
        expect(stray_files(tmp) == [], f"written outside the corpus: {stray_files(tmp)}")


@test
def real_fuzzer_clean_run_passes():
    with tempfile.TemporaryDirectory() as tmp:
        # without comparison hints the fuzzer cannot guess "LEAK" or "CRASH" in 2000 runs
        st, out = step(tmp, stub(tmp, f'exec {SELFTEST} -runs=2000 -use_cmp=0 -use_memmem=0 '
                                      '-use_value_profile=0 "$@"'), [b"hello", b"world"])
        expect(st == 0, f"status {st}:\n{out}")
        expect("stat::number_of_executed_units: 2000" in out, out)


def main():
    passed = failed = 0
    for t in TESTS:
        if t.__name__.startswith("real_") and not os.path.exists(SELFTEST):
            print(f"FAIL {t.__name__}: {SELFTEST} not built (scripts/build.sh --asan builds it)")
            failed += 1
            continue
        try:
            t()
            passed += 1
            print(f"ok   {t.__name__}", flush=True)
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {t.__name__}: {e}", flush=True)
    print(f"{passed + failed} fuzz-step tests, {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
