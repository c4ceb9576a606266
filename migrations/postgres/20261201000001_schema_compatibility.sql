-- Which sessionview binaries may use this database (docs/operations.md, "Upgrades and
-- compatibility"). Migrations are additive (new tables, new nullable or defaulted columns, new
-- indexes), so a binary keeps working against a schema a newer one migrated and ignores the
-- migrations it does not know, as long as `level` is at most the level it supports
-- (sessionview_store::SCHEMA_COMPATIBILITY); above it, the binary refuses to start and names
-- `written_by`, the version to run instead.
--
-- A migration that older binaries cannot work with raises the level in the same file
-- (`UPDATE schema_compatibility SET level = 2;`) and the constant in the same release.
-- `written_by` is the version of the sessionview that last applied migrations: `migrate` sets it
-- (and the level to at least its own) right after applying any, so the value below is replaced at
-- once.
CREATE TABLE schema_compatibility (
    level      integer NOT NULL,
    written_by text    NOT NULL
);
INSERT INTO schema_compatibility (level, written_by) VALUES (1, '0.1.0');
