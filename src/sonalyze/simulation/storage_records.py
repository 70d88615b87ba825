"""A kept simulation as the storage service's ``simulation_jobs`` / ``simulation_results`` records (pure).

The job record's ``parameters`` are the request without the room, plus the seed used and the
Sabine/Eyring predictions; each pair becomes one result (``source_id``/``receiver_id`` are the
source and microphone indices as strings), its decay curves and frequency response in ``curves``.
"""

from __future__ import annotations

from typing import Any

CURVE_KEYS = ("decay_curves", "frequency_response")


def job_record(job: dict[str, Any], result: dict[str, Any] | None) -> dict[str, Any]:
    request = dict(job["request"])
    room = request.pop("room")
    parameters: dict[str, Any] = request
    if result is not None:
        parameters = {**request, "seed": result["seed"], "theory": result["theory"]}
    error = job.get("error")
    return {
        "id": job["id"],
        "status": job["status"],
        "room": room,
        "parameters": parameters,
        "error": f"{error['code']}: {error['message']}" if error else None,
    }


def result_records(simulation_id: str, result: dict[str, Any]) -> list[dict[str, Any]]:
    records = []
    for pair in result["pairs"]:
        metrics = pair["metrics"] or {"reason": pair["metrics_reason"]}
        records.append(
            {
                "id": f"{simulation_id}-{pair['source']}-{pair['microphone']}",
                "simulation_job_id": simulation_id,
                "source_id": str(pair["source"]),
                "receiver_id": str(pair["microphone"]),
                "metrics": {k: v for k, v in metrics.items() if k not in CURVE_KEYS},
                "curves": {k: metrics[k] for k in CURVE_KEYS if k in metrics} or None,
            }
        )
    return records
