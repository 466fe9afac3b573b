"""The `minitrain` console script's first lines: Ctrl-C or SIGTERM while minitrain and torch are still importing
exits at once with 130 or 143 and one line, instead of a 30-line traceback. Then `minitrain.cli.main` runs."""
import signal
import sys


def _quit_while_importing(signum, frame):
    sys.stderr.write(f"\nminitrain: interrupted while starting ({signal.Signals(signum).name}); nothing was done.\n")
    sys.exit(128 + signum)


def run() -> None:
    "The console script: `minitrain ...`."
    old = {s: signal.signal(s, _quit_while_importing) for s in (signal.SIGINT, signal.SIGTERM)}
    from minitrain.cli import main   # torch, pandas, matplotlib: the slow part
    for s, handler in old.items(): signal.signal(s, handler)
    sys.exit(main())
