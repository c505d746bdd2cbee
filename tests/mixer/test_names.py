"""The mix's naming rules, without I/O."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from nbbridge.mixer._names import (
    check_remote_name,
    mark_kernel,
    mark_session,
    merge_kernelspecs,
    segments,
    split_spec,
    strip_token,
)

SPEC = {
    "name": "python3",
    "spec": {"display_name": "Python 3 (ipykernel)", "language": "python"},
    "resources": {"logo-64x64": "/base/kernelspecs/python3/logo-64x64.png"},
}


class NamesTests(SynchronousTestCase):
    def test_merge(self) -> None:
        merged = merge_kernelspecs(
            {"default": "python3", "kernelspecs": {"python3": SPEC}},
            {"gpu": {"default": "python3", "kernelspecs": {"python3": SPEC}}},
        )
        self.assertEqual(merged["default"], "python3")
        remote = merged["kernelspecs"]["gpu:python3"]
        self.assertEqual(remote["name"], "gpu:python3")
        self.assertEqual(remote["spec"]["display_name"], "Python 3 (ipykernel) (gpu)")
        self.assertEqual(
            remote["resources"]["logo-64x64"], "/kernelspecs/gpu:python3/logo-64x64.png"
        )
        local = merged["kernelspecs"]["python3"]
        self.assertEqual(local["spec"]["display_name"], "Python 3 (ipykernel)")
        self.assertEqual(SPEC["name"], "python3", "the input is not changed")

    def test_local_down_keeps_a_default(self) -> None:
        merged = merge_kernelspecs(None, {"gpu": {"kernelspecs": {"python3": SPEC}}})
        self.assertEqual(merged["default"], "gpu:python3")

    def test_split(self) -> None:
        remotes = frozenset({"gpu"})
        self.assertEqual(split_spec("gpu:python3", remotes), ("gpu", "python3"))
        self.assertEqual(split_spec("python3", remotes), (None, "python3"))
        # A local spec whose name holds a colon stays local unless the prefix is a remote.
        self.assertEqual(split_spec("other:python3", remotes), (None, "other:python3"))
        self.assertEqual(split_spec("gpu:", remotes), (None, "gpu:"))

    def test_marks(self) -> None:
        self.assertEqual(mark_kernel("gpu", {"id": "k", "name": "python3"})["name"], "gpu:python3")
        self.assertEqual(mark_kernel(None, {"id": "k", "name": "python3"})["name"], "python3")
        session = mark_session("gpu", {"id": "s", "kernel": {"id": "k", "name": "python3"}})
        self.assertEqual(session["kernel"]["name"], "gpu:python3")

    def test_strip_token(self) -> None:
        self.assertEqual(strip_token(b"/a?token=x&session_id=1"), b"/a?session_id=1")
        self.assertEqual(strip_token(b"/a?token=x"), b"/a")
        self.assertEqual(strip_token(b"/a?b=1"), b"/a?b=1")
        self.assertEqual(strip_token(b"/a"), b"/a")

    def test_segments_and_names(self) -> None:
        self.assertEqual(
            segments(b"/kernelspecs/gpu%3Apython3/x.png?1"), ["kernelspecs", "gpu:python3", "x.png"]
        )
        self.assertEqual(check_remote_name("gpu-1"), "gpu-1")
        for bad in ("", "a:b", "a/b", "-x", "x" * 33):
            self.assertRaises(ValueError, check_remote_name, bad)
