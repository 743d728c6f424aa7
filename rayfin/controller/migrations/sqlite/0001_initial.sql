-- The ledger as it stood before versioned migrations: IF NOT EXISTS, so a ledger file made
-- by an older rayfin (user_version 0) is adopted as version 1 unchanged.
CREATE TABLE IF NOT EXISTS jobs(
  job_id TEXT PRIMARY KEY, desk TEXT NOT NULL, name TEXT, kind TEXT, gpus REAL, priority INTEGER,
  comm TEXT, state TEXT NOT NULL, submitted_at REAL, max_retries INTEGER, attempts INTEGER,
  reason TEXT, started_at REAL, finished_at REAL, placement TEXT, preempt_deadline REAL,
  payload BLOB, result BLOB, error TEXT, info TEXT);
CREATE INDEX IF NOT EXISTS jobs_desk_state ON jobs(desk, state);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS events(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, job_id TEXT, desk TEXT, kind TEXT NOT NULL,
  state TEXT, reason TEXT, data TEXT);
CREATE INDEX IF NOT EXISTS events_desk_ts ON events(desk, ts);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id);
-- The audit trail is append-only, enforced by the database for every client, not by rayfin.
CREATE TRIGGER IF NOT EXISTS events_append_only_u BEFORE UPDATE ON events
  BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_append_only_d BEFORE DELETE ON events
  BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
CREATE TABLE IF NOT EXISTS kv(key TEXT PRIMARY KEY, value BLOB);
