-- svccomm outbox functions: publish events, scheduled events, cancel them and send commands
-- from any SQL client (psql, pgmoon, psycopg, a trigger), in the caller's transaction. Placeholders
-- as in 001_outbox.sql; the functions are named after the table ("<table>_publish_event", ...)
-- and live in its schema, so several outboxes coexist. {{envelope}} is the envelope expression
-- of src/outbox/envelope.h (SVC_ENVELOPE_SQL and SVC_ENVELOPE_MEMBERS_SQL) over the variables
-- new_id, send_at, event_type, aggregate, payload and fmt, so these rows and the ones svccomm's
-- Lua API writes come from one definition. fmt is the WIRE_FORMAT of what they write: the
-- setting svccomm.wire_format of the session, role or database ('svccomm' when unset, or
-- 'django': `ALTER DATABASE ... SET svccomm.wire_format = 'django'`), as the writers' own
-- WIRE_FORMAT setting does for the Lua API.
--
-- Bad input raises SQLSTATE 22023 (invalid_parameter_value) and writes nothing. PostgreSQL
-- text cannot hold a zero byte, so a name with one never reaches these functions.

-- 22023 unless v is a non-empty name of at most 255 bytes (an exchange or routing key).
CREATE OR REPLACE FUNCTION {{outbox_prefix}}"{{outbox_name}}_check_name"(what text, v text)
    RETURNS void LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    IF v IS NULL OR v = '' THEN
        RAISE EXCEPTION '%: must be a non-empty string', what USING ERRCODE = '22023';
    END IF;
    IF octet_length(v) > 255 THEN
        RAISE EXCEPTION '%: is longer than 255 bytes', what USING ERRCODE = '22023';
    END IF;
END
$fn$;

-- Tags as the Lua API stores them: a JSON object of string values (numbers and booleans
-- become their text), NULL for NULL or {}; 22023 for anything else.
CREATE OR REPLACE FUNCTION {{outbox_prefix}}"{{outbox_name}}_tags"(tags jsonb)
    RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $fn$
DECLARE
    out jsonb;
BEGIN
    IF tags IS NULL THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(tags) <> 'object' THEN
        RAISE EXCEPTION 'tags: must be a JSON object, got %', jsonb_typeof(tags)
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_each(tags) e
                WHERE jsonb_typeof(e.value) NOT IN ('string', 'number', 'boolean')) THEN
        RAISE EXCEPTION 'tags: values must be strings, numbers or booleans'
            USING ERRCODE = '22023';
    END IF;
    SELECT jsonb_object_agg(e.key, e.value #>> '{}') INTO out FROM jsonb_each(tags) e;
    RETURN out;
END
$fn$;

-- The wire format these functions write: svccomm.wire_format ('svccomm' when unset); 22023
-- for any other value.
CREATE OR REPLACE FUNCTION {{outbox_prefix}}"{{outbox_name}}_wire_format"()
    RETURNS text LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    fmt text := coalesce(nullif(current_setting('svccomm.wire_format', true), ''), 'svccomm');
BEGIN
    IF fmt NOT IN ('svccomm', 'django') THEN
        RAISE EXCEPTION 'svccomm.wire_format: must be ''svccomm'' or ''django'', got %', fmt
            USING ERRCODE = '22023';
    END IF;
    RETURN fmt;
END
$fn$;

-- Writes an event (exchange = aggregate, routing key = event_type, body = the envelope) and
-- returns its id, the eventId. payload: any JSON, NULL = {}. send_after: a due time (not in
-- the past) makes it a scheduled event, with eventTime = send_after; tags let
-- "<table>_cancel_events" find it. The id is taken from the table's sequence by this call,
-- like every writer's, so the relay keeps the order of the callers' locks.
CREATE OR REPLACE FUNCTION {{outbox_prefix}}"{{outbox_name}}_publish_event"(
    aggregate text, event_type text, payload jsonb,
    send_after timestamptz DEFAULT NULL, tags jsonb DEFAULT NULL,
    correlation_id text DEFAULT NULL)
    RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    new_id bigint;
    send_at timestamptz := send_after;
    tag_set jsonb;
    corr text := correlation_id;
    fmt text := {{outbox_prefix}}"{{outbox_name}}_wire_format"();
BEGIN
    PERFORM {{outbox_prefix}}"{{outbox_name}}_check_name"('aggregate', aggregate);
    PERFORM {{outbox_prefix}}"{{outbox_name}}_check_name"('event_type', event_type);
    IF send_at IS NOT NULL AND send_at < now() THEN
        RAISE EXCEPTION 'send_after % is in the past', send_at USING ERRCODE = '22023';
    END IF;
    IF octet_length(corr) > 255 THEN
        RAISE EXCEPTION 'correlation_id: is longer than 255 bytes' USING ERRCODE = '22023';
    END IF;
    tag_set := {{outbox_prefix}}"{{outbox_name}}_tags"(tags);
    IF tag_set = '{}' THEN
        tag_set := NULL;
    END IF;
    new_id := nextval(pg_get_serial_sequence('{{outbox}}', 'id'));
    INSERT INTO {{outbox}} (id, send_after, exchange, routing_key, body, correlation_id, tags)
    VALUES (new_id, coalesce(send_at, now()), aggregate, event_type, {{envelope}}, corr, tag_set);
    RETURN new_id;
END
$fn$;

-- Deletes the events of aggregate + event_type not yet published whose tags contain all of
-- tags (a non-empty JSON object, values compared as strings); returns how many.
CREATE OR REPLACE FUNCTION {{outbox_prefix}}"{{outbox_name}}_cancel_events"(
    aggregate text, event_type text, tags jsonb)
    RETURNS integer LANGUAGE plpgsql AS $fn$
DECLARE
    tag_set jsonb;
    n integer;
BEGIN
    PERFORM {{outbox_prefix}}"{{outbox_name}}_check_name"('aggregate', aggregate);
    PERFORM {{outbox_prefix}}"{{outbox_name}}_check_name"('event_type', event_type);
    tag_set := {{outbox_prefix}}"{{outbox_name}}_tags"(tags);
    IF tag_set IS NULL OR tag_set = '{}' THEN
        RAISE EXCEPTION 'tags: must be a non-empty JSON object (it would match every scheduled event)'
            USING ERRCODE = '22023';
    END IF;
    DELETE FROM {{outbox}} o
     WHERE o.exchange = aggregate AND o.routing_key = event_type AND o.tags @> tag_set;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$fn$;

-- Writes a command for another service (exchange = service, routing key = command, body =
-- arguments, a JSON object, NULL = {}, plus meta.expired_time = expires_at in UTC with
-- microseconds, or null; with svccomm.wire_format 'django' meta.expiredTime in milliseconds,
-- or nothing) and returns its row id.
CREATE OR REPLACE FUNCTION {{outbox_prefix}}"{{outbox_name}}_send_command"(
    service text, command text, arguments jsonb, expires_at timestamptz DEFAULT NULL)
    RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    body jsonb := coalesce(arguments, '{}');
    meta jsonb;
    new_id bigint;
BEGIN
    PERFORM {{outbox_prefix}}"{{outbox_name}}_check_name"('service', service);
    PERFORM {{outbox_prefix}}"{{outbox_name}}_check_name"('command', command);
    IF jsonb_typeof(body) <> 'object' THEN
        RAISE EXCEPTION 'arguments: must be a JSON object, got %', jsonb_typeof(body)
            USING ERRCODE = '22023';
    END IF;
    meta := coalesce(body -> 'meta', '{}');
    IF jsonb_typeof(meta) <> 'object' THEN
        RAISE EXCEPTION 'arguments.meta: must be a JSON object, got %', jsonb_typeof(meta)
            USING ERRCODE = '22023';
    END IF;
    IF expires_at IS NOT NULL AND expires_at <= now() THEN
        RAISE EXCEPTION 'expires_at % is in the past', expires_at USING ERRCODE = '22023';
    END IF;
    IF {{outbox_prefix}}"{{outbox_name}}_wire_format"() = 'django' THEN
        -- the Python library's: meta.expiredTime in milliseconds, or no member
        IF expires_at IS NOT NULL THEN
            meta := meta || jsonb_build_object('expiredTime',
                to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'));
        END IF;
    ELSE
        meta := meta || jsonb_build_object('expired_time',
            to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'));
    END IF;
    body := body || jsonb_build_object('meta', meta);
    INSERT INTO {{outbox}} (exchange, routing_key, body)
    VALUES (service, command, body::text) RETURNING id INTO new_id;
    RETURN new_id;
END
$fn$;
