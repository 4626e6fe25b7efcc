-- The app each deployment's worker runs (loyalty/store/apps.py).
--
-- `loyalty worker` and `loyalty dev` record, at start, the app they loaded: its
-- `module:attr` (NULL for the default app, one program named `default`) and the folder
-- its module imports from. The commands that need the app (`flows`, `maintenance`,
-- `housekeeping run`, `adjust`) read it when neither --app nor LOYALTY_APP is given, so a
-- second shell on the same home or database sees the programs and flows the worker has.
-- One row per task queue, the deployment's name: the latest worker to start wins.

CREATE TABLE worker_apps (
    task_queue  text PRIMARY KEY,
    app         text CHECK (app ~ '^[^:]+:[^:]+$'),
    folder      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);
