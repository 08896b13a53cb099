CREATE TABLE posts (
    id         uuid PRIMARY KEY,
    author_id  uuid NOT NULL,
    title      text NOT NULL,
    body       text NOT NULL,
    -- clock_timestamp, not now(): two posts in one transaction still get distinct times.
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Keyset pagination, newest first.
CREATE INDEX posts_newest_first ON posts (created_at DESC, id DESC);
