"""Ctrl-C stops a long call, as it stops any Python code."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    import nexttoken
    model = nexttoken.Model.load(threads=2)
    print("ready", flush=True)
    try:
        {call}
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(0)
    print("finished", flush=True)
""")


@pytest.mark.parametrize("call", [
    "model.generate('ROMEO:', max_new_tokens=1_000_000, ignore_eos=True)",
    "for _ in model.stream('ROMEO:', max_new_tokens=1_000_000, ignore_eos=True): pass",
    "model.score(['To be, or not to be, that is the question'] * 1_000_000)",
], ids=["generate", "stream", "score"])
def test_ctrl_c_interrupts_a_long_call(call):
    child = subprocess.Popen([sys.executable, "-c", SCRIPT.format(call=call)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        child.send_signal(signal.SIGINT)
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
    assert out.strip() == "interrupted"
    assert child.returncode == 0
