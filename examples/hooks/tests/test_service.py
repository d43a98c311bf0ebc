import pytest

import service


@pytest.mark.plan("TP-7")
def test_service_status():
    # step: ask the service [TP-101]
    status = service.fetch_status()
    # step: check the answer [TP-102]
    assert status == "ok"


def test_arithmetic():
    # step: add
    total = 2 + 2
    # step: check [TP-103]
    assert total == 5
