"""``sonalyze serve measurement`` as a real process: killed (SIGKILL) during an analysis, then restarted."""

from __future__ import annotations

import httpx

from tests.support.servers import SERVICE_HEADERS, ServiceProcess


def test_a_killed_service_finds_its_jobs_and_fails_the_cut_analysis(tmp_path, ir_wav):
    env = {"MEASUREMENT_DATA_DIR": str(tmp_path / "data"), "MEASUREMENT_ANALYZE_WAIT_S": "0"}
    service = ServiceProcess("measurement", env=env).start()
    try:
        with httpx.Client(base_url=service.url, timeout=60, headers=SERVICE_HEADERS) as http:
            job_id = http.post("/v1/jobs").json()["job_id"]
            for index in range(4):
                assert http.post(f"/v1/jobs/{job_id}/uploads/ir{index}", content=ir_wav).status_code == 201
            before = http.get(f"/v1/jobs/{job_id}").json()
            assert http.post(f"/v1/jobs/{job_id}/analyze", json={"source": "impulse_response"}).status_code == 202
        service.kill()
        service.start()
        with httpx.Client(base_url=service.url, timeout=60, headers=SERVICE_HEADERS) as http:
            after = http.get(f"/v1/jobs/{job_id}").json()
            assert after["status"] == "failed", service.log_text()
            assert after["error"]["code"] == "interrupted" and "run it again" in after["error"]["message"]
            assert after["uploads"] == before["uploads"] and after["sweep"] == before["sweep"]
            assert http.get(after["audio_url"]).status_code == 200
            again = http.post(f"/v1/jobs/{job_id}/analyze", json={"source": "impulse_response"})
            assert again.status_code == 202
    finally:
        service.stop()
