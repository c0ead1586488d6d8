-- svccomm outbox table. Applied by `svccomm migrate` (src/migrate.c) with the placeholders
-- replaced: {{outbox}} = the quoted table name ("t" or "s"."t"), {{outbox_name}} = the bare
-- table name (used inside quoted index/function names and as the NOTIFY channel),
-- {{outbox_prefix}} = the quoted schema and a dot, or nothing.
--
-- Writing to the outbox from any SQL client (in the same transaction as the business change):
--
--   INSERT INTO svccomm_outbox (id, exchange, routing_key, body)
--   SELECT n.id, 'user', 'update.base',
--          '{"eventId":"' || n.id || '","eventTime":"' ||
--          to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') ||
--          '","eventType":"update.base","aggregate":"user","payload":' || $1 || '}'
--   FROM (SELECT nextval(pg_get_serial_sequence('svccomm_outbox', 'id')) AS id) n;
--
-- Columns:
--   id            the event id; the relay publishes with AMQP message_id = coalesce(message_id,
--                 id::text); svccomm envelopes carry it as "eventId" (a string)
--   created_at    when the row was written
--   send_after    due time: the relay publishes the row once send_after <= now() and its
--                 transaction committed (scheduled events set it in the future)
--   exchange      the exchange to publish to (the aggregate for events, the service for commands)
--   routing_key   the routing key (event type, command name, ...)
--   body          the exact bytes published (UTF-8 JSON, content type application/json)
--   message_id    AMQP message_id when not the id
--   correlation_id AMQP correlation_id
--   headers       extra AMQP headers, a JSON object of string values (e.g. traceparent)
--   tags          scheduled events only: a JSON object of string values, matched by
--                 cancel_future_aggregate_event with tags @> '{"k":"v"}'
--   attempts, last_error, parked_at   bookkeeping of the relay: a row that cannot be sent is
--                 parked (parked_at set) with the reason and no longer blocks the others
-- Rows are deleted by the relay once the broker confirmed them.
CREATE TABLE IF NOT EXISTS {{outbox}} (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    send_after timestamptz NOT NULL DEFAULT now(),
    exchange text NOT NULL,
    routing_key text NOT NULL,
    body text NOT NULL,
    message_id text,
    correlation_id text,
    headers jsonb,
    tags jsonb,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    parked_at timestamptz
);

COMMENT ON TABLE {{outbox}} IS
    'svccomm transactional outbox: rows are published to RabbitMQ by svccomm runpublisher after commit and deleted once confirmed. See sql/001_outbox.sql for the column contract.';

-- The relay claims due rows in id order.
CREATE INDEX IF NOT EXISTS "{{outbox_name}}_due_idx"
    ON {{outbox}} (send_after, id) WHERE parked_at IS NULL;

-- cancel_future_aggregate_event: tags @> subset.
CREATE INDEX IF NOT EXISTS "{{outbox_name}}_tags_idx"
    ON {{outbox}} USING gin (tags jsonb_path_ops) WHERE tags IS NOT NULL;

-- One wake-up hint per inserting statement; PostgreSQL folds identical notifications of one
-- transaction into one. The channel is the bare table name, case preserved: LISTEN "name".
CREATE OR REPLACE FUNCTION {{outbox_prefix}}"{{outbox_name}}_notify"() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('{{outbox_name}}', '');
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS "{{outbox_name}}_notify" ON {{outbox}};
CREATE TRIGGER "{{outbox_name}}_notify"
    AFTER INSERT ON {{outbox}}
    FOR EACH STATEMENT EXECUTE FUNCTION {{outbox_prefix}}"{{outbox_name}}_notify"();
