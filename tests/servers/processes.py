"""What the test servers share about their processes."""

from __future__ import annotations

import subprocess


def stop(process: subprocess.Popen) -> None:
    """Terminate a server process, killing it if it has not ended within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
