"""Where each request's TTFT went, from the stamps benchmarks/ttft_trace/sitecustomize.py wrote
(and, given serving.py's --save-detailed record, the client's TTFT beside them):

    python3 benchmarks/ttft_trace/report.py TRACE.jsonl [SERVING_RECORD.json]

Prints mean / median / p90 of each leg over the requests that have every stamp, and writes nothing.
"""

import json
import statistics
import sys

LEGS = [
    ("handler entry -> add_request", "A", "B"),
    ("add_request -> engine arrival", "B", "C"),
    ("queue: arrival -> first scheduled", "C", "S"),
    ("the prompt step: scheduled -> first token", "S", "D"),
    ("first token -> router hand-off", "D", "R"),
    ("router hand-off -> event loop has it", "R", "E"),
    ("event loop -> start() returns", "E", "G"),
    ("start() -> cancel_on_disconnect returns", "G", "I"),
    ("-> StreamingResponse called", "I", "J"),
    ("StreamingResponse -> stream body begins", "J", "H"),
    ("stream body -> first chunk", "H", "F"),
    ("handler entry -> first chunk", "A", "F"),
]


def main(argv):
    if len(argv) < 2:
        raise SystemExit(__doc__)
    requests = {}
    for line in open(argv[1]):
        d = json.loads(line)
        requests.setdefault(d.pop("rid"), {}).update(d)
    keys = sorted({k for _, a, b in LEGS for k in (a, b)})
    rows = [r for r in requests.values() if all(r.get(k) for k in keys)]
    print(f"{len(rows)} of {len(requests)} requests have every stamp")
    if not rows:
        return 1
    for name, a, b in LEGS:
        v = sorted((r[b] - r[a]) * 1e3 for r in rows)
        print(f"{name:42s} mean {statistics.mean(v):7.3f}  median {statistics.median(v):7.3f}  "
              f"p90 {v[int(0.9 * (len(v) - 1))]:7.3f} ms")
    if len(argv) > 2:
        ttft = json.load(open(argv[2]))["requests"]["ttfts"]
        print(f"{'client TTFT':42s} mean {statistics.mean(ttft) * 1e3:7.3f}  median {statistics.median(ttft) * 1e3:7.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
