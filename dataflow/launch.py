"""Entry point of the Flex Template launcher: ``python -m pipeline`` with the job's parameters.

The launcher submits the job and leaves (``--wait_until_finish=false``) unless the template's
``wait_until_finish`` parameter asks it to wait: a scheduled night should not keep a launcher
VM running for its whole length. The job's claim on its date then lasts ``night_claim_hours``
unless its publish releases it first."""

import sys

from pipeline import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(arg.split("=")[0] == "--wait_until_finish" for arg in argv):
        argv.append("--wait_until_finish=false")
    main(argv)
