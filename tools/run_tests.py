"""The test command (`make test`, called by .ci/run): pytest over tests/, failing when no test ran.

pytest exits 5 when it collects nothing; that is a failure here, never a pass.
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "1"), MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "pytest", "-q", "--durations=15", *(argv or ["tests"])]
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT, env=env)
    if rc == 5:
        print("run_tests: no tests were collected: failing", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
