import unittest

import service


class ServiceTest(unittest.TestCase):
    def test_service_status(self):
        # step: ask the service [TP-101]
        status = service.fetch_status()
        # step: check the answer [TP-102]
        self.assertEqual(status, "ok")
