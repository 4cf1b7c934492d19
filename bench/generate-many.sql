-- Sample data for bench/run.sh's many-tables case: 200 tables t001..t200 sharing :n rows
-- between them in mixed sizes (10 big ones of 40 shares, 30 medium of 4, 160 small of 1/4:
-- 560 shares), each with a primary key and one secondary index, with the same kind of rows as
-- generate.sql's `events` so the dump compresses alike.
\set ON_ERROR_STOP on
-- psql does not expand :n inside the dollar-quoted block; a setting carries it in.
select set_config('bench.n', :'n', false) \gset
do $$
declare
  total bigint := current_setting('bench.n')::bigint;
  w numeric;
  rows bigint;
  t text;
begin
  for i in 1..200 loop
    t := format('t%s', lpad(i::text, 3, '0'));
    w := case when i % 20 = 0 then 40 when i % 5 = 0 then 4 else 0.25 end;
    rows := greatest(1, round(total * w / 560));
    execute format('drop table if exists %I', t);
    execute format($f$
      create table %I as
      select
        g::bigint                                                   as id,
        (random() * 1000000)::bigint                                as account_id,
        timestamptz '2023-01-01 00:00:00+00' + g * interval '2 seconds'
          + random() * interval '15 minutes'                        as created_at,
        round((random() * random() * 2000)::numeric, 2)             as amount,
        (array['pending','paid','shipped','delivered','refunded','cancelled'])[1 + floor(random() * 6)::int] as status,
        md5(random()::text)                                         as token,
        jsonb_build_object('ip', '10.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int,
                           'items', floor(random() * 12)::int,
                           'session', substr(md5(random()::text), 1, 16)) as payload,
        case when random() < 0.4 then 'customer note #' || floor(random() * 500)::int end as note
      from generate_series(1, %s) as g$f$, t, rows);
    execute format('alter table %I add primary key (id)', t);
    execute format('create index %I on %I (account_id, created_at)', t || '_account_created', t);
  end loop;
end $$;
