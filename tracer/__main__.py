"""``python -m tracer`` is the ``msgtrace`` command."""
from tracer.cli import main

main()
