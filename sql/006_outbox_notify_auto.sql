-- The insert trigger sends its NOTIFY only while a relay sleeps: by default (the setting
-- svccomm.outbox_notify unset, '' or auto) a writer notifies only when it cannot take the
-- table's wake lock in shared mode, which means a relay holds it (or waits for it) in
-- exclusive mode. A relay takes that lock before it sleeps and gives it back when writers
-- wake it (src/relay/claim.c); while it is awake and claiming, the writers' commits carry no
-- notification and so no longer serialize on PostgreSQL's notification lock (see
-- 005_outbox_notify_setting.sql). The shared lock is the transaction's: a relay cannot take
-- the wake lock while a writer that skipped its NOTIFY has not finished, so the relay claims
-- again once it has the lock, and every row committed before then is seen by that claim.
--
-- on, true or 1 always notify (relays older than this migration rely on it: set it until
-- they are upgraded); off, false or 0 never do; anything else raises SQLSTATE 22023 naming the
-- setting. The lock is the two-key advisory lock (1937138551, hashtext(channel)) of the
-- database: 1937138551 is 0x73766377, "svcw"; channel is that of
-- 003_outbox_notify_channel.sql, which the relay hashes the same way. Placeholders as in
-- 001_outbox.sql.
CREATE OR REPLACE FUNCTION {{outbox_prefix}}"{{outbox_name}}_notify"() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
DECLARE
    channel text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
    setting text := current_setting('svccomm.outbox_notify', true);
    auto boolean;
BEGIN
    CASE lower(btrim(coalesce(setting, '')))
    WHEN 'off', 'false', '0' THEN
        RETURN NULL;
    WHEN '', 'auto' THEN
        auto := true;
    WHEN 'on', 'true', '1' THEN
        auto := false;
    ELSE
        RAISE EXCEPTION 'svccomm.outbox_notify: must be auto, on or off (or true/false, 1/0), got %',
            quote_literal(setting) USING ERRCODE = '22023';
    END CASE;
    IF octet_length(channel) > 63 THEN
        channel := 'svccomm_' || md5(channel);
    END IF;
    IF auto AND pg_try_advisory_xact_lock_shared(1937138551, hashtext(channel)) THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify(channel, '');
    RETURN NULL;
END
$fn$;
