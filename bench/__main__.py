"""`make bench`: every benchmark, figures side by side in one run."""

from . import mint


def main():
    mint.main()


if __name__ == "__main__":
    main()
