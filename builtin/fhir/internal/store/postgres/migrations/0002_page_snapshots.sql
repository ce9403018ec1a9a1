-- Paging snapshots of the search server, shared by every instance so that
-- a page link works on whichever instance it reaches.
CREATE TABLE page_snapshots (
    token   text PRIMARY KEY,
    data    bytea NOT NULL,
    expires timestamptz NOT NULL
);
CREATE INDEX page_snapshots_expires ON page_snapshots (expires);
