"""``python -m tracer`` is the ``msgtrace`` command."""
from .cli import main

main()
