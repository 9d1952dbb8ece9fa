"""One HTTP request in a process of its own, for :class:`SegXSlicerLib.client.SegXClient`.

Slicer's main thread holds Python's GIL except while it runs Python (PythonQt takes it at
start-up and the Qt event loop does not give it back while idle), so a worker *thread*
receives a reply chunk by chunk, each chunk waiting for the main thread to run Python
(``benchmarks/slicer_gil.py``: a 26 MiB download 17x slower in a Slicer-style loop than
free-running). A child process has its own interpreter and GIL: the bytes move at the
network's speed whatever Slicer's main thread does, and the worker thread only waits (one
blocking call) for it to finish.

    python -I transfer.py SPEC.json

``SPEC.json``: ``{"method", "url", "headers", "body", "out", "connect_timeout",
"timeout"}`` (``body``: a file holding the prepared request body, or null; ``out``: the
file the response body is written to). Prints one JSON line: ``{"status", "headers"}``
or ``{"error": "connect_timeout" | "connection" | "timeout", "detail"}``.
Standard library and ``requests`` only (what Slicer's Python has); Python 3.9.
"""

import json
import sys

import requests

CHUNK = 1 << 20


def main(spec_file: str) -> int:
    with open(spec_file) as stream:
        spec = json.load(stream)
    body = open(spec["body"], "rb") if spec.get("body") else None
    try:
        response = requests.request(spec["method"], spec["url"], headers=spec["headers"], data=body, stream=True,
                                    timeout=(spec["connect_timeout"], spec["timeout"]))  # fmt: skip
        with response, open(spec["out"], "wb") as out:
            for chunk in response.iter_content(CHUNK):
                out.write(chunk)
        print(json.dumps({"status": response.status_code, "headers": dict(response.headers)}))
    except requests.exceptions.ConnectTimeout as error:
        print(json.dumps({"error": "connect_timeout", "detail": str(error)}))
    except requests.exceptions.ConnectionError as error:
        print(json.dumps({"error": "connection", "detail": str(error)}))
    except requests.exceptions.Timeout as error:
        print(json.dumps({"error": "timeout", "detail": str(error)}))
    finally:
        if body is not None:
            body.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
