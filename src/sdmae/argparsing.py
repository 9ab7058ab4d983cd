"""The argument parser class every `sdmae` command and subcommand group uses."""
from __future__ import annotations

import argparse
import sys


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2 with the message (argparse's default too)
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")
