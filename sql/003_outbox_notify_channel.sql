-- The wake-up channel names the table with its schema ("public.svccomm_outbox"), so that
-- outbox tables of the same name in two schemas do not wake each other's relay (001 used the
-- bare table name). A name longer than PostgreSQL's 63-byte channel limit becomes
-- 'svccomm_' || md5(schema.table). The relay computes the same name and, for databases not
-- migrated yet, also listens on the bare table name.
CREATE OR REPLACE FUNCTION {{outbox_prefix}}"{{outbox_name}}_notify"() RETURNS trigger
    LANGUAGE plpgsql AS $fn$
DECLARE
    channel text := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME;
BEGIN
    IF octet_length(channel) > 63 THEN
        channel := 'svccomm_' || md5(channel);
    END IF;
    PERFORM pg_notify(channel, '');
    RETURN NULL;
END
$fn$;
