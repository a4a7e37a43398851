"""A real `chunkcache serve` killed with SIGKILL during ingestion and restarted on the same cache directory:
its job reads `interrupted` on the first request after the restart (not `running` for a minute), resumes
under its id with the chunks precomputed before the kill as hits, and resumes only once. The server takes
its API key from a file, so the key is not on its command line."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
from servers import serve_process

pytestmark = pytest.mark.slow

DOC = " ".join(f"Station {i} of the survey recorded a mean surface temperature of {200 + i} kelvin and a dust "
               f"density of {i * 3} particles per litre." for i in range(16))  # ~32 chunks of 24 tokens


def _poll(client: httpx.Client, job_id: str, until, timeout_s: float = 240) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not until(job := client.get(f"/jobs/{job_id}").json()):
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.02)
    return job


def test_kill_9_mid_ingestion_interrupts_then_resumes_with_hits(tmp_path: Path) -> None:
    key = f"key-{uuid.uuid4().hex}"
    (tmp_path / "key").write_text(key + "\n")
    (tmp_path / "c.toml").write_text("threads = 1\n")
    args = ("--cache-dir", str(tmp_path / "cache"), "--api-key-file", str(tmp_path / "key"))
    first = serve_process(tmp_path / "c.toml", tmp_path / "serve.log", *args).start().wait_ready()
    try:
        cmdline = Path(f"/proc/{first.proc.pid}/cmdline").read_bytes()  # type: ignore[union-attr]
        assert key.encode() not in cmdline and b"--api-key-file" in cmdline
        assert httpx.get(f"{first.url}/jobs/x", timeout=10).status_code == 401
        with httpx.Client(base_url=first.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            r = c.post("/documents", json={"documents": [{"id": "survey", "text": DOC}], "chunk_tokens": 24,
                                           "overlap_tokens": 0})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            seen = _poll(c, job_id, lambda j: j["stage"] == "precompute" and j["done"] >= 3)
        first.stop(kill=True)
    finally:
        first.stop(kill=True)
    assert seen["done"] < seen["total"], seen  # killed in the middle

    second = serve_process(tmp_path / "c.toml", tmp_path / "serve.log", *args).start().wait_ready()
    try:
        with httpx.Client(base_url=second.url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
            job = c.get(f"/jobs/{job_id}").json()
            assert job["status"] == "interrupted" and job["finished"] is not None, job
            assert job["error"].startswith("interrupted: the server that ran this job"), job
            assert f"POST /jobs/{job_id}/resume" in job["error"]

            r = c.post(f"/jobs/{job_id}/resume")
            assert r.status_code == 202 and r.json()["id"] == job_id, r.text
            assert c.post(f"/jobs/{job_id}/resume").status_code == 409  # queued or running now
            done = _poll(c, job_id, lambda j: j["status"] not in ("queued", "running"))
            assert done["status"] == "done" and done["error"] is None, done
            res = done["result"]
            assert res["chunks"] == seen["total"]
            assert res["new_chunks"] <= seen["total"] - seen["done"], (res, seen)  # the rest were hits
            assert c.post(f"/jobs/{job_id}/resume").status_code == 409
            assert c.post("/jobs/no-such-job/resume").status_code == 404
    finally:
        second.stop()
