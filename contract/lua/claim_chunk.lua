-- Take a chunk before running it: say whether it should run at all, and lease it to this worker.
-- KEYS[1] job record hash   KEYS[2] counted chunks set   KEYS[3] payloads hash
-- KEYS[4] leases hash       KEYS[5] attempts hash
-- ARGV[1] chunk number      ARGV[2] worker node name     ARGV[3] lease length (seconds)
-- A text index left in `running:<chunk>` means the process died while embedding that text alone
-- (an isolated retry, see worker.chunk_runner): it joins the chunk's poison list `poison:<chunk>`.
-- Returns {status, payload, failures so far, last error, job total, job fingerprint, poison list},
-- the poison list as comma-separated text indices; status one of
--   "gone"     no job record (expired, lost with a Redis restart, or never fully submitted)
--   "finished" the job already ended (done, failed or cancelled)
--   "counted"  this chunk was already counted (a duplicate delivery)
--   "lost"     the chunk's payload is gone, so it cannot run
--   "run"      the lease is taken: run it
local job = redis.call('HMGET', KEYS[1], 'state', 'total', 'fingerprint')
if not job[1] then
  return {'gone', '', 0, '', 0, '', ''}
end
if job[1] ~= 'queued' then
  return {'finished', '', 0, '', job[2], job[3], ''}
end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then
  return {'counted', '', 0, '', job[2], job[3], ''}
end
local failures = tonumber(redis.call('HGET', KEYS[5], 'failures:' .. ARGV[1]) or '0')
local poison = redis.call('HGET', KEYS[5], 'poison:' .. ARGV[1]) or ''
local died_on = redis.call('HGET', KEYS[5], 'running:' .. ARGV[1])
if died_on then
  if poison ~= '' then
    poison = poison .. ','
  end
  poison = poison .. died_on
  redis.call('HSET', KEYS[5], 'poison:' .. ARGV[1], poison)
  redis.call('HDEL', KEYS[5], 'running:' .. ARGV[1])
end
local last = redis.call('HGET', KEYS[5], 'error:' .. ARGV[1]) or ''
local payload = redis.call('HGET', KEYS[3], ARGV[1])
if not payload then
  return {'lost', '', failures, last, job[2], job[3], poison}
end
local now = redis.call('TIME')
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2] .. ' ' .. (tonumber(now[1]) + tonumber(ARGV[3])))
local ttl = redis.call('TTL', KEYS[1])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[4], ttl)
end
return {'run', payload, failures, last, job[2], job[3], poison}
