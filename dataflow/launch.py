"""Entry point of the Flex Template launcher: ``python -m pipeline`` with the job's parameters."""

from pipeline import main

if __name__ == "__main__":
    main()
