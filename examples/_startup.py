"""What the command-line tools in this folder set before their slow imports (``import
_startup`` first thing, when run as a script):

* PyG calls the deprecated ``torch.jit.script`` when it is imported; the FutureWarning it
  prints on every start is not the user's to act on, so the tools (not the library) hide
  that one warning;
* Ctrl-C while the imports load is one line, ``<tool>: interrupted``, not a traceback (the
  exit status stays SIGINT's, 130 in a shell); a second Ctrl-C meanwhile is ignored.
"""

import os
import signal
import sys
import warnings

warnings.filterwarnings("ignore", r"`torch\.jit\.script` is deprecated", FutureWarning)


def _interrupted(kind, error, tb) -> None:
    if not issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, tb)
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Python then exits through SIGINT itself
    print(f"{os.path.basename(sys.argv[0])}: interrupted", file=sys.stderr, flush=True)


sys.excepthook = _interrupted
