"""The store's key layout, in one place: every top-level prefix, who writes it, who reads it.

``docs/store.md`` is the same table in prose (a test checks the two agree). Modules build their
keys from these prefixes; nothing else invents a top-level name.
"""

from __future__ import annotations

#: prefix -> (writer, readers, what)
LAYOUT: dict[str, tuple[str, str, str]] = {
    "logs/": ("ingest (store.logs.put_log)", "mine, drift, label push, dataset grow",
              "one folder per log: its streams under a content-hash folder and manifest.json, written last"),
    "index/arrivals/": ("ingest (store.logs.put_log)", "store.logs.list_logs (cycle plan, mining, drift)",
                        "arrival-time index of the logs: lists 'what arrived since T' without a scan"),
    "quarantine/": ("ingest (ingest.validation.quarantine)", "people (report.md), tools (report.json)",
                    "per rejected log: why, which rows, which expectation"),
    "mining/": ("mine (mine.run)", "label-push, the weekly cycle, people",
                "per run key: shards, ranked.parquet, selected.csv, summary.json; latest.json names the last run"),
    "drift/": ("drift (flows.drift, cycle)", "standalone mining runs (latest_slices.json), people (reports/)",
               "Evidently reports + summaries per run; the slice boost for the next standalone mining run"),
    "labels/": ("label sync (label.sync)", "dataset grow",
                "per campaign: sync-NNNNNN.parquet label shards and the exactly-once watermark"),
    "labeling/": ("label push / sync (label.index, label.images)", "label-sync (open campaigns), Label Studio",
                  "campaigns/<name>.json: the campaign index (open -> complete); images/ for presigned task images"),
    "cycles/": ("weekly cycle (cycle.save_record)", "the next run of the same week (idempotency), people",
                "<week>/<key>.json: the record of a finished cycle"),
    "registry/": ("registry (registry.api)", "retrain, demo, cars (download), people",
                  "<model>/: versions, content-addressed blobs, aliases, history, decisions, index pages"),
}

LOGS = "logs/"
ARRIVALS = "index/arrivals/"
QUARANTINE = "quarantine/"
MINING = "mining/"
MINING_LATEST = "mining/latest.json"
DRIFT = "drift/"
DRIFT_SLICE_BOOST = "drift/latest_slices.json"
LABELS = "labels/"
CAMPAIGNS = "labeling/campaigns/"
LABELING_IMAGES = "labeling/images"
CYCLES = "cycles/"
REGISTRY = "registry/"
