-- Public profiles, created from user.registered events. The email is never kept here.
CREATE TABLE profiles (
    id           uuid PRIMARY KEY,
    display_name text NOT NULL,
    banned       boolean NOT NULL DEFAULT false,
    banned_at    timestamptz,
    banned_by    uuid,
    ban_reason   text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
