import os
import sys

if os.environ.get("MMABLATE_FORKSERVER"):  # a local snakemake run's fork server (mmablate.forkserver)
    from .forkserver import run_client

    _rc = run_client(sys.argv[1:])
    if _rc is not None:
        sys.exit(_rc)

from .cli import main  # noqa: E402

sys.exit(main())
