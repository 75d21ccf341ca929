-- How often each product was viewed. Written in batches by the write-back buffer of the
-- catalog, never per request: a view is acknowledged from memory and flushed within the
-- configured delay.
ALTER TABLE products ADD COLUMN view_count INTEGER NOT NULL DEFAULT 0 CHECK (view_count >= 0);
