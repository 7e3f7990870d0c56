-- End an unfinished job at once: cancelled by its caller, or stalled with no live worker for its build.
-- Queued chunks of an ended job are skipped when a worker claims them.
-- KEYS[1] job record hash   KEYS[2] running jobs sorted set   KEYS[3] payloads hash
-- KEYS[4] leases hash       KEYS[5] orphans hash         KEYS[6] jobs ended by state (hash)
-- ARGV[1] final state ("failed" | "cancelled")   ARGV[2] error text   ARGV[3] progress channel
-- ARGV[4] job id            ARGV[5] only if no progress since this server time ("" = always)
-- Announces the ended record (cjson of HGETALL) on the progress channel and on the record's
-- `notify` channel, if it names one.
-- Returns 1 when ended, 0 when it had already ended (or progressed since ARGV[5]), -1 when gone.
local job = redis.call('HMGET', KEYS[1], 'state', 'updated', 'notify')
if not job[1] then
  redis.call('ZREM', KEYS[2], ARGV[4])
  return -1
end
if job[1] ~= 'queued' then
  return 0
end
if ARGV[5] ~= '' and tonumber(job[2]) > tonumber(ARGV[5]) then
  return 0
end
local now = redis.call('TIME')
local stamp = now[1] .. '.' .. string.format('%06d', tonumber(now[2]))
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'error', ARGV[2], 'finished', stamp)
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('HINCRBY', KEYS[6], ARGV[1], 1)
local announcement = cjson.encode(redis.call('HGETALL', KEYS[1]))
if job[3] and job[3] ~= '' then
  redis.call('PUBLISH', job[3], announcement)
end
redis.call('PUBLISH', ARGV[3], announcement)
return 1
