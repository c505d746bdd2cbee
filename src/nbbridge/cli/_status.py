"""`nbbridge status`: placeholder."""

from __future__ import annotations

import argparse


def add_status_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `status`."""
