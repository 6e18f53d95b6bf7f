"""A Python capsule: the `hello` sample's `greet`, built with componentize-py.

The density bench builds it (`componentize-py -d wit -w capsule componentize -p . app -o
hello_py.wasm`) to measure what a large component costs the daemon.
"""

import json

from wit_world import exports


class Guest(exports.Guest):
    def init(self, config) -> None:
        pass

    def handle_event(self, topic: str, payload: bytes) -> None:
        pass

    def call_tool(self, name: str, input_json: str) -> str:
        who = json.loads(input_json).get("name", "world")
        return json.dumps({"greeting": f"Hello, {who}!"})

    def shutdown(self) -> None:
        pass
