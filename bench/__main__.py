"""`make bench`: every benchmark, figures side by side in one run."""

from . import extract, library, mint


def main():
    mint.main()
    print()
    extract.main()
    print()
    library.main()


if __name__ == "__main__":
    main()
