"""The idle culler (``jupyterhub-idle-culler``), ending with the hub that started it.

JupyterHub starts its managed services in sessions of their own, so that a hub killed
outright (which cannot stop them) leaves them running; ``meridian serve`` then starts a
new hub, which starts a culler of its own. Run as ``python -m meridian_hub.culler
--timeout=N`` (the culler's own options), it asks Linux for SIGTERM when its parent, the
hub, dies; elsewhere it runs as the plain culler.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main():
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            print(f"meridian_hub.culler: prctl(PR_SET_PDEATHSIG): {os.strerror(err)}", file=sys.stderr)
        elif os.getppid() != parent:
            # The hub died before the signal was asked for.
            sys.exit("meridian_hub.culler: the hub that started this culler is gone")
    from jupyterhub_idle_culler import main as culler

    culler()


if __name__ == "__main__":
    main()
