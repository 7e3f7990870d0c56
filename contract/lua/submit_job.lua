-- Store a submitted job in one step: its record, digests and chunk payloads, its place among the
-- running jobs and, where the broker is this Redis, its chunks' queue entries (kombu's, built by
-- producer.queue_entries), so no chunk is queued without its job nor a job stored without them.
-- A small job stored whole also looks up its texts first, as touch_vectors.lua does (each hit's
-- TTL renewed), and which of them were cut.
-- KEYS[1] job record hash   KEYS[2] job digests   KEYS[3] payloads hash   KEYS[4] running jobs
-- KEYS[5] the lane's queue list              KEYS[6] truncated-digest set of the build
-- KEYS[7..] vector keys to look up (none where the producer read the cache before)
-- ARGV[1] job TTL (s)   ARGV[2] vector TTL (s)   ARGV[3] job id   ARGV[4] created (its score)
-- ARGV[5] packed digests
-- ARGV[6] F, then F field/value pairs of the record
-- then P, then P payloads (chunk numbers 0..P-1); then M, then M queue entries
-- then one digest per vector key, for the truncated set
-- Returns {flags, cut}: flags has one character per vector key ('1' exists, '0' missing), cut one
-- integer per key (1: its text was cut); both empty where no vector keys were given.
local at = 6
local function take(count)
  local items = {}
  for i = 1, count do
    items[i] = ARGV[at + i]
  end
  at = at + count + 1
  return items
end

local flags, cut = {}, {}
local looked = #KEYS - 6
for i = 1, looked do
  flags[i] = redis.call('EXPIRE', KEYS[6 + i], ARGV[2]) == 1 and '1' or '0'
end

local record = take(2 * tonumber(ARGV[at]))
local payloads = take(tonumber(ARGV[at]))
local entries = take(tonumber(ARGV[at]))
at = at - 1
if looked > 0 then
  cut = redis.call('SMISMEMBER', KEYS[6], unpack(take(looked)))
end

redis.call('HSET', KEYS[1], unpack(record))
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[5], 'EX', ARGV[1])
if #payloads > 0 then
  local fields = {}
  for i, payload in ipairs(payloads) do
    fields[2 * i - 1] = i - 1
    fields[2 * i] = payload
  end
  redis.call('HSET', KEYS[3], unpack(fields))
  redis.call('EXPIRE', KEYS[3], ARGV[1])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
end
for _, entry in ipairs(entries) do
  redis.call('LPUSH', KEYS[5], entry)
end
return {table.concat(flags), cut}
