-- Sample data for bench/run.sh: one wide "events" table of :n rows with a realistic mix
-- (ids, timestamps, money, low-cardinality text, random hex, jsonb, partly random bytea) so that
-- zstd's ratio on the dump is in the usual 2-4x range rather than the 100x of synthetic filler.
\set ON_ERROR_STOP on
drop table if exists events;
create table events as
select
  g::bigint                                                        as id,
  (random() * 1000000)::bigint                                     as account_id,
  timestamptz '2023-01-01 00:00:00+00' + g * interval '2 seconds'
    + random() * interval '15 minutes'                             as created_at,
  round((random() * random() * 2000)::numeric, 2)                  as amount,
  (array['pending','paid','shipped','delivered','refunded','cancelled'])[1 + floor(random() * 6)::int] as status,
  (array['SG','MY','ID','TH','VN','PH','AU','JP','US','GB'])[1 + floor(random() * 10)::int]          as country,
  (array['page_view','click','add_to_cart','checkout','login','logout','search','purchase'])[1 + floor(random() * 8)::int] as event_type,
  md5(random()::text)                                              as token,
  jsonb_build_object(
    'ua', (array['Mozilla/5.0 (Windows NT 10.0; Win64; x64)', 'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4)',
                 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)', 'okhttp/4.12.0'])[1 + floor(random() * 4)::int],
    'ip', '10.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int || '.' || floor(random() * 256)::int,
    'items', floor(random() * 12)::int,
    'session', substr(md5(random()::text), 1, 16),
    'campaign', case when random() < 0.3 then 'spring_sale_' || floor(random() * 20)::int end,
    'flags', jsonb_build_array(random() < 0.5, random() < 0.1)
  )                                                                as payload,
  -- 16 random bytes, then an 8-byte big-endian id, then 24 bytes of a fixed header-like pattern
  decode(md5(random()::text) || lpad(to_hex(g), 16, '0') || '0102030405060708deadbeef00000000cafebabe00000001', 'hex') as blob,
  case when random() < 0.4 then 'customer note #' || floor(random() * 500)::int || ': please deliver after 6pm' end as note
from generate_series(1, :n) as g;
alter table events add primary key (id);
create index events_account_created on events (account_id, created_at);
