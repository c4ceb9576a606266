-- Room on each page for a row's next version. Many updates of the projector change no indexed
-- column (a kernel's last_stat from kernel_stat_sync, half of a stream): with free space on the
-- row's page PostgreSQL writes them as heap-only tuples, without a new entry in every index. On
-- full pages (the default fillfactor of 100) one kernel update in a hundred was heap-only.
-- (session_seen keeps full pages: its records grow with each update, and its one index is
-- cheap; free space there would cost a third more bytes per event.) Applies to pages written
-- from now on.
ALTER TABLE kernels SET (fillfactor = 80);
ALTER TABLE sessions SET (fillfactor = 90);
