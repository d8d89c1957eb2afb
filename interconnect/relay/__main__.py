"""``python -m interconnect.relay --config FILE``: run one relay (the same as ``paroma relay run``)."""

from __future__ import annotations

from paroma.cli_relay import relay_app

if __name__ == "__main__":
    relay_app(["run", *__import__("sys").argv[1:]], prog_name="python -m interconnect.relay")
