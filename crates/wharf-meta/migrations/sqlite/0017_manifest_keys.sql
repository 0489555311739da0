-- The data keys a manifest's content and annotations are sealed under (none while stored in
-- the clear). Deleting the manifest, by a client, a collection or with its repository or
-- registry, deletes them too: nothing else used them, and what a backup still holds of the
-- manifest then opens with nothing wharf keeps.
ALTER TABLE manifests ADD COLUMN content_key TEXT;
ALTER TABLE manifests ADD COLUMN annotations_key TEXT;
-- Manifests sealed before: the key id is in the content's header (magic, then 16 bytes). The
-- annotations' is inside base64, which SQLite cannot read: those keys are not deleted with
-- their manifests (a key each; the sealed annotations go).
UPDATE manifests SET content_key = lower(hex(substr(content, 9, 16)))
WHERE substr(content, 1, 6) = CAST('WHARFS' AS BLOB) AND length(content) >= 24;
CREATE TRIGGER manifests_retire_keys AFTER DELETE ON manifests
BEGIN
    DELETE FROM data_keys WHERE id IN (OLD.content_key, OLD.annotations_key);
END;
