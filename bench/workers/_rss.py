"""Run a command and write its peak RSS (KiB) to a file: ``python -S _rss.py OUT CMD...``.

Why a shim: Linux keeps a process's ``ru_maxrss`` across ``exec`` as the high-water mark
of the memory it had before, so a tool started straight from the bench would report at
least the bench's own RSS. Started from this small process instead (run with ``-S``, a
few MB), it starts from that. The exit status is passed on.
"""

import os
import signal
import sys


def main() -> None:
    out, argv = sys.argv[1], sys.argv[2:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            os.write(2, f"cannot run {argv[0]}: {exc}\n".encode())
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    with open(out, "w") as fh:
        fh.write(f"{usage.ru_maxrss}\n")
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    sys.exit(code)


if __name__ == "__main__":
    main()
