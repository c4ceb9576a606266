-- Room on each page for a row's next version. Most updates of the projector change no indexed
-- column (a kernel's last_stat from kernel_stat_sync, half of a stream; a session's event-id
-- record): with free space on the row's page PostgreSQL writes them as heap-only tuples, without
-- a new entry in every index. On full pages (the default fillfactor of 100) one kernel update in
-- a hundred was heap-only. Applies to pages written from now on.
ALTER TABLE kernels SET (fillfactor = 80);
ALTER TABLE sessions SET (fillfactor = 90);
ALTER TABLE session_seen SET (fillfactor = 70);
