"""The copies of the seeds' clients are the seeds' text, byte for byte."""

from __future__ import annotations

import pytest

from tests.examples.seeds import CLIENTS, client_code, seed_text
from tests.support.infra import skip_unless_required


@pytest.mark.parametrize("seed", sorted(CLIENTS))
def test_the_copied_client_is_the_seeds_own(seed: str) -> None:
    printed = seed_text(seed)
    if printed is None:
        skip_unless_required("the seeds (../shared/seeds) are not beside this repository")
    assert client_code(seed) == printed
