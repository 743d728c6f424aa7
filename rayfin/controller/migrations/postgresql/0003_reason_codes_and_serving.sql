-- The same change as migrations/sqlite/0003_reason_codes_and_serving.sql, in PostgreSQL's types.
ALTER TABLE events ADD COLUMN reason_code TEXT NOT NULL DEFAULT '';
CREATE TABLE serving(model TEXT COLLATE "C" PRIMARY KEY, desk TEXT COLLATE "C" NOT NULL,
  replicas INTEGER NOT NULL, gpus_per_replica DOUBLE PRECISION NOT NULL, island TEXT NOT NULL,
  reserved_at DOUBLE PRECISION NOT NULL, reason TEXT, reason_code TEXT);
INSERT INTO serving(model, desk, replicas, gpus_per_replica, island, reserved_at, reason, reason_code)
  SELECT name, desk, COALESCE((info->>'replicas')::integer, 1),
         COALESCE((info->>'gpus_per_replica')::double precision, gpus), placement->0->>0,
         COALESCE(started_at, submitted_at), reason, 'serving_reserved'
  FROM jobs WHERE kind = 'serving' AND state = 'RUNNING' AND placement->0->>0 IS NOT NULL;
DELETE FROM jobs WHERE kind = 'serving';
