"""`emo-r3 bench sync` without a cluster: its table (both transports beside the floor, a transport
not run marked so), its sizes, and the one-line refusal of an unknown size."""

from __future__ import annotations

import pytest

from benchmarks.sync import SIZES, Cell, run, table


def _cell(engines: int, transport: str, push_s: float) -> Cell:
    return Cell("60m", 65_300_000, engines, transport, push_s, 62.0, 124.0, 0.0)


def test_the_table_puts_each_transport_beside_the_floor_of_its_engine_count():
    results = [
        {
            "cells": [
                _cell(1, "collective", 0.4),
                _cell(1, "object_store", 1.0),
                _cell(2, "collective", 0.9),
            ],
            "floors": {1: 0.1, 2: 0.3},
        }
    ]
    rows = table(results, 64).splitlines()[3:]
    assert (
        rows[0] == "| 60m | 65.3 M | 1 | 0.100 | 0.400 | 4.00 | 1.000 | 10.00 | 62 / 124 / 0 | 62 / 124 / 0 |"
    )
    assert rows[1] == "| 60m | 65.3 M | 2 | 0.300 | 0.900 | 3.00 | – | – | 62 / 124 / 0 | not run |"


def test_sizes_grow_and_an_unknown_size_is_refused_before_any_cluster():
    assert list(SIZES) == ["5m", "60m", "150m", "360m", "500m"]
    with pytest.raises(ValueError, match="size '1b'"):
        run(["1b"])
