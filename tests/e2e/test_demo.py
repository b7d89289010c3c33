"""`make demo` as a newcomer sees it (issue 12 point 8): it runs to the end, what it prints is
the demo's own lines and nothing from librdkafka's threads, and its access log names topics
the way the metrics do (Fetch v13+ carries only topic ids)."""
import json
import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent / "demo.py"

# librdkafka's default log line: `%LEVEL|SECONDS.MILLIS|FACILITY|NAME| message`
# (confluentinc/librdkafka src/rdkafka.c, rd_kafka_log_print).
LIBRDKAFKA_LINE = re.compile(r"^%\d\|\d+\.\d+\|")


def test_demo_runs_clean_and_logs_topic_names():
    r = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    noisy = [line for line in out.splitlines()
             if LIBRDKAFKA_LINE.match(line) or "Connect to ipv4" in line or "Failed to resolve" in line]
    assert noisy == [], f"{len(noisy)} client log lines in the demo's output, e.g. {noisy[:3]}"
    assert "byte-identical: True" in out, out
    assert "produce + consume 20 records with the rewrite: ok" in out, out
    # the client logs went to the file the demo names, and it is not empty: the rewrite demo's
    # client without the rewrite is told an unreachable address, so librdkafka complains
    m = re.search(r"client logs \(librdkafka\): (\S+)", out)
    assert m, out
    assert Path(m.group(1)).read_text(errors="replace").strip()
    # every access-log line the demo shows names its topics: no 32-hex-digit topic ids
    lines = [json.loads(line.strip()) for line in out.splitlines() if line.strip().startswith('{"api"')]
    assert any(j["api"] == "fetch" and j["topics"] for j in lines), out
    for j in lines:
        for t in j["topics"]:
            assert not re.fullmatch(r"[0-9a-f]{32}", t), f"topic id in the access log: {j}"
            assert t in ("orders", "clicks"), j
