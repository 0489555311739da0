-- The data keys a manifest's content and annotations are sealed under (none while stored in
-- the clear). Deleting the manifest, by a client, a collection or with its repository or
-- registry, deletes them too: nothing else used them, and what a backup still holds of the
-- manifest then opens with nothing wharf keeps.
ALTER TABLE manifests ADD COLUMN content_key TEXT, ADD COLUMN annotations_key TEXT;
-- Manifests sealed before: the key id is in the header (magic, then 16 bytes) of the content,
-- and of the annotations' sealed bytes (after `sealed:`, base64).
UPDATE manifests SET content_key = encode(substring(content FROM 9 FOR 16), 'hex')
WHERE substring(content FROM 1 FOR 6) = 'WHARFS'::bytea AND length(content) >= 24;
UPDATE manifests
SET annotations_key = encode(substring(decode(substring(annotations FROM 8 FOR 32), 'base64') FROM 9 FOR 16), 'hex')
WHERE annotations LIKE 'sealed:%' AND length(annotations) >= 39;
CREATE FUNCTION manifests_retire_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM data_keys WHERE id IN (OLD.content_key, OLD.annotations_key);
    RETURN OLD;
END
$$;
CREATE TRIGGER manifests_retire_keys AFTER DELETE ON manifests
FOR EACH ROW EXECUTE FUNCTION manifests_retire_keys();
