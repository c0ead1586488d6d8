-- svccomm inbox (INBOX = true): the consumer records (queue, message_id) of every message it
-- handled, in the handler's transaction, and skips a message already recorded. Rows older
-- than INBOX_RETENTION are deleted by the consumer. Placeholders as in 001_outbox.sql with
-- {{inbox}}, {{inbox_name}}, {{inbox_prefix}}.
CREATE TABLE IF NOT EXISTS {{inbox}} (
    queue text NOT NULL,
    message_id text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, message_id)
);

CREATE INDEX IF NOT EXISTS "{{inbox_name}}_received_at_idx" ON {{inbox}} (received_at);
