-- Gang jobs: every rank's return value, and each rank's output (bounded per job and rank by the
-- controller, which drops the oldest chunks).
CREATE TABLE results(job_id TEXT NOT NULL, rank INTEGER NOT NULL, value BLOB, PRIMARY KEY(job_id, rank));
CREATE TABLE logs(seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, rank INTEGER NOT NULL,
  ts REAL NOT NULL, text TEXT NOT NULL);
CREATE INDEX logs_job_rank ON logs(job_id, rank, seq);
