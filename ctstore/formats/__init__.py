"""On-disk formats of ctstore's artifacts: each kind's reader and writer together (docs/design.md §formats)."""
