"""tests._ports.free_port: a loopback port the kernel will not hand to anyone meanwhile."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests._ports import free_port, is_free


class FreePortTests(SynchronousTestCase):
    def test_outside_the_ephemeral_range(self) -> None:
        for _ in range(20):
            port = free_port((32768, 60999))
            self.assertTrue(10000 <= port < 32768 or 60999 < port <= 65535, port)
            self.assertTrue(is_free(port), port)

    def test_above_the_range_when_there_is_no_room_below(self) -> None:
        """A host whose range starts low (net.ipv4.ip_local_port_range = 10000 60999) has
        ports above it that the kernel hands out as little (it raised RuntimeError)."""
        port = free_port((10000, 60999))
        self.assertTrue(60999 < port <= 65535, port)

    def test_a_range_of_every_port_leaves_the_kernels_pick(self) -> None:
        """With every port ephemeral (1024 65535, as some hosts tune it), every test that
        starts a server failed with RuntimeError; the kernel's own pick is the best left."""
        port = free_port((1024, 65535))
        self.assertTrue(is_free(port), port)
