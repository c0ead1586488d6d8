-- The insert trigger's NOTIFY can be switched off where the writers are: the PostgreSQL
-- setting svccomm.outbox_notify of the session, role or database (`ALTER DATABASE app SET
-- svccomm.outbox_notify = off`), as svccomm.wire_format of 004_outbox_functions.sql.
-- PostgreSQL serializes the commits of all transactions that sent a notification, in every
-- database of the server (PreCommit_Notify takes one lock and holds it through the commit's
-- WAL flush), so with the NOTIFY, event-writing transactions cannot share a commit flush; a
-- relay in PUBLISHER_MODE = "poll" does not listen and needs none.
--
-- Unset, '', on, true or 1 notifies; off, false or 0 does not (case and surrounding blanks do
-- not matter). Any other value raises SQLSTATE 22023 (invalid_parameter_value) naming the
-- setting: the inserting statement fails and writes nothing, so a typo cannot quietly change
-- what happens. The channel is that of 003_outbox_notify_channel.sql. Placeholders as in
-- 001_outbox.sql.
CREATE OR REPLACE FUNCTION {{outbox_prefix}}"{{outbox_name}}_notify"() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
DECLARE
    channel text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    setting text := current_setting('svccomm.outbox_notify', true);
BEGIN
    CASE lower(btrim(coalesce(setting, '')))
    WHEN 'off', 'false', '0' THEN
        RETURN NULL;
    WHEN '', 'on', 'true', '1' THEN
        NULL;
    ELSE
        RAISE EXCEPTION 'svccomm.outbox_notify: must be on or off (or true/false, 1/0), got %',
            quote_literal(setting) USING ERRCODE = '22023';
    END CASE;
    IF octet_length(channel) > 63 THEN
        channel := 'svccomm_' || md5(channel);
    END IF;
    PERFORM pg_notify(channel, '');
    RETURN NULL;
END
$fn$;
