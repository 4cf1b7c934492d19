-- The database behind archive.dump (pg_archive's tests): `pg_dump -Fc -Z0 archive | cat`,
-- PostgreSQL 15.18, written into a pipe as backhaul's backups are; archive_file.dump is
-- `pg_dump -Fc -Z0 -f archive_file.dump archive`, written to a file as the old script did
-- (pg_dump then goes back and records every data block's offset in the TOC); archive_gz.dump
-- is `pg_dump -Fc -Z6 archive | cat`, its data blocks compressed by pg_dump.
create role archive_reader nologin;
create table accounts (id int primary key, name text);
insert into accounts select g, 'name ' || g from generate_series(1, 300) g;
create table moves (account int references accounts(id), amount numeric);
insert into moves select g % 300 + 1, g from generate_series(1, 500) g;
create index moves_account on moves(account);
comment on table accounts is 'who';
grant select on accounts to archive_reader;
create sequence ticket; select setval('ticket', 42);
create materialized view totals as select account, sum(amount) from moves group by account;
select lo_from_bytea(7001, 'large object bytes');
