-- Reasons as codes: every audit row carries the code of its reason (empty in older rows; the
-- column is added, no row is edited, so the append-only triggers hold).
ALTER TABLE events ADD COLUMN reason_code TEXT NOT NULL DEFAULT '';
-- Serving reservations get their own table; they were jobs of kind 'serving' (job id
-- 'serve-<model>'). Those holding GPUs move over; the rest were history, kept by the audit trail.
CREATE TABLE serving(model TEXT PRIMARY KEY, desk TEXT NOT NULL, replicas INTEGER NOT NULL,
  gpus_per_replica REAL NOT NULL, island TEXT NOT NULL, reserved_at REAL NOT NULL, reason TEXT,
  reason_code TEXT);
INSERT INTO serving(model, desk, replicas, gpus_per_replica, island, reserved_at, reason, reason_code)
  SELECT name, desk, COALESCE(CAST(json_extract(info, '$.replicas') AS INTEGER), 1),
         COALESCE(json_extract(info, '$.gpus_per_replica'), gpus), json_extract(placement, '$[0][0]'),
         COALESCE(started_at, submitted_at), reason, 'serving_reserved'
  FROM jobs WHERE kind = 'serving' AND state = 'RUNNING' AND json_extract(placement, '$[0][0]') IS NOT NULL;
DELETE FROM jobs WHERE kind = 'serving';
