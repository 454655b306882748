-- The outbox is no longer announced with NOTIFY from inside the writing transaction.
--
-- A transaction that has called NOTIFY takes PostgreSQL's database-wide notification lock
-- when it commits and holds it through its WAL flush, so every create (and every batch of
-- cancels) committed one after another instead of sharing flushes (group commit). On the
-- benchmark machine: single-row INSERT transactions ran at ~10,000/s, the same with a
-- NOTIFY at ~1,800/s. Each instance now wakes its own relay in-process after it commits
-- outbox rows; rows another instance committed are still found by every relay's poll.
drop trigger outbox_notify on outbox;
drop function outbox_notify();
