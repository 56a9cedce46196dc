"""`make bench`: every benchmark, figures side by side in one run."""

from . import extract, growth, ingest, library, start, talk


def main():
    start.main()
    print()
    talk.main()
    print()
    extract.main()
    print()
    library.main()
    print()
    ingest.main()
    print()
    growth.main()


if __name__ == "__main__":
    main()
